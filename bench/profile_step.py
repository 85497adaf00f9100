"""一步蒸馏训练的时间花在哪里：把 kd_step 的一步拆成几部分分别计时（CUDA event），再用 torch.profiler 列出最耗时的 kernel。

    python bench/profile_step.py [--batch 8] [--seq 512] [--compile-modes 1 0] [--top 25]
"""
import argparse, time
import torch
import torch.nn.functional as F
from distill_edu.config import ModelConfig, TrainingConfig
from distill_edu.model import StudentModel
from distill_edu.distill import chunked_distillation_loss, distillation_loss, teacher_hidden_and_head, build_optimizer
from kd_step import teacher_model


def cuda_ms(fn, reps=10, warmup=3):
    "fn 的 GPU 时间（毫秒，reps 次的中位数）"
    for _ in range(warmup): fn()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record(); torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return sorted(times)[len(times) // 2]


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
        rows.append((f"teacher forward, compiled={compiled}", cuda_ms(teacher_fwd)))
        def student_fb():
            with ac(): h = student_fn(ids)
            h.float().square().mean().backward()
        rows.append((f"student hidden fwd+bwd, compiled={compiled}", cuda_ms(student_fb)))
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
            rows.append((f"chunked loss fwd+bwd (chunk {chunk}, compiled={compiled})", cuda_ms(chunked)))

    def naive():
        h = h0.clone().requires_grad_()
        with ac():
            s_logits = student.lm_head(h)
            with torch.no_grad(): t_logits = th @ tw.T
            loss, _ = distillation_loss(s_logits, t_logits, labels)
        loss.backward()
    rows.append(("naive loss fwd+bwd (bf16 logits, fp32 loss)", cuda_ms(naive, reps=5)))

    opt = build_optimizer(student, TrainingConfig())
    for p in student.parameters(): p.grad = torch.randn_like(p) * 1e-3
    def optim():
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0); opt.step()
    rows.append(("clip_grad_norm + AdamW step", cuda_ms(optim)))

    # 只看几个张量运算的带宽：一次 (N, V) float32 读写要多久
    x = torch.randn(B * T, V, device=dev)
    rows.append((f"one fp32 elementwise pass over ({B * T}, {V})", cuda_ms(lambda: x.mul_(1.0))))
    rows.append(("fp32 log_softmax over the same", cuda_ms(lambda: torch.log_softmax(x, -1))))
    hb, wb = h0.reshape(-1, h0.size(-1)).to(torch.bfloat16), student.lm_head.weight.to(torch.bfloat16)
    rows.append((f"student lm_head matmul bf16 (N,d)x(d,{V})", cuda_ms(lambda: hb @ wb.T)))
    wp = F.pad(wb, (0, 0, 0, -V % 128))
    rows.append((f"same, rows padded to {wp.size(0)}", cuda_ms(lambda: hb @ wp.T)))
    hf, wf = hb.float(), wb.float()
    rows.append(("same, fp32 (no tf32)", cuda_ms(lambda: hf @ wf.T)))
    del x

    print(f"\n{torch.cuda.get_device_name(dev)}, batch {B} x {T}, torch {torch.__version__}")
    for name, ms in rows: print(f"{name:<55} {ms:8.2f} ms")

    # 整个训练器的一步：profiler 的 kernel 排行
    from torch.utils.data import DataLoader
    from kd_step import RandomTokens
    from distill_edu.distill import DistillationTrainer
    loader = DataLoader(RandomTokens(B * 40, T, V), batch_size=B, drop_last=True)
    for compile_ in args.compile_modes:
        cfg = TrainingConfig(batch_size=B, seq_len=T, warmup_steps=0, max_steps=30, log_interval=10**6, eval_interval=10**6,
                             save_interval=10**6, precision="bf16", checkpoint_dir="/tmp/prof_ckpt", compile=compile_)
        tr = DistillationTrainer(StudentModel(ModelConfig()), teacher, loader, None, cfg, dev, progress=False)
        for _ in range(5): tr._train_step()
        torch.cuda.synchronize(); t = time.perf_counter()
        for _ in range(10): tr._train_step()
        torch.cuda.synchronize(); wall = (time.perf_counter() - t) / 10 * 1000
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
