"06a_tokenizer：随包的 Qwen BPE 排名表、离线重建的 Qwen2.5 分词器、load_tokenizer 的在线/离线路径（全部离线）"
import hashlib, importlib.util, unicodedata
from pathlib import Path
import pytest

import distill_edu.tokenizer as tk
from distill_edu.data import load_corpus
from distill_edu.tokenizer import QWEN_SPECIAL_TOKENS, QWEN_TOKENIZER_SIZE, load_tokenizer

# 公开代码里用官方 AutoTokenizer 打印出来的 (文本, id)：
PUBLISHED_QWEN_IDS = [
    # yanfeng98/fork-llama-factory test/tokenizer.py（Qwen2.5-Coder-0.5B-Instruct，add_special_tokens=False）
    ("how are you!", [5158, 525, 498, 0]),
    ("I'm fine!", [40, 2776, 6915, 0]),
    # 一个公开的 Qwen2.5-0.5B-Instruct 解码脚本（token_ids=[4340, 525, 498, 30] → "How are you?"）
    ("How are you?", [4340, 525, 498, 30]),
    # Homqyy/study-llm 7天入门LLM学习/day-4-llm_train/py-tokenizer.py（Qwen-1_8B-Chat：Qwen2/2.5 沿用同一张 BPE 表）
    ("杭州是个好地方", [104130, 104104, 52801, 100371]),
    # 公开的 LLaMA-Factory 数据处理笔记：Qwen2.5 对话模板（特殊 token + 英文 + 标点吸收换行 `.\n` = 624）
    ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nIdentify the types of technology "
     "used in this passage.\nDesign thinking is a human-centered approach to innovation that draws from the designer's "
     "toolkit to integrate the needs of people, the possibilities of technology, and the requirements for success."
     "<|im_end|>\n<|im_start|>assistant\n",
     [151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198, 151644, 872, 198, 28301, 1437, 279, 4494, 315,
      5440, 1483, 304, 419, 21085, 624, 20470, 7274, 374, 264, 3738, 49382, 5486, 311, 18770, 429, 26643, 504, 279,
      14692, 594, 65894, 311, 31072, 279, 3880, 315, 1251, 11, 279, 23607, 315, 5440, 11, 323, 279, 8502, 369, 2393,
      13, 151645, 198, 151644, 77091, 198]),
    # 同一个 Qwen2.5-0.5B-Instruct 解码脚本里 GSM8K 提示的一段（弯引号、数字逐位切分）
    ("Janet’s ducks lay 16 eggs per day. She eats three for breakfast every morning",
     [18315, 295, 748, 77778, 10962, 220, 16, 21, 18805, 817, 1899, 13, 2932, 49677, 2326, 369, 17496, 1449, 6556]),
]

MIXED = ["Hello world", "你好，世界！Qwen2.5 的分词器", "  两个空格  和\t制表符\n\n\n三个换行\r\n回车",
         "emoji 😀👍🏽🇨🇳 ❤️", "数字 1234567890 和 ３．１４", "e\u0301 café Ａｌｐｈａ", "def f(x):\n    return x ** 2\n",
         "<|im_start|>user\n你好<|im_end|>\n<tool_call>{}</tool_call><|endoftext|>"]


def test_tokenizer_size_and_special_ids(tok):
    assert len(tok) == QWEN_TOKENIZER_SIZE == 151665
    assert tok.convert_tokens_to_ids(list(QWEN_SPECIAL_TOKENS)) == list(range(151643, 151665))
    # 与官方 tokenizer_config.json 一致：前 14 个是控制符（special=True），<tool_call> 起的 8 个 special=False
    flags = {i: t.special for i, t in tok.added_tokens_decoder.items()}
    assert flags == {i: i < 151657 for i in range(151643, 151665)}
    assert tok.pad_token == tok.eos_token == "<|endoftext|>" and tok.pad_token_id == tok.eos_token_id == 151643
    assert tok("你好")["input_ids"] == [108386]          # 不自动加 BOS/EOS


@pytest.mark.parametrize("text, ids", PUBLISHED_QWEN_IDS)
def test_matches_published_official_ids(tok, text, ids):
    assert tok.encode(text) == ids
    assert tok.decode(ids) == text


@pytest.fixture(scope="session")
def ranks():
    return tk.load_bpe_ranks(tk.qwen_ranks_file())


@pytest.fixture(scope="session")
def ref(ranks):
    "独立实现：tiktoken 直接按排名做 BPE（开发依赖）"
    import tiktoken
    return tiktoken.Encoding("ref", pat_str=tk.QWEN_PRETOKENIZE_REGEX, mergeable_ranks=ranks,
                             special_tokens={t: 151643 + i for i, t in enumerate(QWEN_SPECIAL_TOKENS)})


@pytest.mark.parametrize("text", MIXED)
def test_round_trip_and_tiktoken_agree(tok, ref, text):
    ids = tok.encode(text)
    assert ids == ref.encode(unicodedata.normalize("NFC", text), allowed_special="all")
    assert tok.decode(ids) == unicodedata.normalize("NFC", text)


def test_tiktoken_agrees_on_real_chinese_corpus(tok, ref):
    docs = list(load_corpus("peoples_daily", max_samples=500))
    ours = tok(docs, add_special_tokens=False)["input_ids"]
    assert ours == ref.encode_ordinary_batch([unicodedata.normalize("NFC", d) for d in docs])
    assert sum(map(len, docs)) / sum(map(len, ours)) > 1.2              # 中文约 1.4 字/token


def test_skip_special_tokens_keeps_tool_call(tok):
    ids = tok.encode("<|im_start|>a<|im_end|><tool_call>b</tool_call>")
    assert tok.decode(ids, skip_special_tokens=True) == "a<tool_call>b</tool_call>"


def test_merges_from_ranks_one_per_token(ranks):
    merges = tk.bpe_merges_from_ranks(ranks)
    assert len(merges) == len(ranks) - 256 == 151387
    assert all(ranks[a + b] == k + 256 for k, (a, b) in enumerate(merges[:2000]))
    assert merges[:3] == [(b" ", b" "), (b"  ", b"  "), (b"i", b"n")]   # 官方 merges.txt 的前三行：Ġ Ġ / ĠĠ ĠĠ / i n


def test_offline_cache_is_reused(tok, cache, monkeypatch):
    assert (cache / "tokenizers" / tk._TOKENIZER_CACHE_NAME / "tokenizer.json").is_file()
    monkeypatch.setattr(tk, "build_qwen_tokenizer", lambda *a, **k: pytest.fail("缓存存在时不应重新构建"))
    again = load_tokenizer(offline=True, cache_dir=cache)
    assert again.encode(MIXED[1]) == tok.encode(MIXED[1]) and len(again) == QWEN_TOKENIZER_SIZE
    instruct = load_tokenizer("Qwen/Qwen2.5-0.5B-Instruct", offline=True, cache_dir=cache)
    assert instruct.eos_token_id == 151645 and instruct.pad_token_id == 151643


def test_local_directory_uses_auto_tokenizer(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    local = load_tokenizer(str(tmp_path))
    assert local.encode(MIXED[3]) == tok.encode(MIXED[3]) and local.pad_token_id == 151643


def test_unreachable_hub_skips_download(cache, monkeypatch):
    import transformers
    monkeypatch.setattr(tk, "hub_reachable", lambda *a, **k: False)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: pytest.fail("不应访问 Hub"))
    with pytest.warns(UserWarning, match="离线重建"):
        assert len(load_tokenizer("Qwen/Qwen2.5-0.5B", cache_dir=cache)) == QWEN_TOKENIZER_SIZE


def test_hub_reachable_probes_endpoint(monkeypatch):
    "探测的是 HF_ENDPOINT 指向的地址（用本机回环端口模拟一个镜像），并尊重 HF_HUB_OFFLINE"
    import socket
    from huggingface_hub import constants
    server = socket.socket(); server.bind(("127.0.0.1", 0)); server.listen(1)
    port = server.getsockname()[1]
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    assert tk.hub_reachable(timeout=1.0) is True
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert tk.hub_reachable(timeout=1.0) is False
    server.close()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert tk.hub_reachable(timeout=1.0) is False


def test_hub_failure_falls_back_only_for_qwen(cache, monkeypatch):
    import transformers
    def unreachable(*a, **k): raise OSError("hub unreachable")
    monkeypatch.setattr(tk, "hub_reachable", lambda *a, **k: True)   # 探测成功，但真正加载时失败
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", unreachable)
    with pytest.warns(UserWarning, match="离线重建"):
        t = load_tokenizer("Qwen/Qwen2.5-0.5B", cache_dir=cache)
    assert len(t) == QWEN_TOKENIZER_SIZE
    with pytest.raises(OSError): load_tokenizer("Qwen/Qwen2.5-0.5B", offline=False, cache_dir=cache)
    with pytest.raises(OSError): load_tokenizer("gpt2", cache_dir=cache)


def test_load_tokenizer_errors(cache):
    with pytest.raises(ValueError, match="'gpt2'"): load_tokenizer("gpt2", offline=True, cache_dir=cache)
    with pytest.raises(FileNotFoundError, match="no/such/dir"): load_tokenizer("./no/such/dir")




def test_bundled_ranks_file_is_verified():
    path = tk.qwen_ranks_file()
    assert path.parent.name == "assets" and path.stat().st_size == 2_561_218
    assert hashlib.sha256(path.read_bytes()).hexdigest() == tk.QWEN_RANKS_SHA256
    assert (path.parent / "QWEN_LICENSE_NOTICE.md").read_text(encoding="utf-8").count("Apache") >= 1


def test_bundled_ranks_match_dashscope_copy():
    "装了 dashscope 时：随包的文件与它 resources/ 里的那份逐字节相同"
    spec = importlib.util.find_spec("dashscope")
    if spec is None: pytest.skip("没有安装 dashscope")
    upstream = Path(list(spec.submodule_search_locations)[0]) / "resources" / "qwen.tiktoken"
    assert upstream.read_bytes() == tk.qwen_ranks_file().read_bytes()


def test_tampered_ranks_file_is_rejected(tmp_path):
    bad = tmp_path / "qwen.tiktoken"
    bad.write_bytes(tk.qwen_ranks_file().read_bytes()[:-10])
    with pytest.raises(ValueError, match="sha256"): tk.check_sha256(bad, tk.QWEN_RANKS_SHA256)


def test_display_hides_machine_paths(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert tk._display(tmp_path / "a" / "b") == "a/b"
    assert tk._display(Path.home() / ".cache" / "x") in ("~/.cache/x", ".cache/x")
