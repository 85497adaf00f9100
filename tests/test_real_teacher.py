"真实的 Qwen2.5 教师：GGUF 文件的检查与加载；有真实检查点时，我们的 StudentModel 与 transformers 逐数一致"
import copy, importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from distill_edu.tokenizer import QWEN_TOKENIZER_SIZE, QWEN_EMBEDDING_ROWS, load_tokenizer
from distill_edu.teacher import load_teacher_model
from distill_edu.generate import load_trained_model
from distill_edu.model import from_hf_qwen2, gguf_to_hf_dir, load_hf_qwen2, read_gguf_metadata

gguf = pytest.importorskip("gguf")

_spec = importlib.util.spec_from_file_location("fetch_teacher", Path(__file__).parent.parent / "tools" / "fetch_teacher.py")
fetch_teacher = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fetch_teacher)
REAL_GGUF = fetch_teacher.DEFAULT_DIR / fetch_teacher.GGUF_NAME
needs_real_gguf = pytest.mark.skipif(not REAL_GGUF.is_file(),
                                     reason=f"没有真实的 Qwen2.5 GGUF（{REAL_GGUF}）：先运行 python tools/fetch_teacher.py")


def write_tiny_gguf(path: Path, arch: str = "qwen2", vocab: int = 10) -> Path:
    "一个合法但极小的 GGUF：只有元数据和一个张量"
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_token_list([f"t{i}" for i in range(vocab)])
    w.add_tensor("token_embd.weight", np.zeros((vocab, 4), dtype=np.float32))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    return path


def test_tiny_gguf_metadata(tmp_path):
    meta = read_gguf_metadata(write_tiny_gguf(tmp_path / "tiny.gguf"))
    assert meta["architecture"] == "qwen2" and meta["vocab_size"] == 10 and meta["num_layers"] == 1


@pytest.mark.parametrize("make, error, match", [
    (lambda p: p.write_text("hello"), ValueError, "不是 GGUF"),
    (lambda p: p.write_bytes(b"GGUF" + bytes(60)), ValueError, "不完整或已损坏"),
    (lambda p: p.write_bytes(write_tiny_gguf(p.with_name("full.gguf")).read_bytes()[:-8]), ValueError, "不完整"),
    (lambda p: write_tiny_gguf(p, arch="llama"), ValueError, "'llama'"),
    (lambda p: None, FileNotFoundError, "找不到 GGUF"),
])
def test_bad_gguf_named_in_error(tmp_path, make, error, match):
    path = tmp_path / "bad.gguf"
    make(path)
    for load in (read_gguf_metadata, load_hf_qwen2, load_teacher_model, load_trained_model):
        if load is load_trained_model and not path.exists(): continue      # 它先报“找不到检查点”
        with pytest.raises(error, match=match) as e: load(path)
        assert "bad.gguf" in str(e.value)


def test_gguf_vocab_checked_before_loading(tmp_path):
    path = write_tiny_gguf(tmp_path / "small_vocab.gguf", vocab=10)
    with pytest.raises(ValueError, match=r"small_vocab\.gguf.*10 个输出行，少于学生词表 20"):
        load_teacher_model(path, student_vocab=20)


def test_missing_gguf_package_names_the_extra(tmp_path, monkeypatch):
    path = write_tiny_gguf(tmp_path / "tiny.gguf")
    monkeypatch.setitem(__import__("sys").modules, "gguf", None)
    with pytest.raises(ImportError, match=r"distill_edu\[gguf\]"): read_gguf_metadata(path)


@pytest.mark.parametrize("source, match", [("a/b/nope", "a/b/nope"), ("./nope", "./nope"), ("~/nope/", "nope")])
def test_not_a_model_source(source, match):
    with pytest.raises(FileNotFoundError, match=match): load_hf_qwen2(source)


def test_directory_without_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"): load_hf_qwen2(tmp_path)


# ---- 真实检查点（约 6 亿参数；CPU 上加载约一分钟）----

@pytest.fixture(scope="module")
def real_teacher():
    return load_teacher_model(REAL_GGUF, dtype=torch.float32, student_vocab=QWEN_TOKENIZER_SIZE)


@needs_real_gguf
def test_real_teacher_is_frozen_qwen2(real_teacher):
    assert not real_teacher.training and not any(p.requires_grad for p in real_teacher.parameters())
    assert real_teacher.lm_head.weight.shape == (QWEN_EMBEDDING_ROWS, 896)
    assert real_teacher.config.num_hidden_layers == 24 and not real_teacher.config.tie_word_embeddings


@needs_real_gguf
@pytest.mark.parametrize("text", ["知识蒸馏把大模型的知识迁移到小模型中。", "def add(a, b):\n    return a + b\n"])
def test_real_weights_logits_match_transformers(real_teacher, text):
    ids = load_tokenizer(offline=True)(text, return_tensors="pt").input_ids
    ours = from_hf_qwen2(real_teacher).eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), real_teacher(ids).logits, rtol=1e-4, atol=1e-4)
        # 在副本上转 bf16：HF 的 RoPE 频率缓冲区转成 bf16 再转回来就回不去了，会污染后面用这个夹具的测试
        ref, got = copy.deepcopy(real_teacher).to(torch.bfloat16)(ids).logits, ours.to(torch.bfloat16)(ids)
    assert torch.equal(ref.argmax(-1), got.argmax(-1))
    assert (ref.float() - got.float()).abs().max() < 0.5           # bf16 舍入；logits 量级约 10–30


@needs_real_gguf
def test_real_gguf_metadata_and_chat_template():
    meta = read_gguf_metadata(REAL_GGUF)
    assert (meta["num_layers"], meta["hidden_size"], meta["num_heads"], meta["num_kv_heads"]) == (24, 896, 14, 2)
    assert meta["vocab_size"] == QWEN_EMBEDDING_ROWS and meta["rope_theta"] == 1e6
    assert meta["chat_template"] == load_tokenizer(offline=True).chat_template


@needs_real_gguf
def test_gguf_to_hf_dir_round_trip(real_teacher, tmp_path):
    out = gguf_to_hf_dir(REAL_GGUF, tmp_path / "hf", dtype=torch.bfloat16)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    student = load_trained_model(out)                                   # 读回成 float32 的 StudentModel
    expected = from_hf_qwen2(real_teacher).state_dict()
    for name, w in student.state_dict().items():
        assert torch.equal(w, expected[name].to(torch.bfloat16).float()), name
