"tests for distill_edu.teacher, distill_edu.trainer and distill_edu.checkpoint: teacher loading, DistillationTrainer (resume, NaN, DDP), pluggable pieces"
import math, os, warnings
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from distill_edu.config import ModelConfig, TrainingConfig, LOSS_KINDS
from distill_edu.losses import IGNORE_INDEX
from distill_edu.checkpoint import atomic_save
from distill_edu.teacher import check_vocab, load_teacher_model
from distill_edu.trainer import DistillationTrainer, TrainingDiverged, lr_multiplier
from distill_edu.model import StudentModel
from kd_helpers import (SEQ, V, V_TEACHER, assert_same_training, cfg, markov_loader, params_of, save_hf_teacher,
                        tiny_student)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    return save_hf_teacher(str(tmp_path_factory.mktemp("teacher")))


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


# ---------------- 可替换的零件 ----------------

def test_cached_teacher_targets_train_like_the_online_teacher(tmp_path, teacher_dir):
    "teacher_targets 从 batch 里读预先算好的教师 logits：与在线跑教师训练出的参数逐位相同，训练循环不变"
    teacher = load_teacher_model(teacher_dir)
    rows = list(markov_loader(shuffle=False).dataset)
    with torch.no_grad(): cached = [{**r, "teacher_logits": teacher(r["input_ids"][None]).logits[0]} for r in rows]
    loader = lambda data: DataLoader(data, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0))
    states = []
    for data, kw in ((rows, dict(teacher=teacher)), (cached, dict(teacher=None, teacher_targets=lambda b: b["teacher_logits"]))):
        tr = DistillationTrainer(tiny_student(0), kw.pop("teacher"), loader(data), None,
                                 cfg(tmp_path / str(len(states)), max_steps=3, loss_chunk_size=0), progress=False, **kw)
        tr.train()
        states.append(params_of(tr.student))
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_custom_loss_fn_is_used(tmp_path):
    calls = []
    def loss_fn(input_ids, labels, teacher_out):
        calls.append(input_ids.shape)
        logits = tr.student(input_ids)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1))
        return loss, {"total_loss": loss.detach(), "kl_loss": loss.detach() * 0, "ce_loss": loss.detach()}
    tr = make_trainer(tmp_path, None, alpha=0.0, max_steps=2, log_interval=1)
    tr.loss_fn = loss_fn
    hist = tr.train()
    assert len(calls) == 2 and calls[0] == (4, SEQ) and all(math.isfinite(v) for v in hist["train_loss"])


def test_alpha_positive_with_teacher_targets_needs_no_teacher(tmp_path):
    c = cfg(tmp_path, alpha=0.5, max_steps=2)
    tr = DistillationTrainer(tiny_student(), None, markov_loader(), None, c, progress=False, teacher_targets=lambda b: None)
    assert tr.teacher is None and tr.teacher_targets is not None


def test_cuda_graph_plan():
    from distill_edu.trainer import cuda_graph_plan
    assert cuda_graph_plan(True, 1, True) == (True, True)
    assert cuda_graph_plan(True, 2, True) == (False, True)
    assert cuda_graph_plan(True, 1, False) == (True, False)
    assert cuda_graph_plan(False, 1, True) == (False, False)


def test_batch_extra_tensors_travel_to_device():
    from distill_edu.trainer import batch_to_device
    ids = torch.zeros(2, 4, dtype=torch.long)
    out = batch_to_device({"input_ids": ids, "labels": ids, "topk_ids": torch.ones(2, 4, 3, dtype=torch.long)}, V, "cpu")
    assert set(out) == {"input_ids", "labels", "topk_ids"} and out["topk_ids"].shape == (2, 4, 3)
    assert set(batch_to_device((ids, ids), V, "cpu")) == {"input_ids", "labels"}


def test_data_cursor_restores_position_across_epochs():
    from distill_edu.checkpoint import DataCursor, _get_rng_state
    a = DataCursor(markov_loader(n=12, batch=4), seed=3)                # 3 个 batch 一个 epoch
    for _ in range(5): a.next()
    saved = (a.epoch, a.batch_in_epoch, _get_rng_state())
    want = [a.next()["input_ids"] for _ in range(4)]
    b = DataCursor(markov_loader(n=12, batch=4), seed=3)
    b.restore(*saved)
    got = [b.next()["input_ids"] for _ in range(4)]
    assert saved[:2] == (1, 2) and all(torch.equal(x, y) for x, y in zip(want, got))

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
