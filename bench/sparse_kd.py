"""稀疏蒸馏（离线教师缓存）的一步训练 vs 纯 CE 的一步 vs 在线蒸馏的一步：同一次运行、同一份真实数据、batch 8 × 512。

教师是真实的 Qwen2.5 检查点，缓存由 `kd_experiment.py prepare` 在《人民日报》训练集上建好（top-64，τ=1）；
这里只计时：每个变体预热 5 步（含编译），再计 50 步的 tokens/s、峰值显存，以及每步主机线程花在取 batch、
检查、发起拷贝上的时间（host_batch_ms：这一步的 GPU 活儿不够多时，主机时间直接加在步时上）。三个变体用同样的 DataLoader
（默认在主进程里读，与 `make_dataloaders`、命令行的默认 num_workers=0 相同）。建缓存的吞吐量取自 prepare 的记录；
它的天花板（同样批大小下只做教师前向与 LM head）在这里单独量。

    python bench/sparse_kd.py --runs /tmp/kd --out bench/results/sparse_kd.json
"""
import argparse, gc, json, time
from pathlib import Path
import torch
from torch.utils.data import DataLoader
from distill_edu.config import ModelConfig, TrainingConfig
from distill_edu.model import StudentModel
from distill_edu.tokenizer import load_tokenizer
from distill_edu.teacher import load_teacher_model
from distill_edu.trainer import DistillationTrainer
from distill_edu.sparse import SparseTargetDataset
from distill_edu.teacher import teacher_hidden_and_head
from common import cuda_ms, device_name, write_json, print_table
from kd_experiment import CACHE, CACHE_BATCH, K, datasets

VARIANTS = {"ce": dict(alpha=0.0), "sparse_kd": dict(alpha=0.5, temperature=1.0),
            "online_kd": dict(alpha=0.5, temperature=1.0, loss_kind="forward_kl")}


def time_host_batches(trainer) -> list:
    "之后每步主机线程取 batch（DataLoader）、检查并发起拷贝所花的秒数累加进返回的 [秒]：一步受主机限制时它直接加在步时上"
    spent, fetch, to_device = [0.0], trainer.data.next, trainer._to_device
    def timed(fn):
        def run(*a):
            t = time.perf_counter(); out = fn(*a); spent[0] += time.perf_counter() - t
            return out
        return run
    trainer.data.next, trainer._to_device = timed(fetch), timed(to_device)
    return spent


def teacher_forward_tokens_per_sec(teacher, train, device, batch=CACHE_BATCH, chunk=4096) -> float:
    """建缓存的天花板：只做教师前向（编译过，与建缓存相同）和 LM head 的矩阵乘，不做 topk 与 log Σ。
    batch 与建缓存相同；计时用 common.cuda_ms（先预热、含编译，再取中位数）"""
    ids = torch.stack([train[i]["input_ids"] for i in range(batch)]).to(device)
    hidden = torch.compile(teacher_hidden_and_head)
    def forward():
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
            h, w = hidden(teacher, ids)
            h = h.reshape(-1, h.size(-1))
            for i in range(0, h.size(0), chunk): h[i:i + chunk] @ w.T
    return ids.numel() / (cuda_ms(forward) / 1000)


def run_variant(name, args, device, train, teacher):
    ds = SparseTargetDataset(train, Path(args.runs) / CACHE, mode="topk_rest") if name == "sparse_kd" else train
    loader = DataLoader(ds, batch_size=args.batch, shuffle=True, drop_last=True, num_workers=args.workers, pin_memory=True,
                        persistent_workers=args.workers > 0, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    student = StudentModel(ModelConfig(max_seq_len=args.seq)).to(device)
    cfg = TrainingConfig(batch_size=args.batch, seq_len=args.seq, warmup_steps=0, max_steps=args.steps + args.warmup,
                         log_interval=10**6, eval_interval=10**6, save_interval=10**6, precision="bf16",
                         checkpoint_dir=f"/tmp/sparse_kd_ckpt_{name}", **VARIANTS[name])
    trainer = DistillationTrainer(student, teacher if name == "online_kd" else None, loader, None, cfg, device, progress=False)
    trainer.train(num_steps=args.warmup)
    torch.cuda.synchronize(device); torch.cuda.reset_peak_memory_stats(device)
    host = time_host_batches(trainer)
    trainer.train(num_steps=args.steps)
    tok_s, host_ms = trainer.history["tokens_per_sec"][-1], 1000 * host[0] / args.steps
    row = {"variant": name, "tokens_per_sec": round(tok_s), "step_ms": round(1000 * args.batch * args.seq / tok_s, 1),
           "peak_mem_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2), "host_batch_ms": round(host_ms, 2)}
    del trainer, student; gc.collect(); torch.cuda.empty_cache()
    return row


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", default="/tmp/kd")
    ap.add_argument("--teacher", default="/tmp/q/teacher")
    ap.add_argument("--tokenizer", default=".devdata/tokenizer")
    ap.add_argument("--out", default="bench/results/sparse_kd.json")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--workers", type=int, default=0, help="DataLoader 的 num_workers（三个变体相同）")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=512)
    args = ap.parse_args()
    device = torch.device("cuda")
    tokenizer = load_tokenizer(args.tokenizer)
    train = datasets(args, tokenizer)[0]
    teacher = load_teacher_model(args.teacher, device=device, dtype="bf16", student_vocab=len(tokenizer))
    rows = [run_variant(v, args, device, train, teacher) for v in VARIANTS]
    ce = rows[0]
    for r in rows: r["time_vs_ce"] = round(r["step_ms"] / ce["step_ms"], 3)
    cache = json.loads((Path(args.runs) / "prepare.json").read_text())["cache"]
    ceiling = teacher_forward_tokens_per_sec(teacher, train, device)
    build = {"tokens_per_sec": round(cache["tokens_per_second"]), "k": K, "rows": cache["rows"],
             "mib": round(cache["rows"] * K * 6 / 2**20), "vs_online_kd_step": round(cache["tokens_per_second"] / rows[2]["tokens_per_sec"], 2),
             "teacher_forward_tokens_per_sec": round(ceiling), "ceiling_vs_online_kd_step": round(ceiling / rows[2]["tokens_per_sec"], 2)}
    print(f"\n{device_name(device)}，batch {args.batch} × {args.seq}")
    print_table(rows, ["variant", "tokens_per_sec", "step_ms", "time_vs_ce", "peak_mem_gib", "host_batch_ms"])
    print(f"建缓存：{build}")
    write_json(args.out, {"benchmark": "sparse_kd", "device": device_name(device), "torch": torch.__version__,
                          "batch": args.batch, "seq": args.seq, "steps": args.steps, "workers": args.workers, "rows": rows, "cache_build": build,
                          "command": f"python bench/kd_experiment.py prepare && python bench/sparse_kd.py --steps {args.steps} "
                                     f"--batch {args.batch} --seq {args.seq} --workers {args.workers}"})
