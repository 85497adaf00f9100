"""一步蒸馏训练的时间花在哪里：把 kd_step 的一步拆成几部分分别计时，再用 torch.profiler 列出最耗时的 kernel。

每部分给两个数：墙钟（CUDA event，含 CPU 发射 kernel 的时间）和 GPU 上 kernel 实际运行的时间之和。
前者明显大于后者，说明这部分卡在 CPU（Python 和 kernel 发射开销）而不是 GPU 上。

    python bench/profile_step.py [--batch 8] [--seq 512] [--compile-modes 1 0] [--top 25]
"""
import argparse, time
import torch
import torch.nn.functional as F
from distill_edu.config import ModelConfig, TrainingConfig
from distill_edu.model import StudentModel
from distill_edu.losses import distillation_loss
from distill_edu.chunked import chunked_distillation_loss
from distill_edu.teacher import teacher_hidden_and_head
from distill_edu.trainer import build_optimizer
from kd_step import teacher_model
from common import cuda_ms


def kernel_ms(fn, reps=3):
    "fn 一次调用里 GPU kernel 运行时间之和（毫秒，reps 次的平均；不含 kernel 之间 GPU 空闲的时间）"
    from torch.profiler import profile, ProfilerActivity
    fn(); torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps): fn()
        torch.cuda.synchronize()
    return sum(e.self_device_time_total for e in prof.key_averages()
               if e.device_type == torch.autograd.DeviceType.CUDA) / reps / 1000


def timed(name, fn, reps=10):
    return (name, cuda_ms(fn, reps), kernel_ms(fn))


def main(args):
    dev = torch.device("cuda")
    torch.manual_seed(0)
    B, T, V = args.batch, args.seq, 151665
    ids = torch.randint(0, V, (B, T), device=dev)
    labels = torch.randint(0, V, (B, T), device=dev)
    teacher = teacher_model(dev)
    student = StudentModel(ModelConfig()).to(dev)
    ac = lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    rows = []

    for compiled in (False, True):
        wrap = torch.compile if compiled else (lambda fn: fn)
        teacher_fn, student_fn = wrap(lambda x: teacher_hidden_and_head(teacher, x)), wrap(student.hidden_states)
        def teacher_fwd():
            with torch.inference_mode(), ac(): return teacher_fn(ids)
        rows.append(timed(f"teacher forward, compiled={compiled}", teacher_fwd))
        def student_fb():
            with ac(): h = student_fn(ids)
            h.float().square().mean().backward()
        rows.append(timed(f"student hidden fwd+bwd, compiled={compiled}", student_fb))
    # CUDA graph 把整段 kernel 录下来一次发射，省掉逐个 kernel 的 CPU 开销
    student_graph = torch.compile(student.hidden_states, mode="reduce-overhead")
    def student_fb_graph():
        torch.compiler.cudagraph_mark_step_begin()
        with ac(): h = student_graph(ids)
        h.float().square().mean().backward()
        student.zero_grad(set_to_none=True)
    rows.append(timed("student hidden fwd+bwd, compiled, CUDA graphs", student_fb_graph))
    student.zero_grad(set_to_none=True)

    with torch.inference_mode(), ac(): th, tw = teacher_hidden_and_head(teacher, ids)
    th, tw = th.clone(), tw.clone()
    with ac(): h0 = student.hidden_states(ids).detach()
    for compiled in (False, True):
        for chunk in (256, 512, 1024):
            def chunked():
                h = h0.clone().requires_grad_()
                with ac():
                    loss, _ = chunked_distillation_loss(h, student.lm_head.weight, labels, th, tw, chunk_size=chunk,
                                                        compiled=compiled)
                loss.backward()
            rows.append(timed(f"chunked loss fwd+bwd (chunk {chunk}, compiled={compiled})", chunked))

    def naive():
        h = h0.clone().requires_grad_()
        with ac():
            s_logits = student.lm_head(h)
            with torch.no_grad(): t_logits = th @ tw.T
            loss, _ = distillation_loss(s_logits, t_logits, labels)
        loss.backward()
    rows.append(timed("naive loss fwd+bwd (bf16 logits, fp32 loss)", naive, reps=5))

    opt = build_optimizer(student, TrainingConfig())
    for p in student.parameters(): p.grad = torch.randn_like(p) * 1e-3
    def optim():
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0); opt.step()
    rows.append(timed("clip_grad_norm + AdamW step", optim))

    # 只看几个张量运算的带宽：一次 (N, V) float32 读写要多久
    x = torch.randn(B * T, V, device=dev)
    rows.append(timed(f"one fp32 elementwise pass over ({B * T}, {V})", lambda: x.mul_(1.0)))
    rows.append(timed("fp32 log_softmax over the same", lambda: torch.log_softmax(x, -1)))
    hb, wb = h0.reshape(-1, h0.size(-1)).to(torch.bfloat16), student.lm_head.weight.to(torch.bfloat16)
    rows.append(timed(f"student lm_head matmul bf16 (N,d)x(d,{V})", lambda: hb @ wb.T))
    wp = F.pad(wb, (0, 0, 0, -V % 128))
    rows.append(timed(f"same, rows padded to {wp.size(0)}", lambda: hb @ wp.T))
    hf, wf = hb.float(), wb.float()
    rows.append(timed("same, fp32 (no tf32)", lambda: hf @ wf.T))
    del x

    print(f"\n{torch.cuda.get_device_name(dev)}, batch {B} x {T}, torch {torch.__version__}")
    print(f"{'':<55} {'wall':>8} {'kernels':>8}")
    for name, wall, gpu in rows: print(f"{name:<55} {wall:8.2f} {gpu:8.2f} ms")

    # 整个训练器的一步：profiler 的 kernel 排行
    from torch.utils.data import DataLoader
    from kd_step import RandomTokens
    from distill_edu.trainer import DistillationTrainer
    loader = DataLoader(RandomTokens(B * 40, T, V), batch_size=B, drop_last=True)
    for compile_ in args.compile_modes:
        cfg = TrainingConfig(batch_size=B, seq_len=T, warmup_steps=0, max_steps=30, log_interval=10**6, eval_interval=10**6,
                             save_interval=10**6, precision="bf16", checkpoint_dir="/tmp/prof_ckpt", compile=compile_)
        tr = DistillationTrainer(StudentModel(ModelConfig()), teacher, loader, None, cfg, dev, progress=False)
        for _ in range(5): tr._train_step()
        torch.cuda.synchronize(); t = time.perf_counter()
        for _ in range(10): tr._train_step()
        cpu = (time.perf_counter() - t) / 10 * 1000                     # 训练器一步不等 GPU：这是 CPU 发射 10 步的时间
        torch.cuda.synchronize(); wall = (time.perf_counter() - t) / 10 * 1000
        print(f"\n训练器一步：CPU 发射 {cpu:.1f} ms/step，墙钟 {wall:.1f} ms/step")
        from torch.profiler import profile, ProfilerActivity
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(3): tr._train_step()
            torch.cuda.synchronize()
        ev = prof.key_averages()
        kernels = [e for e in ev if e.device_type == torch.autograd.DeviceType.CUDA]   # 只数 kernel，不数调用它们的 aten 算子
        gpu = sum(e.self_device_time_total for e in kernels) / 3 / 1000
        print(f"\n== trainer step (compile={compile_}): wall {wall:.1f} ms/step, GPU kernels {gpu:.1f} ms/step ==")
        print(ev.table(sort_by="self_cuda_time_total", row_limit=args.top, max_name_column_width=70))
        del tr


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--compile-modes", nargs="*", type=lambda s: s == "1", default=[True], help="1 = compile=True，0 = False")
    main(ap.parse_args())
