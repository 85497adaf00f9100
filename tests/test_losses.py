"tests for distill_edu.losses: divergences, distillation_loss, bad input"
import os
import pytest
import torch
import torch.nn.functional as F
from distill_edu.config import LOSS_KINDS
from distill_edu.losses import IGNORE_INDEX, divergence, distillation_loss
from kd_helpers import V, rand_inputs


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


def test_teacher_smaller_than_student_vocab_is_refused():
    s, t, y = rand_inputs(Vt=V - 1)
    with pytest.raises(ValueError, match=f"{V - 1} 个输出行"): distillation_loss(s, t, y)
