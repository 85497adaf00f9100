"模型结构测试（原始任务 T007）与 Hugging Face Qwen2 的等价性"
import pytest
import torch
from transformers import Qwen2ForCausalLM
from distill_edu.config import ModelConfig
from distill_edu.rmsnorm import RMSNorm
from distill_edu.rope import RotaryEmbedding, apply_rotary_pos_emb
from distill_edu.attention import GQAAttention
from distill_edu.ffn import SwiGLUFFN
from distill_edu.model import TransformerBlock, StudentModel, from_hf_qwen2, to_hf_qwen2

TINY = ModelConfig(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=96, vocab_size=128)


def test_rmsnorm_shape_and_unit_mean_square():
    x = torch.randn(3, 5, 64) * 7 + 2
    y = RMSNorm(64)(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y.pow(2).mean(-1), torch.ones(3, 5), atol=1e-4, rtol=0)


def test_rope_keeps_shape_and_depends_on_position():
    rope = RotaryEmbedding(16, theta=1e6)
    q = torch.randn(1, 4, 3, 16).expand(1, 4, 3, 16).clone()
    q[:, :, 1] = q[:, :, 0]; q[:, :, 2] = q[:, :, 0]           # 三个位置放同一个向量
    cos, sin = rope(torch.arange(3)[None])
    q_rot, k_rot = apply_rotary_pos_emb(q, q[:, :2], cos, sin)
    assert q_rot.shape == q.shape and k_rot.shape == (1, 2, 3, 16)
    assert not torch.allclose(q_rot[:, :, 1], q_rot[:, :, 2])   # 不同位置编码不同
    torch.testing.assert_close(q_rot[:, :, 0], q[:, :, 0])      # 位置 0 不旋转


def test_attention_and_ffn_shapes():
    rope = RotaryEmbedding(TINY.head_dim, TINY.rope_theta)
    x = torch.randn(2, 7, 64)
    cos, sin = rope(torch.arange(7).expand(2, 7))
    assert GQAAttention(TINY)(x, cos, sin).shape == x.shape
    assert SwiGLUFFN(TINY)(x).shape == x.shape


def test_block_residual():
    block = TransformerBlock(TINY)
    rope = RotaryEmbedding(TINY.head_dim, TINY.rope_theta)
    x = torch.randn(2, 7, 64)
    cos, sin = rope(torch.arange(7).expand(2, 7))
    with torch.no_grad():
        block.attention.o_proj.weight.zero_(); block.ffn.down_proj.weight.zero_()
    torch.testing.assert_close(block(x, cos, sin), x)             # 子层为 0 时残差直通
    with torch.no_grad(): block.ffn.down_proj.weight.normal_(0, 0.1)
    y = block(x, cos, sin)
    assert y.shape == x.shape and not torch.allclose(y, x)


def test_student_logits_shape_and_tied_weights():
    model = StudentModel(TINY)
    assert model(torch.randint(0, 128, (3, 9))).shape == (3, 9, 128)
    assert model.lm_head.weight is model.embedding.weight
    untied = StudentModel(ModelConfig(**{**TINY.to_dict(), "tie_word_embeddings": False}))
    assert untied.lm_head.weight is not untied.embedding.weight
    assert untied.count_parameters() == model.count_parameters() + 128 * 64


def test_default_student_has_about_123m_parameters():
    with torch.device("meta"):
        n = StudentModel(ModelConfig()).count_parameters()
    assert abs(n - 123e6) / 123e6 < 0.05, n


def test_causality():
    model = StudentModel(TINY).eval()
    ids = torch.randint(0, 128, (1, 10))
    ids2 = ids.clone(); ids2[0, 6] = (ids[0, 6] + 1) % 128
    a, b = model(ids), model(ids2)
    torch.testing.assert_close(a[:, :6], b[:, :6])
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def random_hf(cfg: ModelConfig, seed=0):
    torch.manual_seed(seed)
    hf = Qwen2ForCausalLM(cfg.to_hf_config()).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.normal_(1.0 if "norm" in name else 0.0, 0.1 if "norm" in name else 0.05)
    return hf


HF_CONFIGS = [
    dict(tie_word_embeddings=True),
    dict(tie_word_embeddings=False),
    dict(hidden_size=56, num_heads=7, num_kv_heads=1, rope_theta=1e4),        # 奇数个头，MQA
    dict(hidden_size=96, num_heads=6, num_kv_heads=6, rope_theta=5e5, num_layers=3),  # MHA
]


@pytest.mark.parametrize("overrides", HF_CONFIGS)
def test_hf_round_trip_logits_match(overrides):
    cfg = ModelConfig(**{**TINY.to_dict(), **overrides})
    hf = random_hf(cfg)
    ours = from_hf_qwen2(hf).eval()
    assert ours.config == cfg
    ids = torch.randint(0, cfg.vocab_size, (2, 11))
    with torch.no_grad():
        ref = hf(ids).logits
        torch.testing.assert_close(ours(ids), ref, rtol=1e-5, atol=1e-5)
        back = to_hf_qwen2(ours)
        torch.testing.assert_close(back(ids).logits, ref, rtol=1e-5, atol=1e-5)
    for k, v in hf.state_dict().items():
        if "rotary" not in k: torch.testing.assert_close(back.state_dict()[k], v, rtol=0, atol=0)


def test_left_padding_matches_hf_and_unpadded():
    cfg = TINY
    hf = random_hf(cfg, seed=1)
    ours = from_hf_qwen2(hf).eval()
    ids = torch.randint(0, 128, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.long); mask[0, :3] = 0          # 第 0 条左侧填充 3 个
    with torch.no_grad():
        got = ours(ids, attention_mask=mask)
        ref = hf(ids, attention_mask=mask).logits
        alone = ours(ids[:1, 3:])
    torch.testing.assert_close(got[0, 3:], ref[0, 3:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1], ref[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[0, 3:], alone[0], rtol=1e-5, atol=1e-5)   # 填充不影响真实 token
    assert torch.isfinite(got).all()


def test_bf16_close_to_fp32():
    hf = random_hf(TINY)
    ours = from_hf_qwen2(hf).eval()
    ours16 = from_hf_qwen2(hf.to(torch.bfloat16)).eval()
    assert ours16.lm_head.weight.dtype == torch.bfloat16
    ids = torch.randint(0, 128, (2, 8))
    with torch.no_grad():
        a, b = ours(ids), ours16(ids).float()
    assert (a - b).norm() / a.norm() < 2e-2


def test_conversion_errors_name_the_problem():
    hf = random_hf(TINY)
    wrong = ModelConfig(**{**TINY.to_dict(), "num_layers": 3})
    with pytest.raises(ValueError, match="layers.2"): from_hf_qwen2(hf.state_dict(), wrong)
    wider = ModelConfig(**{**TINY.to_dict(), "intermediate_size": 128})
    with pytest.raises(ValueError, match="gate_proj.weight"): from_hf_qwen2(hf.state_dict(), wider)
    with pytest.raises(ValueError, match="config"): from_hf_qwen2(hf.state_dict())


_long = lambda *shape: torch.zeros(*shape, dtype=torch.long)
@pytest.mark.parametrize("input_ids, kwargs, match", [
    (_long(1, TINY.max_seq_len + 1), {}, "max_seq_len"),
    (_long(5), {}, "二维"),
    (_long(1, 4), {"attention_mask": torch.ones(1, 5)}, "attention_mask"),
    (torch.tensor([[5, 128]]), {}, r"input_ids 中有超出词表 \[0, 128\) 的 token 编号 128"),
    (torch.tensor([[5, -1]]), {}, "token 编号 -1"),
    (_long(1, 0), {}, r"input_ids 是空的（形状 \(1, 0\)）"),
    ([[5, 6]], {}, "input_ids 必须是 torch 张量，收到 list"),
    (torch.tensor([[5.0, 6.0]]), {}, "必须是整数张量，收到 dtype=torch.float32"),
])
def test_bad_inputs_are_named(input_ids, kwargs, match):
    "坏输入点名报错，而不是嵌入层或 reshape 里的一句 “index out of range in self”"
    with pytest.raises(ValueError, match=match): StudentModel(TINY)(input_ids, **kwargs)


def test_compiled_model_skips_only_the_range_check():
    "torch.compile 下不读回 min/max：fullgraph=True 时一次图中断（int(ids.max())）就会报错；类型错误照样报"
    model = StudentModel(TINY).eval()
    compiled = torch.compile(model.hidden_states, backend="eager", fullgraph=True)   # 只追踪，不生成代码：快
    ids = torch.randint(0, 128, (2, 6))
    torch.testing.assert_close(compiled(ids), model.hidden_states(ids))
    with pytest.raises(Exception, match="整数张量"): compiled(ids.float())
