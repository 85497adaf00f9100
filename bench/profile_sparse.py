"""离线教师缓存的时间花在哪里：建缓存的一批、稀疏蒸馏的一步，逐部分计时（与 profile_step.py 同样的做法）。

速度与权重无关，所以教师是随机初始化的 0.5B 结构（与真实的 Qwen2.5-0.5B 同形状），数据是随机 token，
缓存是随机的 (id, log p)：不需要真实检查点，几分钟跑完。每部分给墙钟（CUDA event）与 GPU kernel 时间之和。

    python bench/profile_sparse.py [--batch 8] [--seq 512] [--k 64] [--top 20]
"""
import argparse, hashlib, json, tempfile, time
from pathlib import Path
import numpy as np
import torch
from torch.utils.data import DataLoader
from distill_edu.config import ModelConfig, TrainingConfig
from distill_edu.model import StudentModel
from distill_edu.chunked import chunked_distillation_loss
from distill_edu.sparse import (SparseTargetDataset, _cache_key, _chunk_targets, _sha256_file, _teacher_rows,
                                build_sparse_cache, sparse_distillation_loss, topk_by_blocks)
from distill_edu.teacher import teacher_hidden_and_head
from distill_edu.tokenizer import QWEN_TOKENIZER_SIZE as V
from distill_edu.trainer import DistillationTrainer
from kd_step import RandomTokens, teacher_model
from profile_step import timed
from common import print_top_ops


class RandomTokenStream(RandomTokens):
    "kd_step 的随机 token，再加上 SparseTargetDataset 要核对的 WikiDataset 接口（seq_len、split、meta['sha256']、cache_path）"
    def __init__(self, n, seq):
        super().__init__(n, seq, V)
        self.seq_len, self.split, self.cache_path = seq, "train", Path("random")
        self.meta = {"sha256": {"train": hashlib.sha256(self.ids.numpy().tobytes()).hexdigest()}}


def bf16_autocast(): return torch.autocast("cuda", dtype=torch.bfloat16)


def random_cache(ds, k, out: Path) -> SparseTargetDataset:
    "随机的 (id, log p) 缓存，文件格式与 build_sparse_cache 的输出相同"
    out.mkdir(parents=True, exist_ok=True)
    rows = len(ds) * ds.seq_len
    np.random.randint(0, V, (rows, k)).astype(np.int32).tofile(out / "ids.bin")
    (np.log(np.random.dirichlet(np.ones(k) * 0.1, rows) * 0.9 + 1e-9)).astype(np.float16).tofile(out / "logp.bin")
    meta = {"key": _cache_key("random", ds, k, 1.0, "topk", 0), "rows": rows, "k": k,
            "sha256": {f: _sha256_file(out / f) for f in ("ids.bin", "logp.bin")}}
    (out / "meta.json").write_text(json.dumps(meta))
    return SparseTargetDataset(ds, out, verify=False)


def cache_build_parts(args, dev, teacher, rows):
    B, T, k = args.batch, args.seq, args.k
    ids = torch.randint(0, V, (B, T), device=dev)
    ac = bf16_autocast
    compiled_hidden = torch.compile(teacher_hidden_and_head)
    for name, fn in (("eager", teacher_hidden_and_head), ("compiled", compiled_hidden)):
        def fwd(fn=fn):
            with torch.inference_mode(), ac(): return fn(teacher, ids)
        rows.append(timed(f"[cache] teacher hidden forward ({name})", fwd))
    with torch.inference_mode(), ac(): h, w = teacher_hidden_and_head(teacher, ids)
    h = h.reshape(-1, h.size(-1)).to(w.dtype)
    w_sliced, w_full = w[:V], w
    with torch.inference_mode():
        rows.append(timed(f"[cache] head matmul, weight sliced to {V} rows", lambda: h @ w_sliced.T))
        rows.append(timed(f"[cache] head matmul, full {w_full.size(0)} rows", lambda: h @ w_full.T))
        z = h @ w_sliced.T
        zp = h @ w_full.T
        rows.append(timed(f"[cache] topk({k}) bf16 ({z.size(0)}, {V})", lambda: z.topk(k, dim=-1)))
        rows.append(timed(f"[cache] topk({k}) fp32", lambda: z.float().topk(k, dim=-1)))
        rows.append(timed(f"[cache] topk_by_blocks({k}) bf16, full {zp.size(1)} rows", lambda: topk_by_blocks(zp, k)))
        def two_stage():
            zz = torch.nn.functional.pad(zp, (0, -zp.size(1) % 1024), value=-float("inf"))
            zz = zz.view(zz.size(0), -1, 1024)                           # 每 1024 列先各取 k 个，再在候选里取 k 个
            v1, _ = zz.topk(k, dim=-1)
            return v1.flatten(1).topk(k, dim=-1)                         # 只计时：候选的下标还要一次小 gather 才映射回词表
        rows.append(timed(f"[cache] two-stage topk({k}) on padded rows", two_stage))
        rows.append(timed("[cache] logsumexp(z.float()) eager", lambda: torch.logsumexp(z.float(), -1)))
        lse_c = torch.compile(lambda z: torch.logsumexp(z.float(), -1))
        rows.append(timed("[cache] logsumexp(z.float()) compiled", lambda: lse_c(z)))
        rows.append(timed("[cache] _chunk_targets (topk + log p)", lambda: _chunk_targets(z, k, 1.0, "topk", None, V)))
        for compiled in (False, True):
            def whole(compiled=compiled):
                with ac(): return _teacher_rows(teacher, ids, V, k, 1.0, "topk", 4096, None, compiled)
            rows.append(timed(f"[cache] _teacher_rows whole batch ({'compiled' if compiled else 'eager'})", whole))
        def padded_masked_topk_lse(fused):
            zz = h @ w_full.T
            zz[:, V:] = -float("inf")                                    # 补出来的列不参与 topk 与 logsumexp
            vals, top = zz.topk(k, dim=-1)
            return top, vals.float() - (lse_c(zz) if fused else torch.logsumexp(zz.float(), -1))[:, None]
        rows.append(timed("[cache] candidate: full-row matmul + mask + topk + eager lse", lambda: padded_masked_topk_lse(False)))
        rows.append(timed("[cache] candidate: full-row matmul + mask + topk + compiled lse", lambda: padded_masked_topk_lse(True)))
        t_ids, t_lp = _chunk_targets(z, k, 1.0, "topk", None, V)
        rows.append(timed("[cache] D2H copy of (ids int32, logp fp16)", lambda: (t_ids.int().cpu(), t_lp.half().cpu())))


def build_throughput(args, dev, teacher):
    ds = RandomTokenStream(64 * args.batch, args.seq)
    with tempfile.TemporaryDirectory() as d:
        for compile_ in (False, True):
            t = time.perf_counter()
            build_sparse_cache(teacher, ds, Path(d) / f"c{compile_}", k=args.k, batch_size=args.batch, vocab=V,
                               progress=False, compile=compile_)
            meta = json.loads((Path(d) / f"c{compile_}" / "meta.json").read_text())
            print(f"build_sparse_cache(compile={compile_}): {len(ds) * args.seq:,} 个位置，总 {time.perf_counter() - t:.1f} s，"
                  f"稳态 {meta['tokens_per_second']:,.0f} tokens/s")


def loss_parts(args, dev, teacher, rows):
    B, T, k = args.batch, args.seq, args.k
    ids = torch.randint(0, V, (B, T), device=dev); labels = torch.randint(0, V, (B, T), device=dev)
    student = StudentModel(ModelConfig()).to(dev)
    ac = bf16_autocast
    with ac(): h0 = student.hidden_states(ids).detach()
    with torch.inference_mode(), ac(): th, tw = teacher_hidden_and_head(teacher, ids)
    th, tw = th.clone(), tw.clone()
    t_ids = torch.randint(0, V, (B, T, k), device=dev)
    t_lp = torch.log_softmax(torch.randn(B, T, k, device=dev), -1).half()
    def run(loss_fn):
        def f():
            h = h0.clone().requires_grad_()
            with ac(): loss, _ = loss_fn(h)
            loss.backward()
        return f
    W = student.lm_head.weight
    rows.append(timed("[loss] chunked CE (alpha 0)", run(lambda h: chunked_distillation_loss(
        h, W, labels, alpha=0.0, compiled=True, check_labels=False))))
    rows.append(timed("[loss] sparse topk_rest", run(lambda h: sparse_distillation_loss(
        h, W, labels, t_ids, t_lp, temperature=1.0, compiled=True, check_labels=False))))
    rows.append(timed("[loss] online forward KL", run(lambda h: chunked_distillation_loss(
        h, W, labels, th, tw, temperature=1.0, compiled=True, check_labels=False))))


def trainer_steps(args, dev, teacher):
    B, T = args.batch, args.seq
    base = RandomTokenStream(B * 60, T)
    with tempfile.TemporaryDirectory() as d:
        sparse_ds = random_cache(base, args.k, Path(d) / "cache")
        variants = {"ce": (base, dict(alpha=0.0)), "sparse_kd": (sparse_ds, dict(alpha=0.5, temperature=1.0)),
                    "online_kd": (base, dict(alpha=0.5, temperature=1.0))}
        for name, (ds, kw) in variants.items():
            for workers in args.workers:
                loader = DataLoader(ds, batch_size=B, shuffle=True, drop_last=True, num_workers=workers, pin_memory=True)
                cfg = TrainingConfig(batch_size=B, seq_len=T, warmup_steps=0, max_steps=10**6, log_interval=10**6,
                                     eval_interval=10**6, save_interval=10**6, precision="bf16",
                                     checkpoint_dir=f"/tmp/prof_sparse_{name}", **kw)
                tr = DistillationTrainer(StudentModel(ModelConfig()).to(dev), teacher if name == "online_kd" else None,
                                         loader, None, cfg, dev, progress=False)
                for _ in range(6): tr._train_step()
                torch.cuda.synchronize(); t = time.perf_counter()
                for _ in range(20): tr._train_step()
                cpu = (time.perf_counter() - t) / 20 * 1000
                torch.cuda.synchronize(); wall = (time.perf_counter() - t) / 20 * 1000
                print(f"训练器一步 {name:<9} workers={workers}: CPU 发射 {cpu:5.1f} ms/step，墙钟 {wall:5.1f} ms/step")
                if name == "sparse_kd" and workers == args.workers[-1]:
                    print_top_ops(lambda: [tr._train_step() for _ in range(3)], args.top)
                del tr


def main(args):
    dev = torch.device("cuda")
    torch.manual_seed(0); np.random.seed(0)
    teacher = teacher_model(dev)
    rows = []
    cache_build_parts(args, dev, teacher, rows)
    loss_parts(args, dev, teacher, rows)
    print(f"\n{torch.cuda.get_device_name(dev)}, batch {args.batch} x {args.seq}, k={args.k}, torch {torch.__version__}")
    print(f"{'':<60} {'wall':>8} {'kernels':>8}")
    for name, wall, gpu in rows: print(f"{name:<60} {wall:8.2f} {gpu:8.2f} ms")
    build_throughput(args, dev, teacher)
    trainer_steps(args, dev, teacher)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    main(ap.parse_args())
