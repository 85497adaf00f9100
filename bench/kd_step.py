"""一步蒸馏训练的速度与显存：123M 学生 + Qwen2.5-0.5B 结构的教师，batch 8 × 512，GPU 上 bf16。

同一次运行里比较“朴素参考”（完整词表 logits 的 fp32 损失、不编译）与项目默认设置（TrainingConfig() 的默认值：
分块损失 + GPU 上 torch.compile），以及默认设置的几个变体（不编译、换块大小）。
MFU = 每 token FLOPs × tokens/s ÷ 本卡实测的 bf16 矩阵乘峰值（`distill_edu.teacher.measured_matmul_peak`，训练日志用同一个分母）。

    python bench/kd_step.py --out bench/results/kd_step.json [--steps 20] [--batch 8] [--seq 512]
"""
import argparse, gc, time
import torch
from torch.utils.data import DataLoader, TensorDataset
from distill_edu.config import ModelConfig, TrainingConfig
from distill_edu.model import StudentModel
from distill_edu.teacher import flops_per_token
from distill_edu.trainer import DistillationTrainer
from common import device_name, measured_matmul_peak, write_json, print_table

QWEN25_05B = ModelConfig(hidden_size=896, num_layers=24, num_heads=14, num_kv_heads=2, intermediate_size=4864,
                         vocab_size=151936, max_seq_len=32768)


class RandomTokens(torch.utils.data.Dataset):
    "随机 token 的 {input_ids, labels}：只用于计时"
    def __init__(self, n, seq, vocab): self.ids = torch.randint(0, vocab, (n, seq + 1))
    def __len__(self): return len(self.ids)
    def __getitem__(self, i): return {"input_ids": self.ids[i, :-1], "labels": self.ids[i, 1:]}


def teacher_model(device):
    from transformers import Qwen2ForCausalLM
    torch.manual_seed(1)
    return Qwen2ForCausalLM(QWEN25_05B.to_hf_config()).to(device, torch.bfloat16).eval().requires_grad_(False)


def param_diff_across_ranks(model) -> float:
    "多卡训练后各 rank 的参数应完全相同：返回所有 rank 与 rank 0 的最大绝对差（应为 0）"
    import torch.distributed as dist
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    ref = flat.clone(); dist.broadcast(ref, src=0)
    diff = (flat - ref).abs().max(); dist.all_reduce(diff, op=dist.ReduceOp.MAX)
    return diff.item()


def run_variant(name, teacher, args, device, **overrides):
    torch.manual_seed(0)
    student = StudentModel(ModelConfig()).to(device)
    data = RandomTokens(args.batch * (args.steps + args.warmup + 2), args.seq, 151665)
    loader = DataLoader(data, batch_size=args.batch, shuffle=False, drop_last=True)
    cfg = TrainingConfig(batch_size=args.batch, seq_len=args.seq, warmup_steps=0, max_steps=args.steps + args.warmup,
                         log_interval=10**6, eval_interval=10**6, save_interval=10**6, precision="bf16",
                         checkpoint_dir="/tmp/kd_step_ckpt", **overrides)
    trainer = DistillationTrainer(student, teacher, loader, None, cfg, device, progress=False)
    trainer.train(num_steps=args.warmup)                                  # 预热（含 torch.compile 的编译）
    torch.cuda.synchronize(device); torch.cuda.reset_peak_memory_stats(device)
    trainer.train(num_steps=args.steps)
    # 训练器在每次 train() 结束时写检查点；吞吐量取训练器自己的计时（不含存盘），即这 args.steps 步的全局 tokens/s
    tok_s = trainer.history["tokens_per_sec"][-1]
    seconds = args.steps * args.batch * args.seq * trainer.world / tok_s
    fpt = flops_per_token(student, teacher, args.seq)
    row = {"variant": name, "tokens_per_sec": round(tok_s), "step_ms": round(1000 * seconds / args.steps, 1),
           "mfu": round(fpt * tok_s / (args.peak * trainer.world), 4), "peak_mem_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2),
           "final_loss": round(trainer.history["train_loss"][-1], 4) if trainer.history["train_loss"] else None}
    if trainer.world > 1: row["param_diff_across_ranks"] = param_diff_across_ranks(student)
    del trainer, student; gc.collect(); torch.cuda.empty_cache()
    return row


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results/kd_step.json")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--variants", nargs="*", default=["naive", "default", "eager"],
                    help="naive | default | eager（默认设置但不编译）| default@N（N = loss_chunk_size）")
    args = ap.parse_args()
    device = torch.device("cuda")
    args.peak = measured_matmul_peak(device)
    teacher = teacher_model(device)
    settings = {"naive": dict(loss_chunk_size=0, compile=False), "default": dict(), "eager": dict(compile=False)}
    settings.update({v: dict(loss_chunk_size=int(v.split("@")[1])) for v in args.variants if v.startswith("default@")})
    rows = [run_variant(v, teacher, args, device, **settings[v]) for v in args.variants]
    base = rows[0]["tokens_per_sec"]
    for r in rows: r["speedup"] = round(r["tokens_per_sec"] / base, 2)
    print(f"\n{device_name(device)}，实测 bf16 峰值 {args.peak / 1e12:.0f} TFLOP/s，batch {args.batch} × {args.seq}")
    print_table(rows, ["variant", "tokens_per_sec", "step_ms", "mfu", "peak_mem_gib", "speedup", "final_loss"])
    write_json(args.out, {"benchmark": "kd_step", "device": device_name(device), "torch": torch.__version__,
                          "measured_bf16_peak_tflops": round(args.peak / 1e12, 1), "batch": args.batch, "seq": args.seq,
                          "defaults": {k: getattr(TrainingConfig(), k) for k in ("loss_chunk_size", "compile")},
                          "steps": args.steps, "rows": rows,
                          "command": f"python bench/kd_step.py --steps {args.steps} --batch {args.batch} --seq {args.seq} "
                                     f"--variants {' '.join(args.variants)}"})
