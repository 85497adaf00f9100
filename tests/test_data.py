"06b_data：语料读取、打包数据集、token 缓存与 DataLoader（全部离线）"
import gzip, lzma, os, sys
import numpy as np
import pytest
import torch

import distill_edu.data as data
from distill_edu.config import ModelConfig
from distill_edu.data import SPLITS, WikiDataset, create_dataloaders, load_corpus, strip_pos_tags, token_cache_dir
from distill_edu.tokenizer import load_tokenizer


def test_strip_pos_tags():
    line = "19980101-01-001-001/m  迈向/v  充满/v  [中国/ns  政府/n]nt  １/m  张/q  Windows/nx  95/m  [新华社/nt]/nt"
    assert strip_pos_tags(line) == "迈向充满中国政府１张Windows 95新华社"


def test_peoples_daily_corpus():
    docs = list(load_corpus("peoples_daily", max_samples=5))
    assert len(docs) == 5 and docs[0].startswith("迈向充满希望的新世纪")
    assert not any("/" in d or "  " in d for d in docs)


def _write_corpus(d):
    (d / "a.txt").write_text("一\n\n二\n", encoding="utf-8")
    with gzip.open(d / "b.jsonl.gz", "wt", encoding="utf-8") as f: f.write('{"text": "三"}\n\n{"text": "四"}\n')
    with lzma.open(d / "c.txt.xz", "wt", encoding="utf-8") as f: f.write("五\n")
    import pyarrow as pa, pyarrow.parquet as pq
    pq.write_table(pa.table({"text": ["六", "  ", "七"]}), d / "d.parquet")


def test_load_corpus_local_formats(tmp_path):
    _write_corpus(tmp_path)
    assert list(load_corpus(str(tmp_path))) == ["一", "二", "三", "四", "五", "六", "七"]
    assert list(load_corpus(str(tmp_path / "*.jsonl.gz"))) == ["三", "四"]
    assert list(load_corpus(str(tmp_path / "d.parquet"))) == ["六", "七"]
    assert list(load_corpus(str(tmp_path), max_samples=2)) == ["一", "二"]
    assert list(load_corpus(str(tmp_path), max_bytes=6)) == ["一", "二"]       # 每个汉字 3 字节


def test_load_corpus_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="missing.txt"): load_corpus(str(tmp_path / "missing.txt"))
    with pytest.raises(FileNotFoundError, match="没有匹配"): load_corpus(str(tmp_path / "*.jsonl"))
    with pytest.raises(ValueError, match="'wikipedai'"): load_corpus("wikipedai")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="x.csv"): load_corpus(str(tmp_path / "x.csv"))
    (tmp_path / "y.jsonl").write_text('{"content": "无 text 字段"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="'text'"): list(load_corpus(str(tmp_path / "y.jsonl")))
    with pytest.raises(ValueError, match="max_samples"): load_corpus("peoples_daily", max_samples=0)
    monkeypatch.setitem(sys.modules, "opencc", None)                       # 模拟没有安装 OpenCC
    with pytest.raises(ImportError, match="opencc"): load_corpus("peoples_daily", to_simplified=True)


def test_wikipedia_source_streams_with_limits(monkeypatch):
    "维基来源走 datasets 的流式接口（这里用假的 load_dataset 代替网络），并在 max_bytes 处停止读取"
    import datasets
    calls, pulled = [], []
    def fake_rows():
        for i in range(1000):
            pulled.append(i)
            yield {"text": f"  條目{i}  ", "title": str(i)}
    def fake_load_dataset(*args, **kwargs):
        calls.append((args, kwargs)); return fake_rows()
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    docs = list(load_corpus("wikipedia", max_bytes=14))
    assert calls == [(("wikimedia/wikipedia", "20231101.zh"), {"split": "train", "streaming": True})]
    assert docs == ["條目0", "條目1"] and len(pulled) == 2                # 每篇 7 字节：第二篇累计到 14 就停，不再多读
    def offline(*a, **k): raise OSError("no network")
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ConnectionError, match="peoples_daily"): load_corpus("wikipedia")


def test_modelscope_and_simplified_wiring(monkeypatch):
    "ModelScope 来源与繁转简只在需要时导入可选依赖；这里用假的模块检查参数是否传对"
    import types
    seen = {}
    class MsDataset:
        @staticmethod
        def load(name, subset_name=None, split=None, use_streaming=False):
            seen.update(name=name, subset=subset_name, split=split, streaming=use_streaming)
            return [{"text": "維基百科"}, {"text": "漢字"}]
    ms = types.ModuleType("modelscope.msdatasets"); ms.MsDataset = MsDataset
    monkeypatch.setitem(sys.modules, "modelscope", types.ModuleType("modelscope"))
    monkeypatch.setitem(sys.modules, "modelscope.msdatasets", ms)
    cc = types.ModuleType("opencc")
    cc.OpenCC = lambda config: types.SimpleNamespace(convert=lambda t: t.replace("維基", "维基").replace("漢", "汉"))
    monkeypatch.setitem(sys.modules, "opencc", cc)
    docs = list(load_corpus("modelscope:someone/zhwiki", subset="zh", to_simplified=True))
    assert seen == {"name": "someone/zhwiki", "subset": "zh", "split": "train", "streaming": True}
    assert docs == ["维基百科", "汉字"]


@pytest.fixture(scope="session")
def pd_train(tok, cache):
    return WikiDataset(tok, "train", seq_len=64, source="peoples_daily", max_samples=300, cache_dir=cache, verbose=False)


def test_dataset_samples_and_labels(pd_train, tok):
    ds = pd_train
    assert len(ds) > 0
    x = ds[0]
    assert x["input_ids"].shape == x["labels"].shape == (64,)
    assert x["input_ids"].dtype == x["labels"].dtype == torch.int64
    assert torch.equal(x["labels"][:-1], x["input_ids"][1:])            # labels[t] = input_ids[t+1]
    # 样本首尾相接、不丢 token：拼起来正好是 token 流的前 N·T+1 个
    rebuilt = torch.cat([ds[i]["input_ids"] for i in range(len(ds))] + [ds[len(ds) - 1]["labels"][-1:]])
    assert torch.equal(rebuilt, torch.from_numpy(ds.tokens[:len(ds) * 64 + 1].astype(np.int64)))
    assert len(ds) == (ds.num_tokens - 1) // 64
    first_doc = next(load_corpus("peoples_daily"))
    n = len(tok.encode(first_doc))
    assert ds.tokens[:n + 1].tolist() == tok.encode(first_doc) + [tok.eos_token_id]
    assert torch.equal(ds[-1]["input_ids"], ds[len(ds) - 1]["input_ids"])
    with pytest.raises(IndexError): ds[len(ds)]


def test_split_is_by_document_and_deterministic(tok, tmp_path):
    (tmp_path / "n.txt").write_text("".join(f"第{j}篇文档。\n" for j in range(50)), encoding="utf-8")
    kw = dict(seq_len=4, source=str(tmp_path / "n.txt"), cache_dir=tmp_path / "c", verbose=False)
    train, val = (WikiDataset(tok, s, **kw) for s in SPLITS)
    eos = tok.eos_token_id
    docs = lambda ds: [tok.decode(d[:-1]) for d in np.split(np.asarray(ds.tokens), np.flatnonzero(ds.tokens == eos) + 1) if len(d)]
    assert docs(val) == [f"第{j}篇文档。" for j in range(9, 50, 10)]
    assert docs(train) == [f"第{j}篇文档。" for j in range(50) if j % 10 != 9]
    assert not set(docs(train)) & set(docs(val))


def test_documents_separated_by_endoftext_even_for_instruct(cache, tmp_path):
    instruct = load_tokenizer("Qwen/Qwen2.5-0.5B-Instruct", offline=True, cache_dir=cache)
    assert instruct.eos_token_id == 151645 and data.document_separator(instruct) == 151643
    (tmp_path / "d.txt").write_text("甲。\n乙。\n", encoding="utf-8")
    ds = WikiDataset(instruct, seq_len=2, source=str(tmp_path / "d.txt"), val_fraction=0.01, cache_dir=tmp_path,
                     verbose=False)
    assert ds.tokens.tolist() == instruct.encode("甲。") + [151643] + instruct.encode("乙。") + [151643]


def test_token_cache_is_reused(pd_train, tok, cache, monkeypatch):
    monkeypatch.setattr(data, "_write_token_streams", lambda *a, **k: pytest.fail("缓存存在时不应重新分词"))
    val = WikiDataset(tok, "validation", seq_len=32, source="peoples_daily", max_samples=300, cache_dir=cache,
                      verbose=False)
    assert val.cache_path == pd_train.cache_path and len(val) > 0
    assert val.meta["tokens_per_second"] > 0 and val.meta["documents"] == 300
    # 限额不同 → 缓存键不同
    assert token_cache_dir(tok, "peoples_daily", 301, 50_000_000, 0.1, cache_dir=cache) != pd_train.cache_path


def test_token_cache_invalidated_when_file_changes(tok, tmp_path):
    f = tmp_path / "c.txt"
    f.write_text("甲乙丙丁\n" * 20, encoding="utf-8")
    a = token_cache_dir(tok, str(f), None, None, 0.1, cache_dir=tmp_path)
    f.write_text("甲乙丙丁戊\n" * 20, encoding="utf-8")
    assert token_cache_dir(tok, str(f), None, None, 0.1, cache_dir=tmp_path) != a


def test_dataloaders(tok, cache, pd_train):
    train, val = create_dataloaders(tok, batch_size=4, seq_len=64, source="peoples_daily", max_samples=300,
                                    cache_dir=cache, verbose=False)
    batches = list(train)
    assert len(batches) == len(pd_train) // 4
    assert all(b["input_ids"].shape == b["labels"].shape == (4, 64) and b["input_ids"].dtype == torch.int64
               for b in batches)
    assert train.pin_memory == torch.cuda.is_available()
    assert torch.equal(next(iter(val))["input_ids"], torch.stack([val.dataset[i]["input_ids"] for i in range(4)]))
    seen = torch.cat([b["input_ids"][:, 0] for b in batches])
    assert not torch.equal(seen, torch.stack([pd_train[i]["input_ids"][0] for i in range(len(seen))])), "训练集应打乱"


def test_dataloader_worker_process(tok, cache, pd_train):
    "数据集可以安全地送进 DataLoader 子进程（memmap 在 worker 里重新打开）"
    train, _ = create_dataloaders(tok, batch_size=2, seq_len=64, source="peoples_daily", max_samples=300,
                                  cache_dir=cache, num_workers=1, verbose=False)
    b = next(iter(train))
    assert b["input_ids"].shape == (2, 64)


def test_bad_inputs(tok, tmp_path, cache):
    (tmp_path / "empty.txt").write_text("\n \n", encoding="utf-8")
    (tmp_path / "short.txt").write_text("一句话。\n", encoding="utf-8")
    kw = dict(cache_dir=tmp_path, verbose=False)
    with pytest.raises(ValueError, match="语料为空"): WikiDataset(tok, source=str(tmp_path / "empty.txt"), **kw)
    with pytest.raises(ValueError, match="seq_len\\+1=65"):
        WikiDataset(tok, seq_len=64, source=str(tmp_path / "short.txt"), **kw)
    with pytest.raises(FileNotFoundError, match="nope.txt"): WikiDataset(tok, source=str(tmp_path / "nope.txt"), **kw)
    with pytest.raises(ValueError, match="'nosuchsource'"): WikiDataset(tok, source="nosuchsource", **kw)
    with pytest.raises(ValueError, match="seq_len=1024"): WikiDataset(tok, seq_len=1024, model_config=ModelConfig())
    with pytest.raises(ValueError, match="vocab_size=32000"):
        WikiDataset(tok, seq_len=8, model_config=ModelConfig(vocab_size=32000))
    with pytest.raises(ValueError, match="'test'"): WikiDataset(tok, split="test")
    with pytest.raises(ValueError, match="seq_len"): WikiDataset(tok, seq_len=0)
    with pytest.raises(ValueError, match="batch_size=100000"):
        create_dataloaders(tok, batch_size=100_000, seq_len=64, source="peoples_daily", max_samples=300,
                           cache_dir=cache, verbose=False)


# ---------------- 坏的语料文件：点名文件、行号和编码 ----------------

@pytest.mark.parametrize("name, content, match", [
    ("gbk.txt", "中文语料，第二句。\n".encode("gbk"), r"gbk.txt 第 1 行附近不是 UTF-8 文本，看起来是 GBK/GB18030 编码"),
    ("utf16.txt", "中文语料\n".encode("utf-16"), "看起来是 UTF-16 编码"),
    ("blob.txt", bytes(range(256)) * 4, "含有 NUL 字节，像是二进制文件"),
    ("broken.jsonl", b'{"text": "ok"}\n\n{"text": \n', r"broken.jsonl:3 不是合法的 JSON"),
    ("list.jsonl", b'["text"]\n', r"list.jsonl:1 应是一个 JSON 对象，收到 list"),
    ("number.jsonl", b'{"text": "ok"}\n{"text": 42}\n', r"number.jsonl:2 的字段 'text' 应是字符串，收到 int"),
    ("nested.jsonl", b'{"text": {"zh": "x"}}\n', "应是字符串，收到 dict"),
    ("fake.txt.gz", "不是压缩包".encode(), r"fake.txt.gz 不是有效的 .gz 压缩文件"),
    ("cut.jsonl.gz", gzip.compress(b'{"text": "abc"}\n' * 100)[:40], r"cut.jsonl.gz 不是有效的 .gz 压缩文件"),
    ("fake.jsonl.xz", b"plain text", r"fake.jsonl.xz 不是有效的 .xz 压缩文件"),
    ("fake.parquet", b"not parquet", "fake.parquet 不是有效的 parquet 文件"),
    ("gbk.txt.gz", gzip.compress("压缩的中文".encode("gbk")), "GBK/GB18030"),
])
def test_bad_corpus_files_are_named(tmp_path, name, content, match):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ValueError, match=match): list(load_corpus(str(tmp_path / name)))


def test_parquet_text_column_must_be_strings(tmp_path):
    import pyarrow as pa, pyarrow.parquet as pq
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "n.parquet")
    with pytest.raises(ValueError, match="n.parquet 的列 'text' 应是字符串，实际类型是 int64"): list(load_corpus(str(tmp_path / "n.parquet")))


def test_utf8_bom_is_not_part_of_the_first_document(tmp_path):
    (tmp_path / "bom.jsonl").write_bytes(b'\xef\xbb\xbf{"text": "first"}\n')
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbffirst\n")
    assert list(load_corpus(str(tmp_path / "bom.jsonl"))) == list(load_corpus(str(tmp_path / "bom.txt"))) == ["first"]


# ---------------- token 缓存：不被坏掉的文件骗过 ----------------

def _corrupt(target, how):
    "按 how 破坏一个 token 缓存目录"
    train, meta = target / "train.bin", target / "meta.json"
    if how == "truncated": train.write_bytes(train.read_bytes()[:-8])
    elif how == "zeroed": train.write_bytes(bytes(train.stat().st_size))
    elif how == "meta_garbage": meta.write_text("{not json")
    elif how == "meta_missing_key": meta.write_text('{"documents": 3}')
    elif how == "meta_is_list": meta.write_text("[1, 2]")
    elif how == "bin_missing": (target / "validation.bin").unlink()
    elif how == "meta_deleted": meta.unlink()


@pytest.mark.parametrize("how, reason", [
    ("truncated", "train.bin 有 .* 字节，meta.json 记录的是"), ("zeroed", "train.bin 的内容与 meta.json 记录的校验和不符"),
    ("meta_garbage", "meta.json 读不了：JSONDecodeError"), ("meta_missing_key", "meta.json 缺少字段"),
    ("meta_is_list", "meta.json 缺少字段"), ("bin_missing", "validation.bin 不见了"),
    ("meta_deleted", "meta.json 读不了：FileNotFoundError"),
])
def test_broken_token_cache_is_rebuilt(tok, tmp_path, how, reason):
    corpus = tmp_path / "c.txt"
    corpus.write_text("".join(f"第{j}篇文档，内容各不相同。\n" for j in range(60)), encoding="utf-8")
    kw = dict(seq_len=8, source=str(corpus), cache_dir=tmp_path, verbose=False)
    good = WikiDataset(tok, "train", **kw)
    expected = [good[i]["input_ids"].tolist() for i in range(len(good))]
    _corrupt(good.cache_path, how)
    with pytest.warns(UserWarning, match=f"不可用（{reason}"): again = WikiDataset(tok, "train", **kw)
    assert again.cache_path == good.cache_path and len(again) == len(good)
    assert [again[i]["input_ids"].tolist() for i in range(len(again))] == expected


def test_corpus_edited_in_place_with_same_size_and_mtime_is_noticed(tok, tmp_path):
    import os
    corpus = tmp_path / "c.txt"
    corpus.write_text("甲乙丙丁。\n" * 40, encoding="utf-8")
    kw = dict(seq_len=8, source=str(corpus), cache_dir=tmp_path, verbose=False)
    before = WikiDataset(tok, "train", **kw)
    stat = corpus.stat()
    corpus.write_text("戊己庚辛。\n" * 40, encoding="utf-8")          # 同样的字节数
    os.utime(corpus, ns=(stat.st_atime_ns, stat.st_mtime_ns))          # 同样的修改时间
    with pytest.warns(UserWarning, match="语料文件的内容与分词时不同"): after = WikiDataset(tok, "train", **kw)
    assert after.cache_path == before.cache_path
    assert tok.decode(after[0]["input_ids"]).startswith("戊己")


def test_orphaned_build_folders_are_removed(tok, tmp_path):
    "被 kill -9 的构建留下的临时目录：进程不在了就删掉；还活着的进程的目录不动"
    import socket, subprocess
    corpus = tmp_path / "c.txt"
    corpus.write_text("甲乙丙丁。\n" * 40, encoding="utf-8")
    parent = tmp_path / "tokens"; parent.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"]); dead.wait()
    host = socket.gethostname()
    orphan, alive = parent / f".build-{dead.pid}@{host}-abc12345", parent / f".build-{os.getpid()}@{host}-def67890"
    for d in (orphan, alive): d.mkdir(); (d / "train.bin").write_bytes(b"partial")
    WikiDataset(tok, "train", seq_len=8, source=str(corpus), cache_dir=tmp_path, verbose=False)
    assert not orphan.exists() and alive.exists()
