"tests for distill_edu.chunked: chunked loss == naive loss, padding, autocast, fp16, compile, Triton kernel"
import pytest
import torch
import torch.nn.functional as F
from distill_edu.config import LOSS_KINDS
from distill_edu.losses import IGNORE_INDEX, distillation_loss
from distill_edu.chunked import _forward_kl_ce_triton, _fused_chunk_loss_grad, chunked_distillation_loss
from kd_helpers import V, V_TEACHER, rand_inputs, run_triton_interpreter_check


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


@pytest.mark.parametrize("temperature", [1.0, 300.0, 3000.0])
def test_chunked_padding_stays_masked_at_high_temperature(temperature):
    "V=96 被补到 128 列：温度再高，补出来的 32 列也不能分到概率"
    s, t, y = rand_inputs(dtype=torch.float64)
    plain, _ = distillation_loss(s, t, y, alpha=1.0, temperature=temperature)
    chunked, _ = _chunked(s, t[..., :V], y, alpha=1.0, temperature=temperature, chunk_size=5)
    torch.testing.assert_close(chunked, plain, rtol=1e-9, atol=1e-12)


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
    "07b 第 4.3 节的 Triton kernel（前向 KL + CE）在 Triton 解释器里跑 CPU 张量，损失与梯度 == `_chunk_loss_grad`"
    run_triton_interpreter_check("triton_interpret_check.py")


def test_fused_path_picks_triton_only_where_it_applies():
    "Triton kernel 只用于 GPU 上的前向 KL 和纯 CE；其余散度、CPU 上用 torch.compile 的实现"
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
