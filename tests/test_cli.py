"tests for distill_edu.cli: config precedence, bad input, train (single process + resume), torchrun DDP on gloo, demo"
import json, os, subprocess, sys
import pytest
import torch

from distill_edu.cli import build_parser, main, resolve_train_config, run_demo, CompactVocab, demo_continue, load_demo_model

TINY_STUDENT = dict(hidden_size=32, num_layers=1, num_heads=4, num_kv_heads=2, intermediate_size=64,
                    vocab_size=151665, max_seq_len=32)


def write(path, obj):
    path.write_text(json.dumps(obj) if str(path).endswith(".json") else "\n".join(f"{k}: {json.dumps(v)}" for k, v in obj.items()))
    return str(path)


def test_config_precedence_defaults_file_flags(tmp_path):
    cfg_file = write(tmp_path / "c.yaml", {"batch_size": 4, "loss_kind": "jsd", "teacher": "/models/t",
                                            "student": {"hidden_size": 64, "num_layers": 2}})
    args = build_parser().parse_args(["train", "--config", cfg_file, "--batch-size", "2", "--compile"])
    config, model_config, opts = resolve_train_config(args)
    assert config.batch_size == 2                 # 命令行 > 文件
    assert config.loss_kind == "jsd"              # 文件 > 默认
    assert config.learning_rate == 3e-4 and config.compile is True
    assert model_config.hidden_size == 64 and model_config.num_layers == 2 and model_config.vocab_size == 151665
    assert opts["teacher"] == "/models/t" and opts["source"] == "wikipedia"
    args = build_parser().parse_args(["train", "--config", cfg_file, "--no-compile", "--teacher", "x"])
    config, _, opts = resolve_train_config(args)
    assert config.compile is False and opts["teacher"] == "x" and config.batch_size == 4


def test_every_training_field_is_a_flag():
    import dataclasses
    from distill_edu.config import TrainingConfig
    text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    for f in dataclasses.fields(TrainingConfig):
        assert "--" + f.name.replace("_", "-") in text, f.name


def test_bad_config_errors(tmp_path, capsys):
    bad = write(tmp_path / "bad.json", {"batch_sise": 4})
    assert main(["train", "--config", bad]) == 2
    assert "batch_sise" in capsys.readouterr().err
    assert main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err
    assert main(["train", "--alpha", "1.5"]) == 2
    assert "alpha" in capsys.readouterr().err
    (tmp_path / "c.toml").write_text("x = 1")
    assert main(["train", "--config", str(tmp_path / "c.toml")]) == 2


def _files(tmp_path):
    "坏配置文件和挡路的文件，供下面的表使用"
    (tmp_path / "bad.yaml").write_text("batch_size: 4\nalpha: [0.5\n")
    (tmp_path / "bad.json").write_text('{"batch_size": 4,}')
    (tmp_path / "gbk.yaml").write_bytes("温度: 2".encode("gbk"))
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    (tmp_path / "student.yaml").write_text("student: 12\n")
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "ckpt" / "history.json").mkdir(parents=True)
    (tmp_path / "broken_cache").mkdir(); (tmp_path / "broken_cache" / "meta.json").write_text("{")


@pytest.mark.parametrize("argv, match", [
    (["train", "--config", "{t}/bad.yaml"], r"bad.yaml' 不是合法的 YAML：第 3 行第 1 列"),
    (["train", "--config", "{t}/bad.json"], r"bad.json' 不是合法的 JSON：第 1 行第 18 列"),
    (["train", "--config", "{t}/gbk.yaml"], "gbk.yaml' 不是 UTF-8 文本"),
    (["train", "--config", "{t}/list.yaml"], "顶层必须是字典，收到 list"),
    (["train", "--config", "{t}/student.yaml"], "student 应是字典，收到 12"),
    (["train", "--student-config", "{t}/bad.yaml"], "不是合法的 YAML"),
    (["train", "--learning-rate", "inf"], "learning_rate 必须是有限的数字"),
    (["train", "--warmup-steps", "50", "--max-steps", "10"], "warmup_steps=50 超过了总步数 10"),
    (["train", "--checkpoint-dir", "{t}/a_file"], "checkpoint_dir=.*a_file' 已经是一个文件"),
    (["train", "--checkpoint-dir", "{t}/a_file/sub"], "无法创建 checkpoint_dir"),
    (["train", "--checkpoint-dir", "{t}/ckpt"], "history.json' 是一个目录"),
    (["train", "--checkpoint-dir", "{t}/ok", "--export-hf", "{t}/a_file"], "--export-hf=.*a_file' 已经是一个文件"),
    (["train", "--checkpoint-dir", "{t}/ok", "--resume"], "找不到要续训的检查点 .*ok/latest.pt"),
    (["train", "--checkpoint-dir", "{t}/ok", "--resume", "{t}/nope.pt"], "nope.pt"),
    (["train", "--checkpoint-dir", "{t}/ok", "--device", "tpu9"], "不认识的设备 'tpu9'"),
    (["train", "--checkpoint-dir", "{t}/ok"], "教师 --teacher 'Qwen/Qwen2.5-0.5B' 要从 Hugging Face Hub 下载，但连不上 Hub"),
    (["train", "--checkpoint-dir", "{t}/ok", "--teacher", "{t}/no_teacher"], "找不到教师 --teacher .*no_teacher'"),
    (["train", "--checkpoint-dir", "{t}/ok", "--teacher-cache", "{t}/tc", "--alpha", "0"], "--teacher-cache .* 只用于蒸馏"),
    (["train", "--checkpoint-dir", "{t}/ok", "--teacher-cache", "{t}/tc", "--loss-kind", "jsd"], "只支持 loss_kind='forward_kl'"),
    (["train", "--checkpoint-dir", "{t}/ok", "--teacher-cache", "{t}/tc", "--loss-chunk-size", "0"], "需要分块损失"),
    (["train", "--checkpoint-dir", "{t}/ok", "--teacher-cache", "{t}/tc", "--cache-mode", "full"], "--cache-mode 必须是 .*收到 'full'"),
    (["train", "--checkpoint-dir", "{t}/ok", "--teacher-cache", "{t}/tc", "--cache-k", "0"], "--cache-k 必须是正整数"),
    (["train", "--checkpoint-dir", "{t}/ok", "--teacher-cache", "{t}/ckpt"], "ckpt 已存在，但不是稀疏教师缓存"),
    (["train", "--checkpoint-dir", "{t}/ok", "--teacher-cache", "{t}/a_file/tc"], "--teacher-cache 的上一级目录=.*a_file' 已经是一个文件"),
    (["train", "--checkpoint-dir", "{t}/ok", "--teacher-cache", "{t}/broken_cache"], "meta.json 不是合法的 JSON"),
    (["demo", "--teacher-steps", "0"], "--teacher-steps 必须是正整数，收到 0"),
    (["demo", "--student-steps", "-3"], "--student-steps 必须是正整数"),
    (["demo", "--lr", "inf"], "--lr 必须是有限的数字"),
    (["demo", "--student-fraction", "0"], "--student-fraction 必须在"),
    (["demo", "--alpha", "2"], "--alpha 必须在"),
    (["demo", "--device", "gpu"], "不认识的设备 'gpu'"),
    (["demo", "--out", "{t}/a_file"], "--out=.*已经是一个文件"),
] + ([] if torch.cuda.is_available() else [(["train", "--checkpoint-dir", "{t}/ok", "--device", "cuda"], "设备 'cuda' 不可用"),
                                          (["demo", "--device", "cuda"], "设备 'cuda' 不可用")]))
def test_ordinary_mistakes_exit_2_with_one_line(tmp_path, capsys, monkeypatch, argv, match):
    "普通的用法错误：退出码 2、stderr 只有一行、点名出错的值或文件；都在分词、加载教师之前发现（这里假装连不上 Hub）"
    import re, huggingface_hub
    from huggingface_hub.utils import validate_repo_id
    monkeypatch.setattr("distill_edu.tokenizer.hub_reachable", lambda: False)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, *a, **k: validate_repo_id(repo))  # 缓存里没有
    _files(tmp_path)
    assert main([a.replace("{t}", str(tmp_path)) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("distill-edu: 错误："), err
    assert re.search(match, err), err


def test_help_does_not_import_torch_or_transformers():
    "distill-edu --help 只要 argparse：导入 cli、打印帮助都不碰 torch / transformers（它们要好几秒）"
    code = ("import sys\nfrom distill_edu.cli import main\n"
            "for argv in (['--help'], ['train', '--help'], ['demo', '--help']):\n"
            "    try: main(argv)\n"
            "    except SystemExit as e: assert e.code == 0, e.code\n"
            "print(sorted(m for m in ('torch', 'transformers', 'numpy') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "[]", res.stdout[-300:]
    assert "--teacher-steps" in res.stdout and "--export-hf" in res.stdout


def test_default_teacher_name_matches_the_data_module():
    from distill_edu.cli import RUN_OPTIONS
    from distill_edu.tokenizer import QWEN25_TOKENIZER
    assert RUN_OPTIONS["teacher"][0] == RUN_OPTIONS["tokenizer"][0] == QWEN25_TOKENIZER


def test_cli_process_prints_no_traceback(tmp_path):
    "真正的进程：退出码 2，stderr 一行，没有 Traceback"
    res = subprocess.run([sys.executable, "-m", "distill_edu.cli", "demo", "--teacher-steps", "0"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr and res.stderr.count("\n") == 1, res.stderr
    assert "--teacher-steps 必须是正整数，收到 0" in res.stderr


@pytest.fixture(scope="module")
def full_vocab_teacher(tmp_path_factory):
    "一个很小、但输出层有 151936 行（与 Qwen2.5-0.5B 相同）的随机 Qwen2 教师"
    from transformers import Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("teacher"))
    Qwen2ForCausalLM(Qwen2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                                 intermediate_size=64, vocab_size=151936, max_position_embeddings=64,
                                 tie_word_embeddings=True)).save_pretrained(path)
    return path


def train_args(tmp_path, teacher, student_cfg, *extra):
    return ["train", "--teacher", teacher, "--offline-tokenizer", "--source", "peoples_daily", "--max-bytes", "60000",
            "--cache-dir", str(tmp_path.parent / "cache"), "--student-config", student_cfg, "--seq-len", "16",
            "--batch-size", "2", "--checkpoint-dir", str(tmp_path / "ckpt"), "--log-interval", "1",
            "--eval-interval", "2", "--eval-batches", "2", "--loss-chunk-size", "16", "--warmup-steps", "1",
            "--device", "cpu", *extra]


def test_train_and_resume_single_process(tmp_path, full_vocab_teacher, capsys):
    student_cfg = write(tmp_path / "student.json", TINY_STUDENT)
    assert main(train_args(tmp_path, full_vocab_teacher, student_cfg, "--max-steps", "2")) == 0
    out = capsys.readouterr().out
    assert "共 2 步" in out and "最终验证" in out
    hist = json.load(open(tmp_path / "ckpt" / "history.json"))
    assert hist["step"] == [1, 2] and all(v > 0 for v in hist["kl_loss"])
    with pytest.warns(UserWarning, match="max_steps"):
        assert main(train_args(tmp_path, full_vocab_teacher, student_cfg, "--max-steps", "3", "--resume")) == 0
    assert "从第 2 步续训" in capsys.readouterr().out
    ckpt = torch.load(tmp_path / "ckpt" / "latest.pt", weights_only=True)
    assert ckpt["step"] == 3 and ckpt["history"]["step"] == [1, 2, 3]


def test_student_vocab_larger_than_teacher_is_refused(tmp_path, full_vocab_teacher, capsys):
    student_cfg = write(tmp_path / "student.json", {**TINY_STUDENT, "vocab_size": 152000})
    assert main(train_args(tmp_path, full_vocab_teacher, student_cfg, "--max-steps", "1")) == 2
    assert "151936" in capsys.readouterr().err


def test_train_from_teacher_cache_needs_no_teacher_the_second_time(tmp_path, full_vocab_teacher, capsys):
    "--teacher-cache：第一次用教师建缓存再训练；第二次教师路径不存在也能训练（根本不加载教师）；k 不符点名报错"
    student_cfg = write(tmp_path / "student.json", TINY_STUDENT)
    cache, extra = tmp_path / "teacher_cache", ["--max-steps", "2", "--cache-k", "8"]
    assert main(train_args(tmp_path, full_vocab_teacher, student_cfg, "--teacher-cache", str(cache), *extra)) == 0
    out = capsys.readouterr().out
    assert f"稀疏缓存 {cache}（k=8，topk_rest）" in out and "最终验证" in out
    assert json.load(open(cache / "meta.json"))["k"] == 8
    hist = json.load(open(tmp_path / "ckpt" / "history.json"))
    assert hist["step"] == [1, 2] and all(v > 0 for v in hist["kl_loss"])
    args = lambda *a: train_args(tmp_path / "again", str(tmp_path / "no_teacher"), student_cfg, "--teacher-cache", str(cache), *a)
    assert main(args(*extra)) == 0
    assert main(args("--max-steps", "2")) == 2                     # 默认 --cache-k 64，缓存是 k=8
    assert "是 k=8 的缓存，--cache-k 却是 64" in capsys.readouterr().err


def test_torchrun_two_gloo_processes(tmp_path, full_vocab_teacher):
    "torchrun --nproc_per_node=2 -m distill_edu.cli train：CPU + gloo，数据分片、rank 0 写检查点"
    student_cfg = write(tmp_path / "student.json", TINY_STUDENT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "distill_edu.cli",
           *train_args(tmp_path, full_vocab_teacher, student_cfg, "--max-steps", "2",
                       "--cache-dir", str(tmp_path / "fresh_cache"))]          # 空缓存：rank 0 先建，rank 1 等待后读取
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    assert res.stdout.count("2 个进程") == 1                 # 只有 rank 0 打印
    ckpt = torch.load(tmp_path / "ckpt" / "latest.pt", weights_only=True)
    assert ckpt["step"] == 2 and len(ckpt["history"]["val_loss"]) == 1


def test_compact_vocab_round_trip(tmp_path):
    import numpy as np
    from distill_edu.tokenizer import load_tokenizer
    tok = load_tokenizer(offline=True)
    ids = tok.encode("中国人民今天很高兴。")
    stream = np.array(ids * 3 + [7, 7, 9], dtype=np.uint32)
    vocab = CompactVocab(stream, len(tok), size=len(set(ids)) + 1)
    compact = vocab.to_compact[torch.tensor(ids)]
    assert vocab.unk not in compact.tolist() and vocab.decode(tok, compact.tolist()) == "中国人民今天很高兴。"
    assert vocab.to_compact[9].item() == vocab.unk and vocab.decode(tok, [vocab.unk]) == "□"
    with pytest.raises(ValueError, match="vocab"): CompactVocab(stream, len(tok), size=1)
    path = vocab.save(str(tmp_path))
    again = CompactVocab.load(str(tmp_path))
    assert torch.equal(again.to_full, vocab.to_full) and torch.equal(again.to_compact, vocab.to_compact)
    assert again.decode(tok, compact.tolist()) == "中国人民今天很高兴。" and again.coverage == vocab.coverage
    with pytest.raises(FileNotFoundError, match="nothing"): CompactVocab.load(str(tmp_path / "nothing"))
    open(path, "w").write('{"format": "distill_edu/compact_vocab/1", "to_full": [1, 1]}')
    with pytest.raises(ValueError, match="不是 distill_edu 的压缩词表"): CompactVocab.load(path)


def test_demo_quick(tmp_path, capsys):
    args = build_parser().parse_args(["demo", "--max-bytes", "120000", "--vocab", "512", "--teacher-steps", "12",
                                      "--student-steps", "8", "--seq-len", "32", "--new-tokens", "4",
                                      "--out", str(tmp_path)])
    res = run_demo(args)
    out = capsys.readouterr().out
    assert "验证困惑度" in out and out.count("[kd]") == 3 and out.count("[ce]") == 3
    assert set(res["val_ppl"]) == {"teacher", "kd", "ce"}
    assert all(1 < v < 512 * 2 for v in res["val_ppl"].values()), res["val_ppl"]
    assert os.path.isfile(tmp_path / "teacher" / "config.json")
    assert json.load(open(tmp_path / "teacher" / "config.json"))["vocab_size"] == 512 + 64   # 补了 64 行填充

    # 检查点旁边有压缩词表：load_demo_model 读回学生和它的压缩分词器，可以直接生成
    from distill_edu.generate import TextGenerator, load_trained_model
    from distill_edu.tokenizer import load_tokenizer
    model, compact = load_demo_model(str(tmp_path / "student_kd" / "latest.pt"))
    printed = next(line for line in out.splitlines() if line.strip().startswith("[kd] 我国|")).split("|", 1)[1]
    assert demo_continue(model, compact, "我国", args.new_tokens, args.top_k, args.sample_temperature,
                         args.repetition_penalty, args.seed) == printed          # 读回的学生逐字重现 demo 打印的续写
    text = TextGenerator(model, compact).generate("中国", 4)
    assert text.startswith("中国") and len(compact.encode(text)) > 1, text
    assert load_demo_model(str(tmp_path / "student_kd"))[0].config == model.config
    # 直接拿完整的 Qwen2.5 分词器去配压缩词表的模型：点名报错，而不是嵌入层的 IndexError
    with pytest.raises(ValueError, match="超出词表"):
        TextGenerator(load_trained_model(tmp_path / "student_kd" / "latest.pt"), load_tokenizer(offline=True)).generate("中国", 4)
    os.remove(tmp_path / "student_ce" / "compact_vocab.json")
    with pytest.raises(FileNotFoundError, match="compact_vocab.json"): load_demo_model(str(tmp_path / "student_ce"))


def test_train_export_hf_is_usable_with_auto_classes(tmp_path, capsys):
    "train --export-hf：目录里有模型、分词器和生成配置，AutoModelForCausalLM + AutoTokenizer 读回的 logits 与检查点相同"
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from distill_edu.generate import load_trained_model
    student_cfg = write(tmp_path / "student.json", TINY_STUDENT)
    out = tmp_path / "hf"
    assert main(train_args(tmp_path, "unused", student_cfg, "--max-steps", "1", "--alpha", "0", "--export-hf", str(out))) == 0
    tok = AutoTokenizer.from_pretrained(out)
    hf = AutoModelForCausalLM.from_pretrained(out)
    assert len(tok) == 151665 and hf.generation_config.pad_token_id is not None
    ids = torch.tensor([tok.encode("人民日报")])
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, load_trained_model(tmp_path / "ckpt" / "latest.pt")(ids))
