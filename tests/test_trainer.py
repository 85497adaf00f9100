"tests for distill_edu.distill: losses, chunked path, teacher loading, DistillationTrainer (resume, NaN, DDP)"
import math, os, warnings
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from distill_edu.config import ModelConfig, TrainingConfig, LOSS_KINDS
from distill_edu.distill import (IGNORE_INDEX, DistillationTrainer, TrainingDiverged, check_vocab, chunked_distillation_loss,
                                 divergence, distillation_loss, load_teacher_model, lr_multiplier, atomic_save)
from distill_edu.model import StudentModel

V = 96            # 学生词表
V_TEACHER = 128   # 教师输出行（多出的是“填充行”）
SEQ = 16


def tiny_student(seed=0, vocab=V, hidden=32, layers=2):
    torch.manual_seed(seed)
    return StudentModel(ModelConfig(hidden_size=hidden, num_layers=layers, num_heads=4, num_kv_heads=2,
                                    intermediate_size=64, vocab_size=vocab, max_seq_len=64))


def save_hf_teacher(path, vocab=V_TEACHER, seed=1, big_weight=None):
    from transformers import Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(seed)
    cfg = Qwen2Config(hidden_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=96, vocab_size=vocab, max_position_embeddings=64, tie_word_embeddings=True)
    model = Qwen2ForCausalLM(cfg)
    if big_weight is not None:
        with torch.no_grad(): model.lm_head.weight[3, 0] = big_weight
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    return save_hf_teacher(str(tmp_path_factory.mktemp("teacher")))


def markov_loader(n=48, batch=4, shuffle=True, seed=0, noise=0.1):
    "结构化的合成数据：下一个 token = (5x + 3) mod V，10% 的位置随机替换"
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        x = [int(torch.randint(0, V, (1,), generator=g))]
        for _ in range(SEQ):
            nxt = (5 * x[-1] + 3) % V
            if float(torch.rand(1, generator=g)) < noise: nxt = int(torch.randint(0, V, (1,), generator=g))
            x.append(nxt)
        t = torch.tensor(x)
        rows.append({"input_ids": t[:-1], "labels": t[1:]})
    # 与 distill_edu.data.create_dataloaders 一样带自己的 generator
    return DataLoader(rows, batch_size=batch, shuffle=shuffle, generator=torch.Generator().manual_seed(seed))


def cfg(tmp_path, **kw):
    from pathlib import Path
    tmp_path = Path(tmp_path)
    base = dict(batch_size=4, learning_rate=1e-2, warmup_steps=2, max_steps=10, alpha=0.5, temperature=2.0,
                checkpoint_dir=str(tmp_path / "ckpt"), log_interval=5, eval_interval=5, save_interval=100, seq_len=SEQ,
                loss_chunk_size=24, seed=0)
    base.update(kw)
    return TrainingConfig(**base)


def params_of(model): return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_training(a: dict, b: dict, rtol=1e-4, atol=1e-5, what=""):
    """比较两次训练得到的参数。k_proj.bias 除外：给所有键加同一个偏置 b 只让每个查询的全部分数平移 q·b，
    softmax 不变，所以它的真实梯度恒为 0，算出来的只是 ~1e-9 的舍入噪声——而 Adam 会把噪声放大成 ±lr 的更新，
    两条数值上等价的路径在这里必然不同。"""
    for k in a:
        if k.endswith("k_proj.bias"): continue
        torch.testing.assert_close(b[k], a[k], rtol=rtol, atol=atol, msg=lambda m: f"{what} 参数 {k} 不同：{m}")


# ---------------- losses ----------------

def rand_inputs(seed=0, B=2, T=6, Vs=V, Vt=V_TEACHER, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(B, T, Vs, generator=g, dtype=dtype)
    t = torch.randn(B, T, Vt, generator=g, dtype=dtype) * 2
    y = torch.randint(0, Vs, (B, T), generator=g)
    y[0, :2] = IGNORE_INDEX
    return s, t, y


def test_loss_returns_scalar_and_metrics():
    s, t, y = rand_inputs()
    loss, m = distillation_loss(s, t, y)
    assert loss.dim() == 0 and loss.item() > 0
    assert set(m) == {"kl_loss", "ce_loss", "total_loss"}
    assert m["kl_loss"].item() > 0 and m["ce_loss"].item() > 0
    torch.testing.assert_close(m["total_loss"], 0.5 * 4.0 * m["kl_loss"] + 0.5 * m["ce_loss"])


def test_alpha_zero_is_ce_and_alpha_one_is_t2_kl():
    s, t, y = rand_inputs()
    loss0, _ = distillation_loss(s, t, y, alpha=0.0)
    assert torch.equal(loss0, F.cross_entropy(s.reshape(-1, V), y.reshape(-1), ignore_index=IGNORE_INDEX))
    loss1, m1 = distillation_loss(s, t, y, alpha=1.0, temperature=3.0)
    assert torch.equal(loss1, 9.0 * m1["kl_loss"])
    keep = y.reshape(-1) != IGNORE_INDEX
    lq = F.log_softmax(s.reshape(-1, V) / 3, -1)
    lp = F.log_softmax(t[..., :V].reshape(-1, V) / 3, -1)
    torch.testing.assert_close(m1["kl_loss"], (lp.exp() * (lp - lq)).sum(-1)[keep].mean())


@pytest.mark.parametrize("kind", LOSS_KINDS)
def test_divergence_matches_direct_formula(kind):
    g = torch.Generator().manual_seed(3)
    zs, zt = torch.randn(5, 9, generator=g, dtype=torch.float64), torch.randn(5, 9, generator=g, dtype=torch.float64)
    q, p = zs.softmax(-1), zt.softmax(-1)
    kl = lambda a, b: (a * (a / b).log()).sum(-1)
    beta, lam = 0.3, 0.2
    m = beta * p + (1 - beta) * q
    want = {"forward_kl": kl(p, q), "reverse_kl": kl(q, p), "jsd": beta * kl(p, m) + (1 - beta) * kl(q, m),
            "skew_kl": kl(p, lam * p + (1 - lam) * q)}[kind]
    got = divergence(zs.log_softmax(-1), zt.log_softmax(-1), kind, beta=beta, lam=lam)
    torch.testing.assert_close(got, want)
    assert (got >= -1e-12).all()
    # 同一分布时散度为 0
    torch.testing.assert_close(divergence(zt.log_softmax(-1), zt.log_softmax(-1), kind, beta, lam),
                               torch.zeros(5, dtype=torch.float64))


def test_jsd_and_skew_endpoints_reduce_to_kls():
    s, t, _ = rand_inputs(dtype=torch.float64)
    ls, lt = s[0].log_softmax(-1), t[0, :, :V].log_softmax(-1)
    torch.testing.assert_close(divergence(ls, lt, "jsd", beta=0.0), divergence(ls, lt, "forward_kl"))
    torch.testing.assert_close(divergence(ls, lt, "jsd", beta=1.0), divergence(ls, lt, "reverse_kl"))
    torch.testing.assert_close(divergence(ls, lt, "skew_kl", lam=0.0), divergence(ls, lt, "forward_kl"))
    # λ=1：混合分布就是教师本身，KL(P‖P) = 0（曾因 math.log1p(-1) 报 math domain error）
    torch.testing.assert_close(divergence(ls, lt, "skew_kl", lam=1.0), torch.zeros(ls.size(0), dtype=ls.dtype))


def test_teacher_vocab_is_sliced_not_masked():
    s, t, y = rand_inputs()
    t[..., V:] = 1e4                                         # 填充行上的巨大 logits 不得影响结果
    loss, m = distillation_loss(s, t, y, alpha=1.0)
    loss_ref, _ = distillation_loss(s, t[..., :V].clone(), y, alpha=1.0)
    assert torch.isfinite(loss) and torch.equal(loss, loss_ref)


def test_batchmean_pitfall_is_not_used():
    "F.kl_div(batchmean) 在 3-D 上只除以 batch：我们的 kl_loss 是逐 token 平均"
    s, t, _ = rand_inputs(B=2, T=6)
    y = torch.zeros(2, 6, dtype=torch.long)
    _, m = distillation_loss(s, t, y, alpha=1.0, temperature=1.0)
    bm = F.kl_div(s.log_softmax(-1), t[..., :V].log_softmax(-1), reduction="batchmean", log_target=True)
    torch.testing.assert_close(bm, m["kl_loss"] * 6)         # batchmean 大了 T_seq=6 倍


@pytest.mark.parametrize("bad,match", [(dict(kind="kl"), "kind='kl'"), (dict(alpha=1.5), r"alpha 必须在 \[0, 1\] 内，收到 1.5"),
                                       (dict(alpha=-0.1), "收到 -0.1"), (dict(temperature=0.0), "temperature 必须在 .*收到 0.0"),
                                       (dict(temperature=-1.0), "收到 -1.0"),
                                       (dict(temperature=float("inf")), "temperature 必须是有限的数字"),
                                       (dict(alpha=float("nan")), "alpha 必须是有限的数字"),
                                       (dict(kind="jsd", beta=2.0), "jsd_beta")])
def test_bad_loss_arguments(bad, match):
    s, t, y = rand_inputs()
    with pytest.raises(ValueError, match=match): distillation_loss(s, t, y, **bad)


def _plain(s, t, y, **kw): return distillation_loss(s, t, y, **kw)


def _chunked(s, t, y, **kw):
    "同样的 (学生, 教师, 标签) 走分块路径：隐藏状态取 logits 本身、LM head 取单位矩阵（logits = h · Iᵀ）"
    eye = lambda n: torch.eye(n, dtype=s.dtype)
    return chunked_distillation_loss(s, eye(s.size(-1)), y, t, eye(t.size(-1)), **kw)


@pytest.mark.parametrize("loss_fn", [_plain, _chunked], ids=["plain", "chunked"])
@pytest.mark.parametrize("change, match", [
    (lambda s, t, y: (s, t, y.masked_fill(y == y[1, 0], 100)), r"labels 中有超出词表 \[0, 96\) 的 token 编号 100"),
    (lambda s, t, y: (s, t, y.masked_fill(y == y[1, 0], 500)), "token 编号 500"),
    (lambda s, t, y: (s, t, y.masked_fill(y == y[1, 0], -5)), "token 编号 -5"),
    (lambda s, t, y: (s, t, y.float()), "labels 必须是整数张量"),
    (lambda s, t, y: (s, t[:1, :1], y), r"形状 \(1, 1, 128\) 与学生 \(2, 6, 96\) 的前几维不一致"),
    (lambda s, t, y: (s, t.transpose(0, 1), y), "不做广播；转置过的张量也会被发现"),
    (lambda s, t, y: (s, t, y.t()), r"labels 的形状 \(6, 2\) 应为 \(2, 6\)"),
    (lambda s, t, y: (s, t, y.tolist()), "labels 的形状 list"),
    (lambda s, t, y: (s[:, :0], t[:, :0], y[:, :0]), r"labels 是空的（形状 \(2, 0\)）"),
])
def test_bad_loss_inputs_are_named(loss_fn, change, match):
    "两条损失路径对同样的坏输入给出同样点名的错误（而不是 ce_loss 10009.98 或悄悄广播）"
    s, t, y = change(*rand_inputs())
    with pytest.raises(ValueError, match=match): loss_fn(s, t, y)


def test_chunked_checks_hidden_size_against_head():
    s, t, y = rand_inputs()
    with pytest.raises(ValueError, match="学生隐藏状态的最后一维 96 与 LM head 权重 \\(96, 95\\)"):
        chunked_distillation_loss(s, torch.zeros(V, V - 1), y, alpha=0.0)


@pytest.mark.parametrize("kind", LOSS_KINDS)
def test_teacher_minus_inf_means_probability_zero(kind):
    "教师把一部分词遮成 −∞：这些词的概率为 0，损失有限，前向 KL 等于只在 p > 0 的词上求和（0·log 0 = 0）"
    s, t, y = rand_inputs(dtype=torch.float64)
    t = t[..., :V].clone(); t[..., ::5] = float("-inf")
    loss, m = distillation_loss(s, t, y, alpha=1.0, temperature=2.0, kind=kind)
    assert torch.isfinite(loss), (kind, loss)
    if kind == "forward_kl":
        logp, logq = (t / 2).log_softmax(-1), (s / 2).log_softmax(-1)
        d = torch.where(logp.isfinite(), logp.exp() * (logp - logq), 0.0).sum(-1)
        torch.testing.assert_close(m["kl_loss"], d[y != IGNORE_INDEX].mean())


@pytest.mark.parametrize("temperature", [1.0, 300.0, 3000.0])
def test_chunked_padding_stays_masked_at_high_temperature(temperature):
    "V=96 被补到 128 列：温度再高，补出来的 32 列也不能分到概率"
    s, t, y = rand_inputs(dtype=torch.float64)
    plain, _ = distillation_loss(s, t, y, alpha=1.0, temperature=temperature)
    chunked, _ = _chunked(s, t[..., :V], y, alpha=1.0, temperature=temperature, chunk_size=5)
    torch.testing.assert_close(chunked, plain, rtol=1e-9, atol=1e-12)


def test_teacher_smaller_than_student_vocab_is_refused():
    s, t, y = rand_inputs(Vt=V - 1)
    with pytest.raises(ValueError, match=f"{V - 1} 个输出行"): distillation_loss(s, t, y)


@pytest.mark.parametrize("kind", LOSS_KINDS)
@pytest.mark.parametrize("dtype,chunk", [(torch.float64, 5), (torch.float32, 4), (torch.float32, 1000)])
def test_chunked_equals_naive(kind, dtype, chunk):
    g = torch.Generator().manual_seed(7)
    h = torch.randn(3, 7, 16, generator=g, dtype=dtype); W = torch.randn(V, 16, generator=g, dtype=dtype) * 0.3
    th = torch.randn(3, 7, 12, generator=g, dtype=dtype); tW = torch.randn(V_TEACHER, 12, generator=g, dtype=dtype) * 0.5
    y = torch.randint(0, V, (3, 7), generator=g); y[0, 3:] = IGNORE_INDEX; y[2, 0] = IGNORE_INDEX
    outs = []
    for chunked in (False, True):
        h1, W1 = h.clone().requires_grad_(), W.clone().requires_grad_()
        kw = dict(alpha=0.6, temperature=1.7, kind=kind, beta=0.4, lam=0.15)
        if chunked: loss, m = chunked_distillation_loss(h1, W1, y, th, tW, chunk_size=chunk, **kw)
        else: loss, m = distillation_loss(h1 @ W1.T, th @ tW.T, y, **kw)
        (2.5 * loss).backward()
        outs.append((loss.detach(), m["kl_loss"], m["ce_loss"], h1.grad, W1.grad))
    tol = {} if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    for name, a, b in zip(("loss", "kl", "ce", "grad_h", "grad_W"), *outs):
        torch.testing.assert_close(b, a, msg=f"{kind} {name}", **tol)


def _loss_and_grads(chunked, autocast_dtype=None, compiled=False, kind="forward_kl", upstream=1.0, T=9, V=1001):
    "同一组输入（词表不是 128 的倍数）的 (损失, ∂h, ∂W)；autocast_dtype 给定时在 CPU autocast 下计算"
    g = torch.Generator().manual_seed(11)
    h = torch.randn(4, T, 32, generator=g); W = torch.randn(V, 32, generator=g) * 0.3
    th = torch.randn(4, T, 24, generator=g); tW = torch.randn(V + 29, 24, generator=g) * 0.3
    y = torch.randint(0, V, (4, T), generator=g); y[1, :4] = IGNORE_INDEX
    h1, W1 = h.clone().requires_grad_(), W.clone().requires_grad_()
    with torch.autocast("cpu", dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
        if chunked: loss, _ = chunked_distillation_loss(h1, W1, y, th, tW, kind=kind, chunk_size=T + 1, compiled=compiled)
        else: loss, _ = distillation_loss(h1 @ W1.T, th @ tW.T, y, kind=kind)
    (upstream * loss).backward()
    return loss.detach().float(), h1.grad, W1.grad


def _rel_err(a, b): return float((a.double() - b.double()).norm() / b.double().norm())


def test_chunked_under_bf16_autocast_is_as_accurate_as_naive():
    "autocast 下 LM head 用 bf16 乘：分块路径相对 float32 的误差与朴素路径（nn.Linear 在 autocast 下）同一量级"
    exact = _loss_and_grads(False)
    naive, chunked = _loss_and_grads(False, torch.bfloat16), _loss_and_grads(True, torch.bfloat16)
    for name, e, a, b in zip(("loss", "grad_h", "grad_W"), exact, naive, chunked):
        assert _rel_err(b, e) < max(3 * _rel_err(a, e), 1e-3), name
        assert _rel_err(b, e) < 2e-2, name


def test_chunked_fp16_gradients_do_not_underflow():
    "fp16 autocast：逐块梯度先不除以 N（这里 N≈1000、V=8191，g/N 大多小于 fp16 能表示的最小数），累加完再除"
    exact = _loss_and_grads(False, T=256, V=8191)
    chunked = _loss_and_grads(True, torch.float16, T=256, V=8191)
    for name, e, b in zip(("grad_h", "grad_W"), exact[1:], chunked[1:]):
        assert _rel_err(b, e) < 1e-3, name                    # 先除以 N 再转 fp16 时误差约 3e-3


@pytest.mark.parametrize("kind", ["forward_kl", "jsd"])
def test_compiled_chunk_loss_equals_eager(kind):
    "compiled=True（torch.compile 融合逐块的损失与梯度）与不编译的结果一致"
    eager, compiled = _loss_and_grads(True, kind=kind), _loss_and_grads(True, compiled=True, kind=kind)
    for name, a, b in zip(("loss", "grad_h", "grad_W"), eager, compiled):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6, msg=name)


def test_triton_kernel_matches_torch_under_the_interpreter():
    "5.3 节的 Triton kernel（前向 KL + CE）在 Triton 解释器里跑 CPU 张量，损失与梯度 == `_chunk_loss_grad`"
    import subprocess, sys
    script = os.path.join(os.path.dirname(__file__), "triton_interpret_check.py")
    r = subprocess.run([sys.executable, script], env={**os.environ, "TRITON_INTERPRET": "1"},
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout[-2000:] + r.stderr[-4000:]


def test_fused_path_picks_triton_only_where_it_applies():
    "Triton kernel 只用于 GPU 上的前向 KL 和纯 CE；其余散度、CPU 上用 torch.compile 的实现"
    from distill_edu.distill import _forward_kl_ce_triton, _fused_chunk_loss_grad
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert _fused_chunk_loss_grad("forward_kl", 0.5, cuda) is _forward_kl_ce_triton
    assert _fused_chunk_loss_grad("jsd", 0.0, cuda) is _forward_kl_ce_triton        # α=0：纯 CE，与散度无关
    assert _fused_chunk_loss_grad("jsd", 0.5, cuda) is not _forward_kl_ce_triton
    assert _fused_chunk_loss_grad("forward_kl", 0.5, cpu) is not _forward_kl_ce_triton
    with pytest.raises(ValueError, match="reverse_kl"):
        _forward_kl_ce_triton(torch.zeros(2, 4), torch.zeros(2, 4), torch.zeros(2, dtype=torch.long), 0.5, 2.0,
                              "reverse_kl", 0.5, 0.1, True, 4)


def test_chunked_alpha_zero_needs_no_teacher_and_is_ce():
    g = torch.Generator().manual_seed(2)
    h, W = torch.randn(2, 5, 8, generator=g), torch.randn(V, 8, generator=g)
    y = torch.randint(0, V, (2, 5), generator=g)
    loss, m = chunked_distillation_loss(h, W, y, alpha=0.0, chunk_size=3)
    torch.testing.assert_close(loss, F.cross_entropy((h @ W.T).reshape(-1, V), y.reshape(-1)))
    assert m["kl_loss"].item() == 0.0
    with pytest.raises(ValueError, match="alpha=0.5"): chunked_distillation_loss(h, W, y, alpha=0.5)


# ---------------- teacher ----------------

def test_load_teacher_from_local_dir_is_frozen(teacher_dir):
    teacher = load_teacher_model(teacher_dir, device="cpu")
    assert not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    assert next(teacher.parameters()).dtype == torch.float32          # CPU → float32
    assert teacher.lm_head.weight.shape[0] == V_TEACHER
    check_vocab(teacher, V)
    with pytest.raises(ValueError, match=f"{V_TEACHER} 个输出行"): check_vocab(teacher, V_TEACHER + 1)
    with pytest.raises(ValueError, match=f"{V_TEACHER} 个输出行"): load_teacher_model(teacher_dir, student_vocab=200)
    assert next(load_teacher_model(teacher_dir, dtype="bf16").parameters()).dtype == torch.bfloat16


def test_load_teacher_missing_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"): load_teacher_model(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="a/b/nope"): load_teacher_model("a/b/nope")   # 两个斜杠：不是 hub 名字
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="weights.bin"): load_teacher_model(str(tmp_path / "weights.bin"))
    with pytest.raises(ValueError, match="fp8"): load_teacher_model(str(tmp_path), dtype="fp8")


def test_fp16_overflow_falls_back_to_fp32(tmp_path):
    path = save_hf_teacher(str(tmp_path / "big"), big_weight=1e6)   # 1e6 超出 fp16 范围 → Inf
    with pytest.warns(UserWarning, match="float32"):
        teacher = load_teacher_model(path, dtype=torch.float16)
    assert next(teacher.parameters()).dtype == torch.float32
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


# ---------------- trainer ----------------

def make_trainer(tmp_path, teacher=None, student_seed=0, loader_seed=0, **kw):
    c = cfg(tmp_path, **kw)
    return DistillationTrainer(tiny_student(student_seed), teacher, markov_loader(seed=loader_seed),
                               markov_loader(n=16, shuffle=False, seed=99), c, device="cpu", progress=False)


def test_alpha_positive_without_teacher_is_refused(tmp_path):
    with pytest.raises(ValueError, match="alpha=0.5"): make_trainer(tmp_path, teacher=None, alpha=0.5)


def test_loss_falls_and_teacher_stays_frozen(tmp_path, teacher_dir):
    teacher = load_teacher_model(teacher_dir)
    before = params_of(teacher)
    tr = make_trainer(tmp_path, teacher, max_steps=10, log_interval=1, eval_interval=10)
    first = tr.evaluate()
    assert set(first) == {"val_loss", "val_ppl"} and math.isclose(first["val_ppl"], math.exp(first["val_loss"]))
    hist = tr.train()
    assert len(hist["train_loss"]) == 10 and hist["step"] == list(range(1, 11))
    assert hist["ce_loss"][-1] < hist["ce_loss"][0] - 0.3, hist["ce_loss"]
    assert hist["val_loss"][-1] < first["val_loss"]
    assert all(torch.equal(before[k], v) for k, v in params_of(teacher).items()), "教师参数被改动了"
    assert all(v > 0 for v in hist["kl_loss"])
    assert os.path.isfile(tr.checkpoint_path)


def test_ce_baseline_without_teacher(tmp_path):
    tr = make_trainer(tmp_path, None, alpha=0.0, max_steps=10, log_interval=1)
    hist = tr.train()
    assert all(k == 0.0 for k in hist["kl_loss"])
    assert hist["train_loss"] == hist["ce_loss"]
    assert hist["train_loss"][-1] < hist["train_loss"][0] - 0.3


def test_naive_and_chunked_trainers_agree(tmp_path, teacher_dir):
    teacher = load_teacher_model(teacher_dir)
    states = []
    for chunk in (0, 7):
        tr = make_trainer(tmp_path / f"c{chunk}", teacher, max_steps=3, loss_chunk_size=chunk, loss_kind="jsd")
        tr.train()
        states.append(params_of(tr.student))
    assert_same_training(states[0], states[1], what="分块 vs 朴素")


def test_checkpoint_round_trip(tmp_path, teacher_dir):
    teacher = load_teacher_model(teacher_dir)
    tr = make_trainer(tmp_path, teacher, max_steps=4)
    tr.train()
    path = tr.save_checkpoint()
    tr2 = make_trainer(tmp_path, teacher, student_seed=5, max_steps=4)
    ckpt = tr2.load_checkpoint(path)
    assert tr2.step == 4 and ckpt["step"] == 4 and tr2.history == tr.history
    for k, v in params_of(tr.student).items(): assert torch.equal(tr2.student.state_dict()[k], v)
    assert tr2.optimizer.state_dict()["state"].keys() == tr.optimizer.state_dict()["state"].keys()
    assert tr2.scheduler.last_epoch == 4


def test_exact_resume(tmp_path, teacher_dir):
    "N 步一口气 == N/2 步 + 存盘 + 全新训练器读盘 + N/2 步；梯度累积 2，跨越 epoch 边界"
    teacher = load_teacher_model(teacher_dir)
    N = 8                                                    # 48 个样本 / batch 4 = 12 个 batch，每步 2 个 → 6 步一个 epoch
    kw = dict(max_steps=N, grad_accum_steps=2, eval_interval=3, loss_kind="reverse_kl")
    straight = make_trainer(tmp_path / "a", teacher, **kw)
    straight.train()
    first = make_trainer(tmp_path / "b", teacher, **kw)
    first.train(num_steps=N // 2)
    path = first.save_checkpoint()
    resumed = make_trainer(tmp_path / "c", teacher, student_seed=123, loader_seed=0, **kw)
    resumed.load_checkpoint(path)
    resumed.train()
    assert resumed.step == straight.step == N and resumed.epoch == straight.epoch >= 1
    for k, v in params_of(straight.student).items():
        assert torch.equal(resumed.student.state_dict()[k], v), f"续训后参数 {k} 与一口气训练不同"
    evals = lambda h: dict(zip(h["val_step"], h["val_loss"]))
    assert evals(resumed.history).items() >= evals(straight.history).items()   # 续训的历史多一条中途（第 N/2 步）评估


class FlakyStudent(StudentModel):
    "在指定的调用次数上输出 NaN 隐藏状态，模拟数值爆炸"
    bad_calls = set()
    def __init__(self, *a, **k):
        super().__init__(*a, **k); self.calls = 0
    def hidden_states(self, input_ids, *a, **k):
        h = super().hidden_states(input_ids, *a, **k)
        self.calls += 1
        return h * float("nan") if self.calls in self.bad_calls else h


def flaky_trainer(tmp_path, bad_calls, **kw):
    torch.manual_seed(0)
    student = FlakyStudent(tiny_student().config)
    student.bad_calls = set(bad_calls)
    return DistillationTrainer(student, None, markov_loader(), None, cfg(tmp_path, alpha=0.0, **kw),
                               progress=False)


def test_nan_step_is_skipped(tmp_path):
    tr = flaky_trainer(tmp_path, {3}, max_steps=5, log_interval=1)
    tr.train(num_steps=2)
    before = params_of(tr.student)
    tr.train(num_steps=1)                                     # 第 3 步：NaN
    assert tr.history["skipped_steps"] == [3]
    assert all(torch.equal(before[k], v) for k, v in params_of(tr.student).items()), "NaN 步不应更新参数"
    tr.train()
    after = params_of(tr.student)
    assert tr.step == 5 and all(torch.isfinite(v).all() for v in after.values())
    assert any(not torch.equal(before[k], after[k]) for k in after)


def test_reading_losses_back_late_changes_nothing(tmp_path):
    "损失攒到打印日志时才读回 CPU：逐步读回（log_interval=1）与攒 10 步一起读回，跳过的步和最终参数完全相同"
    runs = []
    for interval in (1, 10):
        tr = flaky_trainer(tmp_path / str(interval), {3, 7}, max_steps=12, log_interval=interval)
        tr.train()
        runs.append((tr.history["skipped_steps"], params_of(tr.student)))
    (skipped_a, params_a), (skipped_b, params_b) = runs
    assert skipped_a == skipped_b == [3, 7]
    assert all(torch.equal(params_a[k], params_b[k]) for k in params_a)


def test_repeated_nan_stops_training(tmp_path):
    tr = flaky_trainer(tmp_path, set(range(1, 100)), max_steps=20, max_bad_steps=3)
    with pytest.raises(RuntimeError, match="连续 3 步"): tr.train()
    assert tr.history["skipped_steps"] == [1, 2, 3] and tr.history["train_loss"] == []


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("first_bad, max_bad", [(4, 3), (1, 1), (7, 5)])
def test_bad_steps_stop_promptly_and_name_the_right_steps(tmp_path, device, first_bad, max_bad):
    "日志间隔很长（100 步才读回一次损失）时，连续坏步也要在几步之内停下，错误点名的是真正的那几步"
    torch.manual_seed(0)
    student = FlakyStudent(tiny_student().config)
    student.bad_calls = set(range(first_bad, 1000))
    tr = DistillationTrainer(student, None, markov_loader(), None, cfg(tmp_path, alpha=0.0, max_steps=60, log_interval=100,
                             save_interval=100, max_bad_steps=max_bad, precision="fp32", compile=False),
                             device=device, progress=False)
    last = first_bad + max_bad - 1
    with pytest.raises(TrainingDiverged, match=f"连续 {max_bad} 步（第 {first_bad}–{last} 步）"): tr.train()
    assert tr.history["skipped_steps"] == list(range(first_bad, last + 1))
    assert last <= tr.step <= last + 4, f"第 {last} 步就该停，却走到了第 {tr.step} 步"


class _EvalNaNStudent(StudentModel):
    "训练时正常，评估（eval 模式）时输出 NaN"
    def hidden_states(self, input_ids, *a, **k):
        h = super().hidden_states(input_ids, *a, **k)
        return h if self.training else h * float("nan")


def test_nan_validation_loss_is_reported(tmp_path):
    torch.manual_seed(0)
    tr = DistillationTrainer(_EvalNaNStudent(tiny_student().config), None, markov_loader(), markov_loader(n=8, shuffle=False),
                             cfg(tmp_path, alpha=0.0, max_steps=2, eval_interval=1), progress=False)
    with pytest.warns(UserWarning, match="第 1 步的验证损失是 nan"): tr.train()
    assert tr.best_val_loss == float("inf")


def _one_batch_loader(batch):
    return DataLoader([batch], batch_size=None)


_ids = torch.randint(0, V, (2, SEQ))
@pytest.mark.parametrize("batch, match", [
    ({"input_ids": _ids.masked_fill(_ids == _ids[0, 0], 100), "labels": _ids}, r"batch 的 input_ids 中有超出词表 \[0, 96\) 的 token 编号 100"),
    ({"input_ids": _ids.masked_fill(_ids == _ids[0, 0], -1), "labels": _ids}, "input_ids 中有超出词表 .* 编号 -1"),
    ({"input_ids": _ids, "labels": _ids.masked_fill(_ids == _ids[0, 0], 100)}, "batch 的 labels 中有超出词表"),
    ({"input_ids": _ids[:, :0], "labels": _ids[:, :0]}, r"input_ids 是空的（形状 \(2, 0\)）"),
    ({"input_ids": _ids.tolist(), "labels": _ids.tolist()}, "input_ids 必须是 torch 张量"),
    ({"input_ids": _ids, "labels": _ids[:, :-1]}, r"labels 与它同形状，收到 \(2, 16\) 与 \(2, 15\)"),
    ({"input_ids": _ids[0], "labels": _ids[0]}, "二维张量"),
    ({"ids": _ids, "labels": _ids}, r"收到 \['ids', 'labels'\]"),
])
def test_bad_batches_are_named(tmp_path, batch, match):
    tr = DistillationTrainer(tiny_student(), None, _one_batch_loader(batch), None,
                             cfg(tmp_path, alpha=0.0, batch_size=2, max_steps=1, warmup_steps=1), progress=False)
    with pytest.raises(ValueError, match=match): tr.train()


@pytest.mark.parametrize("change, match", [
    (dict(checkpoint_dir="FILE"), "checkpoint_dir=.* 已经是一个文件"),
    (dict(checkpoint_dir="FILE/sub"), "无法创建 checkpoint_dir"),
    (dict(max_steps=0, num_epochs=1, warmup_steps=100), "warmup_steps=100 超过了总步数 12"),
])
def test_trainer_checks_before_the_first_step(tmp_path, change, match):
    "输出目录、预热步数在构造训练器时就检查，而不是训练完第一次存盘时"
    (tmp_path / "FILE").write_text("not a directory")
    change = {k: str(tmp_path / v) if k == "checkpoint_dir" else v for k, v in change.items()}
    with pytest.raises(ValueError, match=match): make_trainer(tmp_path, None, alpha=0.0, **change)


@pytest.mark.skipif(torch.cuda.is_available(), reason="只在没有 GPU 的机器上检查")
def test_trainer_refuses_cuda_without_gpu(tmp_path):
    with pytest.raises(ValueError, match="设备 'cuda' 不可用"):
        DistillationTrainer(tiny_student(), None, markov_loader(), None, cfg(tmp_path, alpha=0.0), device="cuda")


def test_bad_checkpoints(tmp_path, teacher_dir):
    teacher = load_teacher_model(teacher_dir)
    tr = make_trainer(tmp_path, teacher, max_steps=2)
    tr.train()
    path = tr.checkpoint_path
    with pytest.raises(FileNotFoundError, match="missing.pt"): tr.load_checkpoint(str(tmp_path / "missing.pt"))
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(open(path, "rb").read()[:2000])
    with pytest.raises(ValueError, match="损坏或被截断"): tr.load_checkpoint(str(trunc))
    other = DistillationTrainer(tiny_student(hidden=64), teacher, markov_loader(), None, cfg(tmp_path),
                                progress=False)
    with pytest.raises(ValueError, match="hidden_size"): other.load_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)
    for key in ("model_config", "optimizer"):
        torch.save({k: v for k, v in ckpt.items() if k != key}, tmp_path / f"no_{key}.pt")
        with pytest.raises(ValueError, match=f"不完整：缺少 \\['{key}'\\]"): tr.load_checkpoint(str(tmp_path / f"no_{key}.pt"))


def test_failed_save_keeps_last_good_checkpoint(tmp_path):
    tr = make_trainer(tmp_path, None, alpha=0.0, max_steps=2)
    tr.train()
    good = open(tr.checkpoint_path, "rb").read()
    tr.history["oops"] = [lambda: 0]                        # 无法序列化 → 保存失败
    with pytest.raises(Exception): tr.save_checkpoint()
    assert open(tr.checkpoint_path, "rb").read() == good
    assert not os.path.exists(tr.checkpoint_path + ".tmp")


def test_atomic_save_failure_mid_write(tmp_path, monkeypatch):
    path = str(tmp_path / "x.pt")
    atomic_save({"a": torch.ones(3)}, path)
    def boom(obj, f):
        open(f, "wb").write(b"partial"); raise OSError("disk full")
    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError, match="disk full"): atomic_save({"a": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(3))


def test_lr_schedule():
    lrs = [lr_multiplier(s, 5, 50, 0.1) for s in range(60)]
    assert lrs[0] == pytest.approx(0.2) and lrs[4] == 1.0
    assert lrs[49] == pytest.approx(0.1, abs=2e-3) and lrs[59] == pytest.approx(0.1)


# ---------------- DDP（CPU 上的 gloo，2 个进程） ----------------

def _ddp_config(tmp, batch, accum=1):
    return cfg(tmp, batch_size=batch, grad_accum_steps=accum, max_steps=4, eval_interval=4, log_interval=2,
               loss_kind="skew_kl")


def _ddp_worker(rank, world, init_file, teacher_dir, out_path, accum):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        teacher = load_teacher_model(teacher_dir)
        student = tiny_student(rank)                                    # 各 rank 初值不同：训练器要先广播 rank 0 的参数
        tr = DistillationTrainer(student, teacher, markov_loader(batch=2 // accum, shuffle=False),
                                 markov_loader(n=16, shuffle=False, seed=99),
                                 _ddp_config(os.path.dirname(out_path), 2 // accum, accum), progress=False)
        hist = tr.train()
        torch.save({"params": params_of(tr.student), "val_loss": hist["val_loss"]}, f"{out_path}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("accum", [1, 2])
def test_ddp_two_processes_equal_single_process(tmp_path, teacher_dir, accum):
    """2 个 gloo 进程 × 每卡 batch 2 == 单进程 batch 4（同一个全局 batch），参数与验证损失一致；
    accum=2 时每卡 batch 1 × 累积 2 步，全局 batch 仍是 4。两个 rank 结束时参数完全相同"""
    import torch.multiprocessing as mp
    from pathlib import Path
    out = str(tmp_path / "ddp.pt")
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), teacher_dir, out, accum), nprocs=2, join=True)
    ranks = [torch.load(f"{out}.{r}", weights_only=True) for r in range(2)]
    for k, v in ranks[0]["params"].items(): assert torch.equal(v, ranks[1]["params"][k]), f"两个 rank 的 {k} 不同"
    single = DistillationTrainer(tiny_student(0), load_teacher_model(teacher_dir), markov_loader(batch=4, shuffle=False),
                                 markov_loader(n=16, shuffle=False, seed=99), _ddp_config(Path(tmp_path) / "single", 4),
                                 progress=False)
    hist = single.train()
    assert_same_training(params_of(single.student), ranks[0]["params"], what=f"2 进程（累积 {accum}）vs 单进程")
    assert ranks[0]["val_loss"] == pytest.approx(hist["val_loss"], rel=1e-5)
    assert any(not torch.equal(v, tiny_student(0).state_dict()[k]) for k, v in ranks[0]["params"].items())


def test_mixed_precision_paths_on_cpu(tmp_path, teacher_dir):
    "autocast bf16 与 fp16 + GradScaler 的代码路径（CPU 上也能跑）：损失与 float32 接近，fp16 的 scaler 状态进检查点"
    teacher = load_teacher_model(teacher_dir)
    runs = {}
    for prec in ("fp32", "bf16", "fp16"):
        tr = make_trainer(tmp_path / prec, teacher, max_steps=3, precision=prec, log_interval=1)
        runs[prec] = (tr, tr.train())
        assert tr.precision == prec and tr.scaler.is_enabled() == (prec == "fp16")
    for prec in ("bf16", "fp16"):
        assert runs[prec][1]["train_loss"] == pytest.approx(runs["fp32"][1]["train_loss"], rel=1e-2)
    ckpt = torch.load(runs["fp16"][0].checkpoint_path, weights_only=True)
    assert ckpt["scaler"]["scale"] > 0
    resumed = make_trainer(tmp_path / "fp16b", teacher, max_steps=3, precision="fp16", log_interval=1)
    resumed.load_checkpoint(runs["fp16"][0].checkpoint_path)
    assert resumed.scaler.get_scale() == runs["fp16"][0].scaler.get_scale()


def test_mfu_is_per_gpu_when_data_parallel(tmp_path):
    "日志里的 tokens/s 是所有卡的总和；MFU 要除以所有卡的峰值之和，否则 2 卡时报出的 MFU 翻倍"
    tr = make_trainer(tmp_path, alpha=0.0)
    tr.peak_flops = 1e12                                                # CPU 上查不到峰值，这里给一个
    acc = {"loss": 1.0, "kl": 0.0, "ce": 1.0, "lr": 1e-3, "grad_norm": 1.0, "tokens": 1000}
    for world in (1, 2):
        tr.world = world
        tr._log(acc, n=1, seconds=1.0)
        assert tr.history["mfu"][-1] == pytest.approx(tr.flops_per_token * 1000 / (1e12 * world))


def _save_until_killed(trainer, report_fd):
    "子进程：不停地存检查点，每存好一个就把步数写进管道；永不正常返回"
    try:
        while True:
            trainer.step += 1
            trainer.save_checkpoint()
            os.write(report_fd, f"{trainer.step}\n".encode())
    finally: os._exit(1)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="需要 os.fork（Linux/macOS）")
def test_kill_9_during_saves_never_leaves_an_unloadable_checkpoint(tmp_path):
    "fork 出的子进程不停地存检查点，随机时刻 kill -9：latest.pt 总是完整可读（原子改名），是最后存好的那一步（或正在改名的下一步）"
    import random, signal, time
    tr = DistillationTrainer(tiny_student(), None, markov_loader(), None, cfg(tmp_path, alpha=0.0), progress=False)
    rng = random.Random(0)
    for _ in range(12):                                       # fork 不必重新 import torch：一轮只要零点几秒
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0: os.close(read_fd); _save_until_killed(tr, write_fd)
        os.close(write_fd)
        with os.fdopen(read_fd) as reports:
            assert reports.readline(), "子进程没有存下第一个检查点"
            time.sleep(rng.uniform(0.0, 0.2))                 # 每秒上百次保存：落点几乎总在写文件或改名当中
            os.kill(pid, signal.SIGKILL); os.waitpid(pid, 0)
            last_reported = max([tr.step + 1] + [int(line) for line in reports.read().split()])
        ckpt = torch.load(tr.checkpoint_path, weights_only=True)
        assert ckpt["format"] == "distill_edu/1" and ckpt["step"] in (last_reported, last_reported + 1)
        StudentModel(ModelConfig.from_dict(ckpt["model_config"])).load_state_dict(ckpt["model"])   # 权重完整
        tr.step = ckpt["step"]                                # 下一个子进程从这里接着存
