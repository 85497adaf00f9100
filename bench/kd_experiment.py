"""知识蒸馏 vs 纯交叉熵：真实的 Qwen2.5 教师、真实的中文语料、同 token 数与同 GPU 时间两种比较。

语料：zh_modern 里的《人民日报》1998 年 1 月（约 120 万 token）。学生只在它的训练部分上训练（多个 epoch），
在两处评估：同一来源的固定验证集，以及从不训练的另一个领域——Debian 中文文档（同一个语料文件里的另一半）。
教师：Qwen2.5-Coder-0.5B-Instruct（GGUF 转成的 bf16 Hugging Face 目录，见 tools/stage_teacher.py）。

各组（同一种子、同样的数据顺序和学习率计划；学生是默认的 123M 配置）：
  ce           纯 CE，N 步                         kd_t1 / kd_t2   在线前向 KL（α=0.5，τ=1 / τ=2），N 步
  ce_time      纯 CE，与 kd_t1 同样的 GPU 时间      sparse          教师缓存（top-64 + 尾部桶，τ=1），N 步
  sparse_time  教师缓存，与 kd_t1 同样的 GPU 时间
GPU 时间 = 步数 × 稳态每步时间（第一段含编译，不计入每步时间）。每组结果存成 JSON，阶段可续跑：

    python bench/kd_experiment.py prepare --teacher /tmp/q/teacher --runs /tmp/kd       # 分语料、分词、建教师缓存
    python bench/kd_experiment.py arms --seed 0 --runs /tmp/kd --out $OUT               # 一个种子的全部组
    python bench/kd_experiment.py report --runs bench/results/kd_arms --out bench/results
"""
import argparse, gc, json, lzma, math, time
from pathlib import Path
import torch
from distill_edu.config import ModelConfig, TrainingConfig
from distill_edu.model import StudentModel, from_hf_qwen2
from distill_edu.data import WikiDataset
from distill_edu.tokenizer import load_tokenizer
from distill_edu.chunked import chunked_distillation_loss
from distill_edu.teacher import load_teacher_model, teacher_hidden_and_head
from distill_edu.trainer import DistillationTrainer
from distill_edu.sparse import build_sparse_cache, SparseTargetDataset
from distill_edu.generate import TextGenerator
from torch.utils.data import DataLoader
from common import device_name, write_json

TRAIN_SOURCE, HELDOUT_SOURCE = "peoples_daily_1998_01", "debian_zh_cn_docs"
K, CACHE, CACHE_BATCH = 64, "sparse_k64", 16          # 建缓存：top-64，每批 16 个样本
ONLINE = dict(alpha=0.5, loss_kind="forward_kl")
ARMS = {"ce": dict(alpha=0.0), "kd_t1": dict(ONLINE, temperature=1.0), "kd_t2": dict(ONLINE, temperature=2.0),
        "sparse": dict(alpha=0.5, temperature=1.0), "ce_time": dict(alpha=0.0), "sparse_time": dict(alpha=0.5, temperature=1.0),
        "kd_t1_a09": dict(ONLINE, alpha=0.9, temperature=1.0)}
EQUAL_TIME = {"ce_time": "ce", "sparse_time": "sparse"}       # 这些组的步数 = N × t(kd_t1) / t(对应的同 token 组)
PROMPTS = ["中国的首都是", "新华社北京１月１日电", "今天，我们在这里隆重集会，", "经济发展的关键在于"]
TINY_STUDENT = ModelConfig(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128)


def split_corpus(corpus: str, runs: Path):
    "把语料按来源分成两个 jsonl：训练来源与留出领域"
    files = {s: open(runs / f"{s}.jsonl", "w", encoding="utf-8") for s in (TRAIN_SOURCE, HELDOUT_SOURCE)}
    with lzma.open(corpus, "rt", encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)
            if doc["source"] in files: files[doc["source"]].write(json.dumps({"text": doc["text"]}, ensure_ascii=False) + "\n")
    for f in files.values(): f.close()


def datasets(args, tokenizer):
    "训练集与验证集：《人民日报》（每 10 篇一篇进验证集）；留出领域：Debian 文档的前 4 MB"
    runs, kw = Path(args.runs), dict(seq_len=args.seq, cache_dir=Path(args.runs) / "cache", verbose=False)
    train = WikiDataset(tokenizer, "train", source=str(runs / f"{TRAIN_SOURCE}.jsonl"), max_bytes=None, **kw)
    val = WikiDataset(tokenizer, "validation", source=str(runs / f"{TRAIN_SOURCE}.jsonl"), max_bytes=None, **kw)
    heldout = WikiDataset(tokenizer, "train", source=str(runs / f"{HELDOUT_SOURCE}.jsonl"), max_bytes=4_000_000, **kw)
    return train, val, heldout


def eval_batches(ds, batch, n):
    loader = DataLoader(ds, batch_size=batch, shuffle=False)
    return [b for _, b in zip(range(n), loader)]


@torch.no_grad()
def evaluate(model, batches, device, vocab, teacher_top1=None):
    "硬标签 CE（逐 token 平均）→ 困惑度；给了教师在这些 batch 上的 top-1 时，统计学生与教师 top-1 一致的比例"
    model.eval()
    ce_sum = n_tok = agree = 0.0
    for i, b in enumerate(batches):
        ids, labels = b["input_ids"].to(device), b["labels"].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            h, w = teacher_hidden_and_head(model, ids)
            _, m = chunked_distillation_loss(h, w[:vocab], labels, alpha=0.0)
            if teacher_top1 is not None: agree += (top1(h, w, vocab) == teacher_top1[i].to(device)).sum().item()
        ce_sum += m["ce_loss"].item() * labels.numel(); n_tok += labels.numel()
    out = {"loss": ce_sum / n_tok, "ppl": math.exp(ce_sum / n_tok)}
    if teacher_top1 is not None: out["top1_agreement"] = agree / n_tok
    return out


def top1(h, w, vocab, chunk=2048):
    "每个位置概率最大的 token（分块算 logits，省显存）"
    h = h.reshape(-1, h.size(-1))
    return torch.cat([(h[i:i + chunk] @ w[:vocab].T).argmax(-1) for i in range(0, h.size(0), chunk)])


def stage_prepare(args, device):
    "分语料、分词；教师在两份评估数据上的困惑度与 top-1；在训练集上建稀疏教师缓存"
    runs = Path(args.runs); runs.mkdir(parents=True, exist_ok=True)
    if not (runs / f"{HELDOUT_SOURCE}.jsonl").is_file(): split_corpus(args.corpus, runs)
    tokenizer = load_tokenizer(args.tokenizer)
    train, val, heldout = datasets(args, tokenizer)
    teacher = load_teacher_model(args.teacher, device=device, dtype="bf16", student_vocab=len(tokenizer))
    info = {"train_tokens": train.num_tokens, "val_tokens": val.num_tokens, "heldout_tokens": heldout.num_tokens,
            "train_samples": len(train), "seq": args.seq}
    for name, ds, n in (("val", val, args.val_batches), ("heldout", heldout, args.heldout_batches)):
        batches = eval_batches(ds, args.batch, n)
        tops = []
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            for b in batches: tops.append(top1(*teacher_hidden_and_head(teacher, b["input_ids"].to(device)), len(tokenizer)).cpu())
        torch.save(tops, runs / f"teacher_top1_{name}.pt")
        info[f"teacher_{name}"] = evaluate(teacher, batches, device, len(tokenizer))
        print(f"教师 {name}: ppl {info[f'teacher_{name}']['ppl']:.2f}", flush=True)
    t = time.perf_counter()
    build_sparse_cache(teacher, train, runs / CACHE, k=K, temperature=1.0, batch_size=CACHE_BATCH, vocab=len(tokenizer),
                       progress=False, compile=True)
    info["cache"] = {**json.loads((runs / CACHE / "meta.json").read_text()), "wall_seconds": time.perf_counter() - t}
    info["cache"].pop("sha256", None)
    info["teacher_generations"] = generations(from_hf_qwen2(teacher).to(device), tokenizer, device)
    (runs / "prepare.json").write_text(json.dumps(info, ensure_ascii=False, indent=1))
    print(json.dumps({k: v for k, v in info.items() if k != "teacher_generations"}, ensure_ascii=False), flush=True)


def generations(model, tokenizer, device):
    "几个提示上的续写：贪心、top-k、top-p（固定种子）"
    gen = TextGenerator(model, tokenizer, device)
    out = {}
    for strategy, kw in (("greedy", {}), ("top_k", dict(top_k=50, temperature=0.8)), ("top_p", dict(top_p=0.9, temperature=0.8))):
        out[strategy] = gen.generate(PROMPTS, max_new_tokens=48, strategy=strategy, seed=0, **kw)
    return out


def train_arm(args, device, arm, steps, tokenizer, teacher, data, evals):
    "训练一组，分 args.evals 段，每段后在验证集与留出领域上评估；记录每段的步数、GPU 秒数与指标"
    train, val_b, held_b, tops = data
    settings = ARMS[arm]
    train_ds = SparseTargetDataset(train, Path(args.runs) / CACHE, mode="topk_rest") if arm.startswith("sparse") else train
    loader = DataLoader(train_ds, batch_size=args.batch, shuffle=True, drop_last=True, num_workers=2,
                        generator=torch.Generator().manual_seed(args.seed), pin_memory=device.type == "cuda")
    torch.manual_seed(args.seed)
    student = StudentModel(TINY_STUDENT if args.tiny else ModelConfig(max_seq_len=args.seq)).to(device)
    cfg = TrainingConfig(batch_size=args.batch, seq_len=args.seq, max_steps=steps, precision=args.precision,
                         warmup_steps=max(1, steps // 20), log_interval=10**9, eval_interval=10**9, save_interval=10**9,
                         compile=args.compile, seed=args.seed, checkpoint_dir=str(Path(args.runs) / f"ckpt_{arm}"),
                         **settings)
    online = teacher if cfg.alpha > 0 and not arm.startswith("sparse") else None
    trainer = DistillationTrainer(student, online, loader, None, cfg, device, progress=False)
    trainer.save_checkpoint = lambda *a, **k: None     # 每组都从头训练、结果存 JSON：不需要每段结束时写 1.5 GB 的检查点
    curve, seg = [], max(1, steps // evals)
    while trainer.step < steps:
        sync(device); t = time.perf_counter()
        trainer.train(num_steps=seg)
        sync(device)
        point = {"step": trainer.step, "tokens": trainer.step * args.batch * args.seq, "seconds": time.perf_counter() - t,
                 "step_ms": 1000 * args.batch * args.seq / trainer.history["tokens_per_sec"][-1],   # 训练器自己的计时
                 "val": evaluate(student, val_b, device, len(tokenizer), tops["val"]),
                 "heldout": evaluate(student, held_b, device, len(tokenizer), tops["heldout"])}
        curve.append(point); student.train()
        print(f"  {arm} step {trainer.step}: val ppl {point['val']['ppl']:.2f}, heldout ppl {point['heldout']['ppl']:.2f}, "
              f"{point['seconds']:.1f}s", flush=True)
    later = [p["step_ms"] for p in curve[1:]] or [curve[0]["step_ms"]]
    step_ms = sorted(later)[len(later) // 2]                  # 稳态每步时间：除第一段（含编译）外各段的中位数
    result = {"arm": arm, "settings": settings, "steps": steps, "seed": args.seed, "step_ms": step_ms,
              "gpu_seconds": steps * step_ms / 1000, "curve": curve, "final": curve[-1],
              "generations": generations(student, tokenizer, device)}
    del trainer, student; gc.collect()
    if device.type == "cuda": torch.cuda.empty_cache()
    return result


def sync(device):
    if device.type == "cuda": torch.cuda.synchronize(device)


def stage_arms(args, device):
    runs, out = Path(args.runs), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(args.tokenizer)
    train, val, heldout = datasets(args, tokenizer)
    data = (train, eval_batches(val, args.batch, args.val_batches), eval_batches(heldout, args.batch, args.heldout_batches),
            {n: torch.load(runs / f"teacher_top1_{n}.pt") for n in ("val", "heldout")})
    teacher = load_teacher_model(args.teacher, device=device, dtype="bf16", student_vocab=len(tokenizer))
    steps = args.steps or args.epochs * len(train) // args.batch
    done = {}
    for arm in args.arms:
        path = runs / f"arm_{arm}_seed{args.seed}.json"
        if path.is_file(): done[arm] = json.loads(path.read_text()); continue
        n = steps
        if arm in EQUAL_TIME: n = round(steps * done["kd_t1"]["step_ms"] / done[EQUAL_TIME[arm]]["step_ms"])
        print(f"== {arm}: {n} 步 ==", flush=True)
        done[arm] = train_arm(args, device, arm, n, tokenizer, teacher, data, args.evals)
        path.write_text(json.dumps(done[arm], ensure_ascii=False))
        (out / path.name).write_text(path.read_text())
    if (runs / "prepare.json").is_file(): (out / "prepare.json").write_text((runs / "prepare.json").read_text())


def summarize(arms: dict, prepare: dict) -> dict:
    "各组在各种子上的终点与曲线上的最好点；比值都是对同种子的 ce（同 token 数）或 ce_time（同 GPU 时间）"
    seeds = sorted({d["seed"] for d in arms.values()})
    rows = []
    for arm in ARMS:
        runs = [arms[(arm, s)] for s in seeds if (arm, s) in arms]
        if not runs: continue
        mean = lambda f: sum(f(d) for d in runs) / len(runs)
        rows.append({"arm": arm, "seeds": len(runs), "steps": round(mean(lambda d: d["steps"])),
                     "step_ms": round(mean(lambda d: d["step_ms"]), 1), "gpu_seconds": round(mean(lambda d: d["gpu_seconds"]), 1),
                     **{f"{where}_ppl": round(mean(lambda d: d["final"][where]["ppl"]), 1) for where in ("val", "heldout")},
                     "best_val_ppl": round(mean(lambda d: min(p["val"]["ppl"] for p in d["curve"])), 1),
                     "top1_val": round(mean(lambda d: d["final"]["val"]["top1_agreement"]), 3),
                     "per_seed_val_ppl": [round(d["final"]["val"]["ppl"], 1) for d in runs],
                     "per_seed_best_val_ppl": [round(min(p["val"]["ppl"] for p in d["curve"]), 1) for d in runs],
                     "per_seed_heldout_ppl": [round(d["final"]["heldout"]["ppl"]) for d in runs]})
    return {"rows": rows, "seeds": seeds, "teacher": {w: round(prepare[f"teacher_{w}"]["ppl"], 2) for w in ("val", "heldout")},
            "data": {k: prepare[k] for k in ("train_tokens", "val_tokens", "heldout_tokens", "seq")},
            "cache": {k: prepare["cache"][k] for k in ("rows", "k", "tokens_per_second")},
            "generations": {"teacher": prepare["teacher_generations"],
                            **{a: arms[(a, seeds[0])]["generations"] for a in ("ce", "kd_t1", "sparse_time") if (a, seeds[0]) in arms}}}


def plot(arms: dict, path: str, seed: int = 0):
    "种子 0 的曲线：验证集与留出领域的困惑度，横轴分别是训练 token 数与 GPU 秒数"
    import matplotlib; matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.4), dpi=80)
    for (arm, s), d in sorted(arms.items()):
        if s != seed: continue
        for row, where in enumerate(("val", "heldout")):
            c = d["curve"]
            axes[row, 0].plot([p["tokens"] / 1e6 for p in c], [p[where]["ppl"] for p in c], marker="o", ms=3, label=arm)
            axes[row, 1].plot([p["step"] * d["step_ms"] / 1000 for p in c], [p[where]["ppl"] for p in c], marker="o", ms=3, label=arm)
    for row, where in enumerate(("validation (People's Daily)", "held-out domain (Debian docs)")):
        for col, xl in enumerate(("training tokens (M)", "GPU seconds (steady-state step time x steps)")):
            ax = axes[row, col]
            ax.set_xlabel(xl); ax.set_ylabel(f"{where} ppl"); ax.set_yscale("log"); ax.grid(alpha=.3)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout(); fig.savefig(path); print(f"曲线：{path}")


def stage_report(args, device):
    "读 --runs 目录里的 arm_*.json 与 prepare.json，写出汇总 JSON 与曲线图（在任何机器上都能跑）"
    runs = Path(args.runs)
    arms = {}
    for f in sorted(runs.glob("arm_*_seed*.json")):
        d = json.loads(f.read_text()); arms[(d["arm"], d["seed"])] = d
    prepare = json.loads((runs / "prepare.json").read_text())
    summary = summarize(arms, prepare)
    write_json(Path(args.out) / "kd_experiment.json", {
        "benchmark": "kd_experiment", "device": args.device_name, "batch": 16, "seq": prepare["seq"],
        "command": "python bench/kd_experiment.py prepare && python bench/kd_experiment.py arms --seed 0 && "
                   "python bench/kd_experiment.py arms --seed 1 && python bench/kd_experiment.py report", **summary})
    plot(arms, str(Path(args.out) / "kd_curves.png"))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("stage", choices=["prepare", "arms", "report"])
    ap.add_argument("--corpus", default=".devdata/zh_modern.jsonl.xz")
    ap.add_argument("--tokenizer", default=".devdata/tokenizer")
    ap.add_argument("--teacher", default="/tmp/q/teacher")
    ap.add_argument("--runs", default="runs/kd")
    ap.add_argument("--out", default="bench/results/kd_arms")
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--steps", type=int, default=0, help="每组的步数（0 = epochs 个 epoch）")
    ap.add_argument("--arms", nargs="*", default=list(ARMS))
    ap.add_argument("--evals", type=int, default=6)
    ap.add_argument("--val-batches", type=int, default=16)
    ap.add_argument("--heldout-batches", type=int, default=24)
    ap.add_argument("--no-compile", dest="compile", action="store_false")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--device-name", default="NVIDIA H200", help="report：各组是在哪张卡上跑的（写进汇总）")
    ap.add_argument("--tiny", action="store_true", help="极小的学生，只用于在 CPU 上检查脚本")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    {"prepare": stage_prepare, "arms": stage_arms, "report": stage_report}[args.stage](args, torch.device(args.device))
