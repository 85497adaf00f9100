"tests for distill_edu.sparse: sparse KD targets and loss, the teacher cache (resume, stale keys, corruption), the dataset, the trainer hooks"
import hashlib, json, shutil
from pathlib import Path
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from distill_edu.config import ModelConfig, TrainingConfig
from distill_edu.losses import distillation_loss
from distill_edu.trainer import DistillationTrainer
from distill_edu.model import StudentModel
from distill_edu.sparse import (SPARSE_MODES, SparseTargetDataset, build_sparse_cache, sparse_distillation_loss,
                                sparse_targets, sparse_weights, teacher_fingerprint)

V, SEQ = 11, 8        # 损失测试的词表（LM head 会补到 128 行）、样本长度
V_CHAIN = 32          # 缓存与训练测试用的马尔可夫链词表


def toy(dtype=torch.float64, seed=0, B=2, T=5, d=8):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(B, T, d, dtype=dtype, generator=g).requires_grad_()
    W = torch.randn(V, d, dtype=dtype, generator=g).requires_grad_()
    y = torch.randint(0, V, (B, T), generator=g); y[0, 0] = -100
    return h, W, y, torch.randn(B, T, V, dtype=dtype, generator=g) * 2


def targets(t_logits, k, tau, select="topk"):
    B, T, _ = t_logits.shape
    ids, lp = sparse_targets(F.log_softmax(t_logits / tau, -1).reshape(-1, V), k, select, torch.Generator().manual_seed(1))
    return ids.view(B, T, k), lp.view(B, T, k)


def naive(h, W, y, ids, logp, alpha, tau, mode):
    "07c 第 2 节公式的直接实现（整行 log_softmax + autograd）"
    logq = F.log_softmax((h @ W.T) / tau, -1)
    lq_k, lp = logq.gather(-1, ids), logp.to(logq.dtype)
    if mode == "topk":
        w = lp.softmax(-1); d = (w * (w.log() - lq_k)).sum(-1)
    elif mode == "sampled": d = (lp - lq_k).mean(-1)
    else:
        w = lp.exp(); rest = 1 - w.sum(-1)
        d = (w * (lp - lq_k)).sum(-1) + rest * (rest.log() - logq.scatter(-1, ids, float("-inf")).logsumexp(-1))
    valid = y != -100
    ce = F.cross_entropy((h @ W.T).flatten(0, 1), y.flatten(), ignore_index=-100)
    return alpha * tau**2 * (d * valid).sum() / valid.sum() + (1 - alpha) * ce


# —— 损失 ——
@pytest.mark.parametrize("tau", [1.0, 2.0])
@pytest.mark.parametrize("mode", ["topk", "topk_rest"])
def test_k_equals_vocab_matches_full_forward_kl(mode, tau):
    h, W, y, t = toy()
    ids, lp = targets(t, V, tau)
    loss, m = sparse_distillation_loss(h, W, y, ids, lp, alpha=0.3, temperature=tau, mode=mode, chunk_size=3)
    ref, m_ref = distillation_loss(h @ W.T, t, y, alpha=0.3, temperature=tau)
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(m["kl_loss"], m_ref["kl_loss"])
    for a, b in zip(torch.autograd.grad(loss, (h, W)), torch.autograd.grad(ref, (h, W))): torch.testing.assert_close(a, b)


def test_k_equals_vocab_fp16_cache_is_finite():
    "k = V、fp16 存的 log 概率：Σp 与 1 差一点舍入误差，尾部却是空的——损失必须有限且接近完整 KL"
    h, W, y, t = toy(torch.float32)
    ids, lp = targets(t, V, 1.0)
    loss, _ = sparse_distillation_loss(h, W, y, ids, lp.half(), alpha=1.0, temperature=1.0, mode="topk_rest")
    ref, _ = distillation_loss(h @ W.T, t, y, alpha=1.0, temperature=1.0)
    assert torch.isfinite(loss) and abs(loss.item() - ref.item()) < 1e-2 * ref.item()


@pytest.mark.parametrize("mode", SPARSE_MODES)
def test_loss_and_grads_match_autograd(mode):
    h, W, y, t = toy()
    ids, lp = targets(t, 4, 2.0, "sampled" if mode == "sampled" else "topk")
    loss, _ = sparse_distillation_loss(h, W, y, ids, lp, alpha=0.3, temperature=2.0, mode=mode, chunk_size=4)
    ref = naive(h, W, y, ids, lp, 0.3, 2.0, mode)
    torch.testing.assert_close(loss, ref)
    for a, b in zip(torch.autograd.grad(loss, (h, W)), torch.autograd.grad(ref, (h, W))): torch.testing.assert_close(a, b)


@pytest.mark.parametrize("mode", SPARSE_MODES)
def test_weights_sum_to_one(mode):
    lp = F.log_softmax(torch.randn(6, 40) * 3, -1).topk(5).values.half().float()
    w, rest = sparse_weights(lp, mode)
    torch.testing.assert_close(w.sum(-1) + rest, torch.ones(6))
    assert (rest >= 0).all()


def test_sampled_target_is_unbiased():
    p = F.softmax(torch.randn(V) * 2, -1)
    ids, _ = sparse_targets(p.log()[None].expand(20_000, V), 8, "sampled", torch.Generator().manual_seed(0))
    est = torch.zeros(V).scatter_add_(0, ids.reshape(-1), torch.full((ids.numel(),), 1 / ids.numel()))
    assert (est - p).abs().max() < 4 * (0.25 / ids.numel()) ** 0.5


def _bad_loss_inputs():
    h, W, y, t = toy(torch.float32)
    ids, lp = targets(t, 4, 1.0)
    call = lambda **kw: (lambda: sparse_distillation_loss(**{**dict(student_hidden=h, student_head_weight=W, labels=y,
                                                                      teacher_ids=ids, teacher_logp=lp), **kw}))
    return [
        ("ids too large", call(teacher_ids=ids + V), f"超出词表 [0, {V})"),
        ("negative ids", call(teacher_ids=ids - V), "超出词表"),
        ("float ids", call(teacher_ids=ids.float()), "应为整数张量"),
        ("ids wrong positions", call(teacher_ids=ids[:, :4]), "teacher_ids 的形状"),
        ("ids not a tensor", call(teacher_ids=ids.tolist()), "teacher_ids 的形状 list"),
        ("logp wrong k", call(teacher_logp=lp[..., :3]), "形状不同"),
        ("logp transposed", call(teacher_logp=lp.transpose(0, 1)), "teacher_logp 的形状"),
        ("unknown mode", call(mode="top-k"), "'top-k'"),
        ("chunk 0", call(chunk_size=0), "chunk_size"),
        ("alpha > 1", call(alpha=1.5), "alpha"),
        ("topk k > V", lambda: sparse_targets(torch.zeros(2, V), V + 1), f"k={V + 1}"),
        ("unknown select", lambda: sparse_targets(torch.zeros(2, V), 2, "random"), "'random'"),
        ("unknown weights mode", lambda: sparse_weights(torch.zeros(2, 3), "rest"), "'rest'"),
    ]


@pytest.mark.parametrize("name,fn,match", _bad_loss_inputs(), ids=[c[0] for c in _bad_loss_inputs()])
def test_bad_loss_inputs(name, fn, match):
    with pytest.raises(ValueError) as e: fn()
    assert match in str(e.value)


# —— 缓存与数据集 ——
class TokenStream(Dataset):
    "内存里的 token 流，接口与 WikiDataset 相同（meta['sha256'][split]、cache_path.name、split、seq_len）"
    def __init__(self, tokens, seq_len=SEQ, split="train"):
        self.tokens, self.seq_len, self.split = np.asarray(tokens, np.uint32), seq_len, split
        self.meta = {"sha256": {split: hashlib.sha256(self.tokens.tobytes()).hexdigest()}}
        self.cache_path = Path("toy_chain")
    def __len__(self): return (len(self.tokens) - 1) // self.seq_len
    def __getitem__(self, i):
        if i < 0: i += len(self)
        x = torch.from_numpy(self.tokens[i * self.seq_len:(i + 1) * self.seq_len + 1].astype(np.int64))
        return {"input_ids": x[:-1], "labels": x[1:]}


class FailAt(Dataset):
    "读到第 fail_at 个样本时抛错（模拟中断），并记下读过的下标"
    def __init__(self, base, fail_at=None): self.base, self.fail_at, self.seen = base, fail_at, []
    def __getattr__(self, name): return getattr(self.base, name)
    def __len__(self): return len(self.base)
    def __getitem__(self, i):
        if i == self.fail_at: raise RuntimeError("interrupted")
        self.seen.append(i)
        return self.base[i]


def chain(seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.softmax(torch.randn(V_CHAIN, V_CHAIN, generator=g) * 3, -1)


class Bigram(nn.Module):
    "玩具教师：logits = log P(下一个 | 当前)"
    def __init__(self, P):
        super().__init__()
        self.config = ModelConfig(hidden_size=V_CHAIN, num_layers=1, num_heads=2, num_kv_heads=1,
                                  intermediate_size=V_CHAIN, vocab_size=V_CHAIN)
        self.lm_head = nn.Linear(V_CHAIN, V_CHAIN, bias=False)
        with torch.no_grad(): self.lm_head.weight.copy_(P.log().T)
    def hidden_states(self, ids): return F.one_hot(ids, V_CHAIN).float()
    def forward(self, ids): return self.lm_head(self.hidden_states(ids))


def sample(P, n, seed):
    g, x = torch.Generator().manual_seed(seed), [0]
    for _ in range(n - 1): x.append(int(torch.multinomial(P[x[-1]], 1, generator=g)))
    return np.array(x)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    P = chain()
    root = tmp_path_factory.mktemp("sparse")
    ds = TokenStream(sample(P, 40 * SEQ + 1, seed=1))
    teacher = Bigram(P)
    cache = build_sparse_cache(teacher, ds, root / "k8", k=8, batch_size=4, progress=False)
    return {"P": P, "root": root, "ds": ds, "teacher": teacher, "cache": cache}


def test_cache_content_is_teacher_topk(world):
    ids = np.memmap(world["cache"] / "ids.bin", dtype=np.int32, mode="r").reshape(-1, 8)
    logp = np.memmap(world["cache"] / "logp.bin", dtype=np.float16, mode="r").reshape(-1, 8)
    cur = world["ds"].tokens[:len(world["ds"]) * SEQ].astype(np.int64)
    ref_lp, ref_ids = world["P"].log()[cur].topk(8)
    assert (ids == ref_ids.numpy()).all()
    np.testing.assert_allclose(logp.astype(np.float32), ref_lp.numpy(), atol=1e-2, rtol=1e-3)
    assert not Path(f"{world['cache']}.partial").exists()


class PaddedBigram(Bigram):
    "LM head 比词表多 3 行（像 Qwen2.5 的 151,936 行对 151,665 个 token），填充行的 logit 比任何真实 token 都大"
    def __init__(self, P, extra=3):
        super().__init__(P)
        w = torch.cat([self.lm_head.weight.data, torch.full((extra, V_CHAIN), 50.0)])
        self.lm_head = nn.Linear(V_CHAIN, V_CHAIN + extra, bias=False)
        with torch.no_grad(): self.lm_head.weight.copy_(w)


@pytest.mark.parametrize("select", ["topk", "sampled"])
def test_padded_head_rows_never_enter_the_cache(world, select):
    "vocab < LM head 的行数：填充行既不能被选中，也不能进 log Σ（log p 仍按真实词表归一）"
    out = build_sparse_cache(PaddedBigram(world["P"]), world["ds"], world["root"] / f"padded_{select}", k=8,
                             select=select, vocab=V_CHAIN, batch_size=4, progress=False)
    ids = np.memmap(out / "ids.bin", dtype=np.int32, mode="r").reshape(-1, 8)
    logp = np.memmap(out / "logp.bin", dtype=np.float16, mode="r").reshape(-1, 8)
    cur = world["ds"].tokens[:len(world["ds"]) * SEQ].astype(np.int64)
    assert ids.max() < V_CHAIN
    ref = world["P"].log()[cur].gather(-1, torch.from_numpy(ids.astype(np.int64)))
    np.testing.assert_allclose(logp.astype(np.float32), ref.numpy(), atol=1e-2, rtol=1e-3)
    if select == "topk":
        ref_ids = np.memmap(world["cache"] / "ids.bin", dtype=np.int32, mode="r").reshape(-1, 8)
        assert (ids == ref_ids).all()


@pytest.mark.parametrize("kw,match", [(dict(vocab=V_CHAIN + 1), f"vocab={V_CHAIN + 1}"), (dict(k=V_CHAIN + 1), "超过 vocab")])
def test_cache_bad_vocab_or_k_named(world, kw, match):
    with pytest.raises(ValueError, match=match):
        build_sparse_cache(world["teacher"], world["ds"], world["root"] / "never", **{"k": 4, "progress": False, **kw})


@pytest.mark.parametrize("select", ["topk", "sampled"])
def test_resume_equals_uninterrupted(world, select):
    out, kw = world["root"] / f"resume_{select}", dict(k=4, select=select, batch_size=4, progress=False, sync_every=2)
    with pytest.raises(RuntimeError, match="interrupted"):
        build_sparse_cache(world["teacher"], FailAt(world["ds"], fail_at=13), out, **kw)
    assert not out.exists()                                                       # 没有半个缓存可读
    # 每 2 批（8 个样本）落盘一次：第 13 个样本出错时，最近记下的进度是 8，第 8–11 个样本要重算
    assert json.loads((world["root"] / f"resume_{select}.partial" / "progress.json").read_text())["done"] == 8
    resumed = FailAt(world["ds"])
    build_sparse_cache(world["teacher"], resumed, out, **kw)
    assert min(resumed.seen) == 8
    fresh = build_sparse_cache(world["teacher"], world["ds"], world["root"] / f"fresh_{select}", **kw)
    for f in ("ids.bin", "logp.bin"): assert (out / f).read_bytes() == (fresh / f).read_bytes(), f


def test_empty_out_dir_is_filled(world):
    "out_dir 已存在但是空的（比如命令行事先建好的目录）：照常建缓存，最后的改名替换掉这个空目录"
    out = world["root"] / "empty_first"; out.mkdir()
    assert build_sparse_cache(world["teacher"], world["ds"], out, k=8, batch_size=4, progress=False) == out
    assert (out / "ids.bin").read_bytes() == (world["cache"] / "ids.bin").read_bytes()


def test_existing_cache_same_key_is_reused(world):
    before = (world["cache"] / "meta.json").stat().st_mtime_ns
    assert build_sparse_cache(world["teacher"], world["ds"], world["cache"], k=8, batch_size=4, progress=False) == world["cache"]
    assert (world["cache"] / "meta.json").stat().st_mtime_ns == before


def _corrupt(world, name, edit):
    dst = world["root"] / name
    if not dst.exists(): shutil.copytree(world["cache"], dst); edit(dst)
    return dst


def _truncate(d):
    with open(d / "logp.bin", "r+b") as f: f.truncate(10)


def _break_meta(d): (d / "meta.json").write_text('{"key": ')


def _other_files(w):
    "一个放着别的文件的目录：建缓存要在读第一个样本（FailAt 的第 0 个）之前就拒绝它"
    d = w["root"] / "not_a_cache"; d.mkdir(exist_ok=True); (d / "notes.txt").write_text("mine")
    return d


def _flip(d):
    b = bytearray((d / "ids.bin").read_bytes()); b[5] ^= 0x01; (d / "ids.bin").write_bytes(bytes(b))


REFUSALS = [
    ("another key in out_dir", lambda w: build_sparse_cache(w["teacher"], w["ds"], w["cache"], k=4, progress=False), "'k': (8, 4)"),
    ("another temperature in out_dir", lambda w: build_sparse_cache(w["teacher"], w["ds"], w["cache"], k=8, temperature=2.0,
                                                                    progress=False), "'temperature': (1.0, 2.0)"),
    ("another teacher in out_dir", lambda w: build_sparse_cache(Bigram(chain(5)), w["ds"], w["cache"], k=8, progress=False), "'teacher'"),
    ("another corpus", lambda w: SparseTargetDataset(TokenStream(w["ds"].tokens[::-1].copy()), w["cache"]), "'tokens'"),
    ("another split", lambda w: SparseTargetDataset(TokenStream(w["ds"].tokens, split="validation"), w["cache"]), "'split'"),
    ("another seq_len", lambda w: SparseTargetDataset(TokenStream(w["ds"].tokens, seq_len=4), w["cache"]), "'seq_len': (8, 4)"),
    ("another teacher", lambda w: SparseTargetDataset(w["ds"], w["cache"], teacher=Bigram(chain(5))), "'teacher'"),
    ("truncated file", lambda w: SparseTargetDataset(w["ds"], _corrupt(w, "cut", _truncate)), "logp.bin 的大小是 10"),
    ("checksum changed", lambda w: SparseTargetDataset(w["ds"], _corrupt(w, "flip", _flip)), "ids.bin 的校验和不对"),
    ("sampled mode on a topk cache", lambda w: SparseTargetDataset(w["ds"], w["cache"], mode="sampled"), "select='topk'"),
    ("unknown mode", lambda w: SparseTargetDataset(w["ds"], w["cache"], mode="full"), "'full'"),
    ("k = 0", lambda w: build_sparse_cache(w["teacher"], w["ds"], w["root"] / "k0", k=0, progress=False), "k 必须是正整数"),
    ("meta.json not JSON", lambda w: SparseTargetDataset(w["ds"], _corrupt(w, "meta", _break_meta)), "meta.json 不是合法的 JSON"),
    ("meta.json not JSON, build", lambda w: build_sparse_cache(w["teacher"], w["ds"], _corrupt(w, "meta", _break_meta), k=8,
                                                                progress=False), "meta.json 不是合法的 JSON"),
    ("out_dir holds other files", lambda w: build_sparse_cache(w["teacher"], FailAt(w["ds"], fail_at=0), _other_files(w), k=8,
                                                               progress=False), "不是稀疏教师缓存（没有 meta.json）：不覆盖"),
]


@pytest.mark.parametrize("name,fn,match", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_stale_or_broken_cache_refused(world, name, fn, match):
    with pytest.raises(ValueError) as e: fn(world)
    assert match in str(e.value)


def test_missing_cache_named(world):
    with pytest.raises(FileNotFoundError, match="没有 meta.json"): SparseTargetDataset(world["ds"], world["root"] / "nothing")


def test_dataset_items(world):
    sds = SparseTargetDataset(world["ds"], world["cache"], teacher=world["teacher"])
    item = sds[-1]
    assert sds.sparse_mode == "topk_rest" and sds.temperature == 1.0 and len(sds) == len(world["ds"])
    assert item["teacher_ids"].shape == (SEQ, 8) and item["teacher_ids"].dtype == torch.int32
    assert item["teacher_logp"].dtype == torch.float16
    assert torch.equal(item["input_ids"], world["ds"][len(world["ds"]) - 1]["input_ids"])
    assert teacher_fingerprint(world["teacher"]) == teacher_fingerprint(Bigram(world["P"]))


# —— 训练器 ——
def _trainer(world, tmp_path, steps=20, **kw):
    torch.manual_seed(0)
    student = StudentModel(ModelConfig(hidden_size=32, num_layers=1, num_heads=4, num_kv_heads=2, intermediate_size=64,
                                       vocab_size=V_CHAIN, max_seq_len=SEQ))
    cfg = dict(batch_size=4, seq_len=SEQ, learning_rate=1e-2, warmup_steps=2, max_steps=steps, alpha=0.7, temperature=1.0,
               log_interval=1, eval_interval=10**6, save_interval=10**6, checkpoint_dir=str(tmp_path / "ck"), loss_chunk_size=16)
    loader = DataLoader(SparseTargetDataset(world["ds"], world["cache"]), batch_size=4, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    return DistillationTrainer(student, None, loader, None, TrainingConfig(**{**cfg, **kw}), progress=False)


@pytest.mark.parametrize("kw,match", [
    (dict(temperature=2.0), "temperature=2.0 与稀疏缓存建立时的温度 1.0 不同"),
    (dict(loss_kind="reverse_kl"), "只支持 loss_kind='forward_kl'"),
    (dict(loss_chunk_size=0), "loss_chunk_size 必须 > 0"),
], ids=["temperature", "loss_kind", "chunk 0"])
def test_trainer_refuses_mismatched_config(world, tmp_path, kw, match):
    with pytest.raises(ValueError) as e: _trainer(world, tmp_path, **kw)
    assert match in str(e.value)


def test_sparse_training_without_teacher(world, tmp_path, capsys):
    tr = _trainer(world, tmp_path)
    h = tr.train()
    assert tr.teacher is None
    assert min(h["kl_loss"]) > 0
    assert np.mean(h["train_loss"][-5:]) < 0.8 * np.mean(h["train_loss"][:5])


def test_sparse_triton_kernel_matches_torch_under_the_interpreter():
    "07c 5.6 节的 Triton kernel（topk / topk_rest）在 Triton 解释器里跑 CPU 张量，损失与梯度 == `_sparse_chunk_loss_grad`"
    from kd_helpers import run_triton_interpreter_check
    run_triton_interpreter_check("triton_interpret_sparse_check.py", timeout=900)


def test_sparse_step_picks_triton_only_where_it_applies():
    "GPU 上 topk / topk_rest 用 Triton kernel，sampled 用 torch.compile；compiled=False 时总是朴素的 PyTorch 版"
    import torch
    from distill_edu.sparse import _sparse_step, _sparse_kl_ce_triton, _sparse_chunk_loss_grad
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert _sparse_step("topk_rest", cuda, True) is _sparse_kl_ce_triton
    assert _sparse_step("topk", cuda, True) is _sparse_kl_ce_triton
    assert _sparse_step("sampled", cuda, True) is not _sparse_kl_ce_triton
    assert _sparse_step("topk_rest", cpu, True) is not _sparse_kl_ce_triton
    assert _sparse_step("topk_rest", cuda, False) is _sparse_chunk_loss_grad
