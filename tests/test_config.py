"配置的默认值与校验；整个包共用的检查函数"
import pytest
import torch
from transformers import Qwen2Config
from distill_edu.config import (ModelConfig, TrainingConfig, LOSS_KINDS, check_device, check_number, check_output_dir,
                                check_token_ids, check_warmup)


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
    (dict(rope_theta=float("inf")), "rope_theta 必须是有限的数字"),
    (dict(rope_theta=float("nan")), "rope_theta 必须是有限的数字"),
    (dict(norm_eps="1e-6"), "norm_eps 必须是数字"),
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
    (dict(learning_rate=float("inf")), "learning_rate 必须是有限的数字"),
    (dict(temperature=float("inf")), "temperature 必须是有限的数字"),
    (dict(alpha=float("nan")), "alpha 必须是有限的数字"),
    (dict(gradient_clip=float("inf")), "gradient_clip 必须是有限的数字"),
    (dict(warmup_steps=500, max_steps=100), "warmup_steps=500 超过了总步数 100"),
    (dict(checkpoint_dir=123), "checkpoint_dir 必须是非空的目录路径字符串，收到 123"),
    (dict(checkpoint_dir=""), "checkpoint_dir 必须是非空"),
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


def test_checkpoint_dir_accepts_path(tmp_path):
    assert TrainingConfig(checkpoint_dir=tmp_path / "ckpt").checkpoint_dir == str(tmp_path / "ckpt")


def test_from_dict_needs_a_dict():
    with pytest.raises(ValueError, match="TrainingConfig 需要一个字典，收到 list"): TrainingConfig.from_dict([1, 2])


@pytest.mark.parametrize("fn, match", [
    (lambda p: check_number("x", float("inf")), "x 必须是有限的数字"),
    (lambda p: check_number("x", True), "x 必须是数字"),
    (lambda p: check_number("x", 0, 0, 1, lo_open=True), r"x 必须在 \(0, 1\] 内，收到 0"),
    (lambda p: check_warmup(11, 10), "warmup_steps=11 超过了总步数 10"),
    (lambda p: check_output_dir("checkpoint_dir", p / "a_file"), "已经是一个文件"),
    (lambda p: check_output_dir("checkpoint_dir", p / "a_file" / "sub"), "无法创建 checkpoint_dir"),
    (lambda p: check_output_dir("export_hf", 123), "export_hf 必须是非空的目录路径，收到 123"),
    (lambda p: check_device("gpu0"), "不认识的设备 'gpu0'"),
    (lambda p: check_token_ids("input_ids", torch.tensor([1, 100]), 96), r"超出词表 \[0, 96\) 的 token 编号 100"),
    (lambda p: check_token_ids("input_ids", torch.tensor([-3, 1]), 96), "token 编号 -3"),
    (lambda p: check_token_ids("input_ids", torch.zeros(1, 0, dtype=torch.long), 96), r"input_ids 是空的（形状 \(1, 0\)）"),
    (lambda p: check_token_ids("input_ids", [1, 2, 3], 96), "input_ids 必须是 torch 张量"),
    (lambda p: check_token_ids("labels", torch.ones(3), 96), "labels 必须是整数张量"),
])
def test_shared_checks(tmp_path, fn, match):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(ValueError, match=match): fn(tmp_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="只在没有 GPU 的机器上检查")
def test_check_device_cuda_without_gpu():
    with pytest.raises(ValueError, match="设备 'cuda' 不可用"): check_device("cuda")
