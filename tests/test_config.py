"配置的默认值与校验（原始任务 T006）"
import pytest
from transformers import Qwen2Config
from distill_edu.config import ModelConfig, TrainingConfig, LOSS_KINDS


def test_model_config_defaults():
    c = ModelConfig()
    assert (c.hidden_size, c.num_layers, c.num_heads, c.num_kv_heads, c.intermediate_size) == (512, 12, 8, 2, 2048)
    assert (c.vocab_size, c.max_seq_len, c.rope_theta, c.norm_eps, c.dropout) == (151665, 512, 1e6, 1e-6, 0.0)
    assert c.head_dim == 64 and c.tie_word_embeddings


@pytest.mark.parametrize("bad, match", [
    (dict(hidden_size=500), "hidden_size=500"),
    (dict(num_heads=8, num_kv_heads=3), "num_kv_heads=3"),
    (dict(num_layers=0), "num_layers"),
    (dict(intermediate_size=-4), "intermediate_size"),
    (dict(vocab_size=True), "vocab_size"),
    (dict(hidden_size=24, num_heads=8), "head_dim=3"),
    (dict(norm_eps=0.0), "norm_eps"),
    (dict(rope_theta=-1.0), "rope_theta"),
    (dict(dropout=1.0), "dropout"),
])
def test_model_config_rejects(bad, match):
    with pytest.raises(ValueError, match=match): ModelConfig(**bad)


def test_training_config_defaults():
    t = TrainingConfig()
    assert (t.batch_size, t.learning_rate, t.weight_decay, t.warmup_steps, t.num_epochs) == (8, 3e-4, 0.01, 500, 3)
    assert (t.gradient_clip, t.alpha, t.temperature) == (1.0, 0.5, 2.0)
    assert (t.log_interval, t.eval_interval, t.save_interval) == (50, 500, 1000)
    assert t.loss_kind in LOSS_KINDS


@pytest.mark.parametrize("bad, match", [
    (dict(alpha=-0.1), "alpha"), (dict(alpha=1.01), "alpha"), (dict(temperature=0.0), "temperature"),
    (dict(loss_kind="kl"), "kl"), (dict(batch_size=0), "batch_size"), (dict(learning_rate=0), "learning_rate"),
    (dict(precision="fp8"), "fp8"), (dict(grad_accum_steps=0), "grad_accum_steps"), (dict(jsd_beta=2), "jsd_beta"),
])
def test_training_config_rejects(bad, match):
    with pytest.raises(ValueError, match=match): TrainingConfig(**bad)


@pytest.mark.parametrize("cls", [ModelConfig, TrainingConfig])
def test_dict_round_trip_and_unknown_keys(cls):
    c = cls()
    assert cls.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="typo_field"): cls.from_dict({**c.to_dict(), "typo_field": 1})


def test_hf_config_round_trip():
    c = ModelConfig(hidden_size=96, num_layers=3, num_heads=6, num_kv_heads=3, rope_theta=5e4, tie_word_embeddings=False)
    assert ModelConfig.from_hf_config(c.to_hf_config()) == c


def test_hf_config_of_qwen25_05b():
    hf = Qwen2Config(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                     intermediate_size=4864, vocab_size=151936, max_position_embeddings=32768, rope_theta=1e6,
                     rms_norm_eps=1e-6, tie_word_embeddings=True)
    c = ModelConfig.from_hf_config(hf)
    assert (c.hidden_size, c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim, c.vocab_size) == (896, 24, 14, 2, 64, 151936)


def test_hf_config_unsupported_features():
    with pytest.raises(ValueError, match="hidden_act"): ModelConfig.from_hf_config(Qwen2Config(hidden_act="gelu"))
    with pytest.raises(ValueError, match="sliding"):
        ModelConfig.from_hf_config(Qwen2Config(use_sliding_window=True, sliding_window=128))
