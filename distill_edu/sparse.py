from __future__ import annotations
import functools, hashlib, json, math, os, shutil, time
from pathlib import Path
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from .config import check_int, check_number, check_token_ids
from .distill import (IGNORE_INDEX, _check_loss_args, _check_shapes, _fp32, _log_softmax_shifted, _mask_logit,
                      _matmul_dtype, _pad_rows, _add_matmul_, _metrics, teacher_hidden_and_head)


SPARSE_MODES = ("topk", "topk_rest", "sampled")   # 截断重归一、截断 + 尾部桶、按教师分布采样

def sparse_targets(teacher_logp: torch.Tensor, k: int, select: str = "topk", generator=None):
    """从教师 log 概率 (N, V) 取每行 k 个 (id, log p)：select="topk" 取概率最大的 k 个（按概率降序），
    select="sampled" 按 p 有放回地抽 k 次（同一个 id 可以出现多次）。返回 (ids (N,k) int64, logp (N,k) float32)"""
    check_int("k", k)
    if select not in ("topk", "sampled"): raise ValueError(f"select 必须是 'topk' 或 'sampled'，收到 {select!r}")
    if k > teacher_logp.size(-1): raise ValueError(f"k={k} 超过词表大小 {teacher_logp.size(-1)}")
    logp = _fp32(teacher_logp)
    if select == "topk":
        vals, ids = logp.topk(k, dim=-1)
        return ids, vals
    ids = torch.multinomial(logp.exp(), k, replacement=True, generator=generator)
    return ids, logp.gather(-1, ids)

def sparse_weights(logp: torch.Tensor, mode: str):
    """把缓存里的 (N, k) 教师 log 概率变成目标权重 w (N, k) 与尾部质量 r (N,)：
    topk：w = softmax(logp)（在 k 个里重新归一，r = 0）；topk_rest：w = p，r = 1 − Σw（尾部桶）；
    sampled：每次抽样权重 1/k（重复的 id 权重相加），r = 0"""
    if mode == "topk": return logp.softmax(-1), logp.new_zeros(logp.shape[:-1])
    if mode == "topk_rest":
        w = logp.exp()
        return w, (1 - w.sum(-1)).clamp_min(0)
    if mode == "sampled": return torch.full_like(logp, 1 / logp.size(-1)), logp.new_zeros(logp.shape[:-1])
    raise ValueError(f"未知的稀疏蒸馏 mode={mode!r}，可选：{SPARSE_MODES}")


def _sparse_chunk_loss_grad(z, ids, logp, y, alpha, temperature, mode, want_grad, vocab):
    """一块 token 的 (散度之和, CE 之和, g)，约定与 07 的 `_chunk_loss_grad` 相同（g = n·∂L/∂z，补出来的列为 0），
    只是教师不是整行 logits，而是缓存里的 ids (C,k) 与 logp (C,k)。散度是前向 KL 在稀疏目标上的版本：
    topk / topk_rest：Σ_K w (log w − log q) [+ r log(r / q_rest)]；sampled：(1/k) Σ (log p − log q)（KL 的无偏估计）"""
    valid, mm_dtype = y != IGNORE_INDEX, z.dtype
    y0 = torch.where(valid, y, 0)
    real = torch.arange(z.size(1), device=z.device) < vocab
    z = torch.where(real, _fp32(z), _mask_logit(temperature))
    z = z - z.amax(-1, keepdim=True)
    log_s = _log_softmax_shifted(z, 1.0)                              # T = 1 的学生 log 概率（CE 用）
    ce = -(log_s.gather(1, y0[:, None]).squeeze(1) * valid).sum()
    logq = log_s if temperature == 1 else _log_softmax_shifted(z, temperature)
    logq_k, logp = logq.gather(1, ids), _fp32(logp)                   # 学生、教师在那 k 个 id 上的 log 概率
    w, rest = sparse_weights(logp, mode)
    if mode == "sampled": d = (w * (logp - logq_k)).sum(-1)
    else: d = (torch.xlogy(w, w) - w * logq_k).sum(-1)
    if mode == "topk_rest":
        log_q_rest = logq.scatter(1, ids, float("-inf")).logsumexp(-1)   # log Σ_{j∉K} q_j：不用 1 − Σ_K q（会相消）
        d = d + torch.xlogy(rest, rest) - rest * log_q_rest
    kl = (d * valid).sum()
    if not want_grad: return kl, ce, None
    q = logq.exp()
    target = torch.zeros_like(q).scatter_add_(1, ids, w)             # p̂：k 个 id 上的目标概率（重复的 id 相加）
    if mode == "topk_rest":                                          # 尾部：剩余质量 r 按学生自己的尾部形状分摊
        tail = rest[:, None] * (logq - log_q_rest[:, None]).exp()
        target = target + tail.scatter(1, ids, 0.0)
    onehot = torch.arange(z.size(1), device=z.device) == y0[:, None]
    g = (1 - alpha) * (log_s.exp() - onehot.float()) + alpha * temperature * (q - target)
    return kl, ce, (torch.where(real, g, 0.0) * valid[:, None]).to(mm_dtype)

@functools.cache
def _compiled_sparse_chunk():
    "torch.compile 过的 `_sparse_chunk_loss_grad`：把十几个逐元素操作融合成少数几个 kernel（GPU 上用）"
    return torch.compile(_sparse_chunk_loss_grad, dynamic=False)


class _SparseDistillLoss(torch.autograd.Function):
    "分块的稀疏蒸馏损失：与 07 的 `_ChunkedDistillLoss` 同一个套路，前向逐块算损失和梯度，反向直接返回"

    @staticmethod
    def forward(ctx, s_hidden, s_weight, t_ids, t_logp, labels, opts):
        alpha, temperature, mode, chunk, want_grad, compiled = opts
        (V, d), N = s_weight.shape, s_hidden.size(0)
        dtype = _matmul_dtype(s_hidden.device.type, s_weight.dtype)
        n = (labels != IGNORE_INDEX).sum().clamp(min=1)
        w = _pad_rows(s_weight.detach().to(dtype))
        acc_dtype = torch.promote_types(dtype, torch.float32)
        g_h = s_hidden.new_empty(N, d, dtype=acc_dtype) if want_grad else None
        g_w = w.new_zeros(w.shape, dtype=acc_dtype) if want_grad else None
        kl_sum, ce_sum = w.new_zeros((), dtype=acc_dtype), w.new_zeros((), dtype=acc_dtype)
        step = _compiled_sparse_chunk() if compiled else _sparse_chunk_loss_grad
        with torch.autocast(s_hidden.device.type, enabled=False):
            for i in range(0, N, chunk):
                h = s_hidden[i:i + chunk].detach().to(dtype)
                kl_c, ce_c, g = step(h @ w.T, t_ids[i:i + chunk], t_logp[i:i + chunk], labels[i:i + chunk],
                                     alpha, temperature, mode, want_grad, V)
                if want_grad:
                    g_h[i:i + chunk] = g @ w
                    _add_matmul_(g_w, g.T, h)
                kl_sum += kl_c; ce_sum += ce_c
                del g
        if want_grad: ctx.save_for_backward(g_h / n, g_w[:V] / n)
        ctx.dtypes = (s_hidden.dtype, s_weight.dtype)
        kl, ce = kl_sum / n, ce_sum / n
        total = alpha * temperature**2 * kl + (1 - alpha) * ce
        ctx.mark_non_differentiable(kl, ce)
        return total, kl, ce

    @staticmethod
    def backward(ctx, g_total, _g_kl, _g_ce):
        g_h, g_w = ctx.saved_tensors
        return (g_h * g_total).to(ctx.dtypes[0]), (g_w * g_total).to(ctx.dtypes[1]), None, None, None, None

def sparse_distillation_loss(student_hidden: torch.Tensor, student_head_weight: torch.Tensor, labels: torch.Tensor,
                             teacher_ids: torch.Tensor, teacher_logp: torch.Tensor, alpha: float = 0.5,
                             temperature: float = 1.0, mode: str = "topk_rest", chunk_size: int = 1024,
                             compiled: bool = False, check_labels: bool = True):
    """稀疏蒸馏损失 total = α·τ²·D + (1−α)·CE，D 是前向 KL 在缓存目标上的版本（见 `SPARSE_MODES`）。

    student_hidden: (B, T, d)；student_head_weight: (V, d)；labels: (B, T) long（-100 忽略）；
    teacher_ids: (B, T, k) 整数，必须在 [0, V) 内；teacher_logp: (B, T, k) 教师在温度 τ 下的 log 概率（fp16/fp32）。
    与 `chunked_distillation_loss` 一样从不构造完整的 (token × 词表) 张量，也不需要教师模型。
    返回 (total, {"kl_loss", "ce_loss", "total_loss"})。"""
    _check_loss_args(alpha, temperature, "forward_kl")
    check_int("chunk_size", chunk_size)
    if mode not in SPARSE_MODES: raise ValueError(f"未知的稀疏蒸馏 mode={mode!r}，可选：{SPARSE_MODES}")
    V = student_head_weight.size(0)
    _check_shapes(student_hidden, labels, what="隐藏状态")
    lead = tuple(labels.shape)
    for name, t in (("teacher_ids", teacher_ids), ("teacher_logp", teacher_logp)):
        if not torch.is_tensor(t) or t.dim() != labels.dim() + 1 or tuple(t.shape[:-1]) != lead:
            shape = tuple(t.shape) if torch.is_tensor(t) else type(t).__name__
            raise ValueError(f"{name} 的形状 {shape} 应为 {lead + ('k',)}（与 labels {lead} 逐位置对齐）")
    if teacher_ids.shape != teacher_logp.shape:
        raise ValueError(f"teacher_ids {tuple(teacher_ids.shape)} 与 teacher_logp {tuple(teacher_logp.shape)} 的形状不同")
    if teacher_ids.is_floating_point(): raise ValueError(f"teacher_ids 应为整数张量，收到 {teacher_ids.dtype}")
    if check_labels:
        check_token_ids("labels", labels, V, ignore=IGNORE_INDEX)
        check_token_ids("teacher_ids", teacher_ids, V)
    k = teacher_ids.size(-1)
    h = student_hidden.reshape(-1, student_hidden.size(-1))
    want_grad = torch.is_grad_enabled() and (h.requires_grad or student_head_weight.requires_grad)
    opts = (alpha, temperature, mode, chunk_size, want_grad, compiled)
    total, kl, ce = _SparseDistillLoss.apply(h, student_head_weight, teacher_ids.reshape(-1, k).long(),
                                             teacher_logp.reshape(-1, k), labels.reshape(-1), opts)
    return total, _metrics(total, kl, ce)

_SPARSE_CACHE_VERSION = 1

def teacher_fingerprint(model) -> str:
    "教师的指纹：配置 + 每个参数的形状和一小段等距抽样的数值（同一份权重 → 同一个指纹；换了权重 → 几乎必然不同）"
    config = {k: v for k, v in model.config.to_dict().items() if not k.startswith("_") and k != "transformers_version"}
    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for name, p in sorted(model.state_dict().items()):
        flat = p.detach().reshape(-1)
        h.update(f"{name}{tuple(p.shape)}".encode())
        h.update(flat[:: max(1, flat.numel() // 64)].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]

def _cache_key(teacher_fp: str, dataset, k: int, temperature: float, select: str, seed: int) -> dict:
    "缓存由这些东西唯一决定：教师、token 流（分词器 + 语料 + 划分，用 token 缓存的校验和）、样本长度、k、τ、选法"
    return {"v": _SPARSE_CACHE_VERSION, "teacher": teacher_fp, "tokens": dataset.meta["sha256"][dataset.split],
            "token_cache": dataset.cache_path.name, "split": dataset.split, "seq_len": dataset.seq_len,
            "samples": len(dataset), "k": k, "temperature": temperature, "select": select,
            "seed": seed if select == "sampled" else None}

def _cache_arrays(path: Path, rows: int, k: int, mode: str):
    "缓存的两块 memmap：ids (rows, k) int32（Qwen 的 15 万词表要 18 位，int16 装不下）、logp (rows, k) float16"
    return (np.memmap(path / "ids.bin", dtype=np.int32, mode=mode, shape=(rows, k)),
            np.memmap(path / "logp.bin", dtype=np.float16, mode=mode, shape=(rows, k)))

def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24): h.update(chunk)
    return h.hexdigest()

@torch.inference_mode()
def _teacher_rows(teacher, ids, vocab, k, temperature, select, chunk, generator):
    "一批样本 (B, T) → 每个位置的 (ids, logp)，形状 (B·T, k)；教师 logits 每次只算 chunk 行"
    h, w = teacher_hidden_and_head(teacher, ids)
    h, w = h.reshape(-1, h.size(-1)), w[:vocab]
    out = [sparse_targets(F.log_softmax(_fp32(h[i:i + chunk] @ w.T) / temperature, -1), k, select, generator)
           for i in range(0, h.size(0), chunk)]
    return torch.cat([o[0] for o in out]), torch.cat([o[1] for o in out])

def build_sparse_cache(teacher, dataset, out_dir, k: int = 64, temperature: float = 1.0, select: str = "topk",
                       batch_size: int = 8, vocab: int | None = None, seed: int = 0, chunk: int = 4096,
                       progress: bool = True) -> Path:
    """教师在 dataset（06 的 `WikiDataset`，按顺序、不打乱）的每个位置上前向一次，把 k 个 (id, log p) 写进 out_dir：
    ids.bin (N·T, k) int32、logp.bin (N·T, k) float16、meta.json（key、形状、校验和）。
    写在 out_dir.partial 里，每批之后记下进度：中断后再调用会从断点接着写；写完校验和再原子地改名。
    out_dir 已经是同一个 key 的完整缓存 → 直接返回；是别的 key 的缓存 → 报错（不覆盖）。返回 out_dir。"""
    check_int("k", k); check_int("batch_size", batch_size)
    check_number("temperature", temperature, 0, lo_open=True)
    out, device = Path(out_dir), next(teacher.parameters()).device
    vocab = vocab or teacher.lm_head.weight.size(0)
    key = _cache_key(teacher_fingerprint(teacher), dataset, k, temperature, select, seed)
    if (out / "meta.json").is_file():
        old = json.loads((out / "meta.json").read_text())["key"]
        if old == key: return out
        diff = {f: (old.get(f), v) for f, v in key.items() if old.get(f) != v}
        raise ValueError(f"{out} 里已有另一份稀疏缓存（字段: (已有, 现在)）：{diff}；请换一个目录或先删除它")
    part, rows, T = Path(f"{out}.partial"), len(dataset) * dataset.seq_len, dataset.seq_len
    progress_file = part / "progress.json"
    done = 0
    if progress_file.is_file() and json.loads(progress_file.read_text())["key"] == key:
        done = json.loads(progress_file.read_text())["done"]
    else: shutil.rmtree(part, ignore_errors=True); part.mkdir(parents=True)
    ids_mm, logp_mm = _cache_arrays(part, rows, k, "r+" if done else "w+")
    gen = torch.Generator(device=device).manual_seed(seed + done)      # 续写时换一段随机数：样本仍独立
    from tqdm.auto import tqdm
    t0 = time.perf_counter()
    for start in tqdm(range(done, len(dataset), batch_size), disable=not progress, desc="teacher cache", leave=False):
        idx = range(start, min(start + batch_size, len(dataset)))
        ids = torch.stack([dataset[i]["input_ids"] for i in idx]).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            top_ids, top_logp = _teacher_rows(teacher, ids, vocab, k, temperature, select, chunk, gen)
        ids_mm[start * T:idx.stop * T] = top_ids.int().cpu().numpy()
        logp_mm[start * T:idx.stop * T] = top_logp.half().cpu().numpy()
        ids_mm.flush(); logp_mm.flush()                                 # 先落盘，再记进度：进度永远不超前于数据
        tmp = progress_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key": key, "done": idx.stop})); os.replace(tmp, progress_file)
    seconds = time.perf_counter() - t0
    del ids_mm, logp_mm
    meta = {"key": key, "rows": rows, "k": k, "vocab": vocab, "seconds": seconds,
            "tokens_per_second": (len(dataset) - done) * T / max(seconds, 1e-9),
            "sha256": {f: _sha256_file(part / f) for f in ("ids.bin", "logp.bin")}}
    (part / "meta.json").write_text(json.dumps(meta, indent=1)); progress_file.unlink()
    os.replace(part, out)
    if progress: print(f"稀疏教师缓存：{rows:,} 个位置 × k={k} → {sum((out / f).stat().st_size for f in ('ids.bin', 'logp.bin')) / 2**20:,.0f} MiB，"
                       f"{meta['tokens_per_second']:,.0f} tokens/s")
    return out

class SparseTargetDataset(Dataset):
    """在 `WikiDataset` 的每个样本旁边给出缓存的教师目标：
    `{"input_ids", "labels": (T,) int64, "teacher_ids": (T, k) int64, "teacher_logp": (T, k) float16}`。
    打开时核对缓存（文件大小、meta 的 key 与这份数据的 token 流、样本长度；verify=True 时再核对校验和；
    给了 teacher 时还核对教师指纹），对不上就点名报错。mode：这些目标怎么用（见 `SPARSE_MODES`）"""
    def __init__(self, base, cache_dir, mode: str = "topk_rest", teacher=None, verify: bool = True):
        if mode not in SPARSE_MODES: raise ValueError(f"未知的稀疏蒸馏 mode={mode!r}，可选：{SPARSE_MODES}")
        self.base, self.cache_dir, self.sparse_mode = base, Path(cache_dir), mode
        meta_file = self.cache_dir / "meta.json"
        if not meta_file.is_file():
            raise FileNotFoundError(f"{self.cache_dir} 不是完整的稀疏教师缓存（没有 meta.json）：先运行 build_sparse_cache")
        self.meta = json.loads(meta_file.read_text())
        key = self.meta["key"]
        want = _cache_key(key["teacher"] if teacher is None else teacher_fingerprint(teacher), base,
                          key["k"], key["temperature"], key["select"], key["seed"] or 0)
        diff = {f: (key.get(f), v) for f, v in want.items() if key.get(f) != v}
        if diff: raise ValueError(f"稀疏缓存 {self.cache_dir} 与这份数据/教师不符（字段: (缓存, 现在)）：{diff}")
        if (mode == "sampled") != (key["select"] == "sampled"):
            raise ValueError(f"mode={mode!r} 需要 select={'sampled' if mode == 'sampled' else 'topk'} 的缓存，"
                             f"{self.cache_dir} 是 select={key['select']!r}")
        rows, k = self.meta["rows"], key["k"]
        for f, size in (("ids.bin", 4), ("logp.bin", 2)):
            actual = (self.cache_dir / f).stat().st_size if (self.cache_dir / f).is_file() else None
            if actual != rows * k * size:
                raise ValueError(f"稀疏缓存文件 {self.cache_dir / f} 的大小是 {actual}，应为 {rows * k * size} 字节（被截断或被改过）")
            if verify and _sha256_file(self.cache_dir / f) != self.meta["sha256"][f]:
                raise ValueError(f"稀疏缓存文件 {self.cache_dir / f} 的校验和不对：内容被改过，请重建缓存")
        self.k, self.temperature, self._arrays = k, key["temperature"], None

    def __len__(self): return len(self.base)

    def __getitem__(self, i: int) -> dict:
        item = self.base[i]
        if i < 0: i += len(self)
        if self._arrays is None: self._arrays = _cache_arrays(self.cache_dir, self.meta["rows"], self.k, "r")
        rows = slice(i * self.base.seq_len, (i + 1) * self.base.seq_len)
        ids, logp = self._arrays
        return {**item, "teacher_ids": torch.from_numpy(ids[rows].astype(np.int64)),
                "teacher_logp": torch.from_numpy(np.array(logp[rows]))}

    def __getstate__(self): return {**self.__dict__, "_arrays": None}   # DataLoader worker 里各自打开 memmap
