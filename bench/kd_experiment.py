"""知识蒸馏 vs 纯交叉熵基线：在 GPU 上复现原始需求里“蒸馏后验证困惑度优于基线”的说法。

没有 Hub 时，教师在现场造：一个 Qwen2.5-0.5B 结构的模型先在同一语料上做纯 CE 预训练，用 `to_hf_qwen2` +
`save_pretrained` 存盘，再通过 `load_teacher_model(目录)` 读回来——与读取 Hub 上的 Qwen2.5-0.5B 是同一条代码路径。
随后用相同的种子、数据顺序、学习率计划和 token 数训练三个 123M 学生：前向 KL 蒸馏、纯 CE 基线、反向 KL 蒸馏。

各阶段都可续跑（产物留在 --runs 目录里，已完成的阶段自动跳过），每个阶段的墙钟时间都控制在 10 分钟以内：

    python bench/kd_experiment.py teacher  --corpus .devdata/zh_modern.jsonl.xz --tokenizer .devdata/tokenizer
    python bench/kd_experiment.py students --corpus ... --tokenizer ... --out bench/results
"""
import argparse, gc, json, math, os, time
from pathlib import Path
import torch
from distill_edu.config import ModelConfig, TrainingConfig
from distill_edu.model import StudentModel, to_hf_qwen2
from distill_edu.data import load_tokenizer, create_dataloaders
from distill_edu.chunked import chunked_distillation_loss
from distill_edu.trainer import DistillationTrainer, load_teacher_model, teacher_hidden_and_head
from common import device_name, write_json, print_table

TEACHER_CFG = ModelConfig(hidden_size=896, num_layers=24, num_heads=14, num_kv_heads=2, intermediate_size=4864,
                          vocab_size=151936, max_seq_len=32768)            # Qwen2.5-0.5B 的结构
TINY_TEACHER = ModelConfig(hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=256,
                           vocab_size=151936)                               # --tiny：在 CPU 上检查脚本本身
TINY_STUDENT = ModelConfig(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128)
ARMS = {"kd_forward_kl": dict(alpha=0.5, temperature=2.0, loss_kind="forward_kl"),
        "ce_baseline": dict(alpha=0.0),
        "kd_reverse_kl": dict(alpha=0.5, temperature=2.0, loss_kind="reverse_kl"),
        "kd_forward_kl_T1": dict(alpha=0.5, temperature=1.0, loss_kind="forward_kl")}


def loaders(args, tokenizer, batch_size):
    return create_dataloaders(tokenizer, batch_size=batch_size, seq_len=args.seq, source=args.corpus, max_bytes=None,
                              cache_dir=os.path.join(args.runs, "cache"), seed=args.seed, num_workers=2)


@torch.no_grad()
def heldout(model, val_loader, device, max_batches, teacher=None, vocab=151665):
    "固定的验证 batch 上的硬标签 CE（逐 token 平均）；给了 teacher 时同时统计 top-1 一致率"
    model.eval()
    ce_sum = n_tok = agree = 0.0
    for i, batch in enumerate(val_loader):
        if i >= max_batches: break
        ids, labels = batch["input_ids"].to(device), batch["labels"].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            h, w = teacher_hidden_and_head(model, ids)
            _, m = chunked_distillation_loss(h, w[:vocab], labels, alpha=0.0)
            if teacher is not None:
                th, tw = teacher_hidden_and_head(teacher, ids)
                agree += ((h @ w[:vocab].T).argmax(-1) == (th @ tw[:vocab].T).argmax(-1)).sum().item()
        ce_sum += m["ce_loss"].item() * labels.numel(); n_tok += labels.numel()
    return {"val_loss": ce_sum / n_tok, "val_ppl": math.exp(ce_sum / n_tok),
            **({"top1_agreement": agree / n_tok} if teacher is not None else {})}


def suffix(args) -> str:
    "种子 0 的结果文件没有后缀（kd_experiment.json），其他种子加 _seedN"
    return f"_seed{args.seed}" if args.seed else ""


def sync(device):
    if device.type == "cuda": torch.cuda.synchronize(device)


def train_segments(trainer, val_loader, device, args, teacher=None):
    "分段训练；每段之后在验证集上评估。记录 (步数, token 数, 不含评估的墙钟秒数, 验证指标)"
    curve, train_seconds = [], 0.0
    seg = max(1, trainer.total_steps // args.evals)
    while trainer.step < trainer.total_steps:
        sync(device); t = time.perf_counter()
        trainer.train(num_steps=seg)
        sync(device); train_seconds += time.perf_counter() - t
        res = heldout(trainer.student, val_loader, device, args.eval_batches, teacher)
        trainer.student.train()
        curve.append({"step": trainer.step, "tokens": trainer.step * trainer.config.batch_size * args.seq,
                      "seconds": round(train_seconds, 1), **res})
        print(f"  step {trainer.step}: val_ppl {res['val_ppl']:.2f}, {train_seconds:.0f}s", flush=True)
    return curve


def stage_teacher(args, device):
    out = Path(args.runs) / "teacher"
    if (out / "config.json").is_file(): print(f"教师已存在：{out}"); return
    tokenizer = load_tokenizer(args.tokenizer)
    train_loader, val_loader = loaders(args, tokenizer, args.teacher_batch)
    torch.manual_seed(args.seed)
    model = StudentModel(TINY_TEACHER if args.tiny else TEACHER_CFG).to(device)
    cfg = TrainingConfig(batch_size=args.teacher_batch, seq_len=args.seq, alpha=0.0, learning_rate=args.teacher_lr,
                         warmup_steps=args.teacher_steps // 20, max_steps=args.teacher_steps, precision=args.precision,
                         log_interval=50, eval_interval=10**9, save_interval=200, compile=args.compile,
                         checkpoint_dir=str(Path(args.runs) / "teacher_ckpt"), seed=args.seed)
    trainer = DistillationTrainer(model, None, train_loader, None, cfg, device, progress=False)
    if os.path.isfile(trainer.checkpoint_path): trainer.load_checkpoint(); print(f"从第 {trainer.step} 步续训教师")
    curve = train_segments(trainer, val_loader, device, args)
    hf = to_hf_qwen2(model.to(torch.bfloat16))
    hf.save_pretrained(out); tokenizer.save_pretrained(out)
    (Path(args.runs) / "teacher_curve.json").write_text(json.dumps(curve))
    print(f"教师已保存：{out}，验证困惑度 {curve[-1]['val_ppl']:.2f}")


def stage_students(args, device):
    runs = Path(args.runs)
    tokenizer = load_tokenizer(args.tokenizer)
    teacher = load_teacher_model(str(runs / "teacher"), device=device, student_vocab=len(tokenizer))
    train_loader, val_loader = loaders(args, tokenizer, args.batch)
    results = {"teacher": heldout(teacher, val_loader, device, args.eval_batches)}
    print(f"教师：val_ppl {results['teacher']['val_ppl']:.2f}")
    for arm in args.arms:
        path = runs / f"{arm}{suffix(args)}.json"
        if path.is_file(): results[arm] = json.loads(path.read_text()); continue
        print(f"== {arm} ==", flush=True)
        torch.manual_seed(args.seed)
        student = StudentModel(TINY_STUDENT if args.tiny else ModelConfig(max_seq_len=args.seq)).to(device)
        cfg = TrainingConfig(batch_size=args.batch, seq_len=args.seq, max_steps=args.student_steps, precision=args.precision,
                             warmup_steps=args.student_steps // 20, log_interval=100, eval_interval=10**9,
                             save_interval=10**9, compile=args.compile, seed=args.seed,
                             checkpoint_dir=str(runs / f"{arm}_ckpt"), **ARMS[arm])
        trainer = DistillationTrainer(student, teacher if cfg.alpha > 0 else None, train_loader, None, cfg, device,
                                      progress=False)
        curve = train_segments(trainer, val_loader, device, args, teacher)
        results[arm] = {"settings": ARMS[arm], "curve": curve, "final": curve[-1]}
        path.write_text(json.dumps(results[arm]))
        del trainer, student; gc.collect()
        if device.type == "cuda": torch.cuda.empty_cache()
    report(args, results, device)


def report(args, results, device):
    arms = [a for a in args.arms if a in results]
    rows = [{"model": "teacher (0.5B, CE)", "val_ppl": round(results["teacher"]["val_ppl"], 2)}]
    for a in arms:
        f = results[a]["final"]
        rows.append({"model": a, "val_ppl": round(f["val_ppl"], 2), "tokens": f["tokens"], "train_seconds": f["seconds"],
                     "top1_agreement": round(f["top1_agreement"], 4)})
    # 同墙钟：取所有学生中最短的训练时间，比较每个学生在该时间点之前最后一次评估的困惑度
    t_min = min(results[a]["final"]["seconds"] for a in arms)
    for r, a in zip(rows[1:], arms):
        before = [p for p in results[a]["curve"] if p["seconds"] <= t_min + 1e-6]
        r["ppl_at_equal_wallclock"] = round(before[-1]["val_ppl"], 2) if before else None   # 该时间点前还没评估过
    print(f"\n{device_name(device)}；同墙钟时间点 = {t_min:.0f}s")
    print_table(rows, ["model", "val_ppl", "ppl_at_equal_wallclock", "top1_agreement", "tokens", "train_seconds"])
    os.makedirs(args.out, exist_ok=True)
    write_json(os.path.join(args.out, f"kd_experiment{suffix(args)}.json"),
               {"benchmark": "kd_experiment", "device": device_name(device), "corpus": args.corpus, "seq": args.seq,
                "student_batch": args.batch, "student_steps": args.student_steps,
                "teacher_steps": json.loads((Path(args.runs) / "teacher_curve.json").read_text())[-1]["step"],
                "command": f"python bench/kd_experiment.py students --student-steps {args.student_steps} --batch {args.batch} "
                           f"--seed {args.seed} --arms {' '.join(arms)}",
                "seed": args.seed, "rows": rows, "equal_wallclock_seconds": t_min,
                "curves": {a: results[a]["curve"] for a in arms}, "teacher": results["teacher"]})
    plot(results, arms, os.path.join(args.out, f"kd_curves{suffix(args)}.png"))


def plot(results, arms, path):
    import matplotlib; matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), dpi=90)
    for a in arms:
        c = results[a]["curve"]
        axes[0].plot([p["tokens"] / 1e6 for p in c], [p["val_ppl"] for p in c], marker="o", ms=3, label=a)
        axes[1].plot([p["seconds"] for p in c], [p["val_ppl"] for p in c], marker="o", ms=3, label=a)
    for ax, xl in zip(axes, ["training tokens (M)", "training wall-clock (s)"]):
        ax.axhline(results["teacher"]["val_ppl"], color="k", ls="--", lw=1, label="teacher")
        ax.set_xlabel(xl); ax.set_ylabel("held-out perplexity"); ax.set_yscale("log"); ax.grid(alpha=.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout(); fig.savefig(path); print(f"曲线：{path}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("stage", choices=["teacher", "students"])
    ap.add_argument("--corpus", default=".devdata/zh_modern.jsonl.xz")
    ap.add_argument("--tokenizer", default=".devdata/tokenizer")
    ap.add_argument("--runs", default="runs/kd")
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--teacher-batch", type=int, default=32)
    ap.add_argument("--teacher-steps", type=int, default=1000)
    ap.add_argument("--teacher-lr", type=float, default=6e-4)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--student-steps", type=int, default=1000)
    ap.add_argument("--arms", nargs="*", default=list(ARMS))
    ap.add_argument("--evals", type=int, default=8)
    ap.add_argument("--eval-batches", type=int, default=40)
    ap.add_argument("--no-compile", dest="compile", action="store_false", help="不用 torch.compile（默认在 GPU 上编译）")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--tiny", action="store_true", help="极小的教师和学生，只用于在 CPU 上检查脚本")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    device = torch.device(args.device)
    {"teacher": stage_teacher, "students": stage_students}[args.stage](args, device)
