# 09_full_distillation 的完整（GPU）模式，只把 Hub 教师和维基百科换成本地的：随机初始化的 Qwen2.5-0.5B 结构教师、
# shared/corpus 的 zh_modern；训练 300 步而不是两个 epoch。其余单元格原样执行（由 09 的 jupytext 源生成）。
import matplotlib; matplotlib.use("Agg")
import torch
from distill_edu.model import StudentModel, to_hf_qwen2
from distill_edu.config import ModelConfig
torch.manual_seed(1)
to_hf_qwen2(StudentModel(ModelConfig(hidden_size=896, num_layers=24, num_heads=14, num_kv_heads=2, intermediate_size=4864,
                                     vocab_size=151936, max_seq_len=32768)).to(torch.bfloat16)).save_pretrained("/tmp/teacher05")
# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: python3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 09 · 完整蒸馏：在 GPU 上把 Qwen2.5-0.5B 蒸馏进 1.23 亿参数的学生
#
# 前八个笔记本各自推导了一个部件；这一本只**使用** `distill_edu` 包，把它们串成一次真实的蒸馏：
# 分词器和中文维基百科 → 学生模型 → 教师 `Qwen/Qwen2.5-0.5B` → 训练器 → 损失曲线 → 三种解码策略对比 → 保存模型
# （我们自己的检查点，以及 `AutoModelForCausalLM` 能直接读取的 Hugging Face 目录）。
#
# **两种模式**，由下面“配置”单元格里的一个开关决定：
# - **完整模式**（有 GPU 时）：默认配置按免费 Colab T4 大约一小时的训练量设定；换成 A100/H100 时只需改配置单元格。
# - **小模式**（没有 GPU，或在 `nbdev_test` 里）：极小的学生、在本地现造的小教师、内置的《人民日报》语料，
#   CPU 上几十秒跑完全程——它只检查整条链路是否接通，**不**代表蒸馏效果。
#
# 在 H100 上用同一套代码做的“蒸馏 vs 纯交叉熵基线”对照实验和性能数字见仓库里的 `BENCHMARKS.md`。

# %%
import os, time, tempfile
import torch
from distill_edu.config import ModelConfig, TrainingConfig
from distill_edu.model import StudentModel, to_hf_qwen2
from distill_edu.data import load_tokenizer, create_dataloaders
from distill_edu.distill import DistillationTrainer, load_teacher_model, plot_history
from distill_edu.generate import TextGenerator, load_trained_model

# %% [markdown]
# ## 1. 环境
#
# 在 Colab 里先安装本包（`#| notest`：离线测试时跳过）。想把检查点保存到 Google Drive 的话运行第二个单元格。

# %%
#| notest
# !pip install -q git+https://github.com/distill-edu/distill_edu

# %%
#| notest
try:
    from google.colab import drive
    drive.mount("/content/drive")
    CHECKPOINT_ROOT = "/content/drive/MyDrive/distill_edu"
except ImportError:
    print("不在 Colab 中，检查点保存在本地")

# %%
import transformers, tokenizers, distill_edu
transformers.utils.logging.disable_progress_bar()            # 不让下载/存盘的进度条刷屏
print(f"distill_edu {distill_edu.__version__} | torch {torch.__version__} | transformers {transformers.__version__} | "
      f"tokenizers {tokenizers.__version__}")
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
if device.type == "cuda":
    props = torch.cuda.get_device_properties(device)
    print(f"GPU：{props.name}，{props.total_memory / 2**30:.1f} GiB，bf16 {'支持' if torch.cuda.is_bf16_supported() else '不支持（将用 fp16）'}")
else:
    print("没有 GPU：使用小模式")

# %% [markdown]
# ## 2. 配置：唯一需要改的单元格
#
# 完整模式的默认值对应原始任务表：12 层、$d=512$ 的学生（约 1.23 亿参数），batch 8 × 512，学习率 $3\times10^{-4}$，
# $\alpha=0.5$、$T=2$（原始任务表的取值；我们在 H100 上的对照实验里，同样的 token 数下 $T=1$ 的蒸馏学生明显好于
# $T=2$，也好于纯交叉熵基线，见 `BENCHMARKS.md`，想试就在下面的 `TrainingConfig` 里加上 `temperature=1.0`）。
# 维基百科默认只取前 50 MB（约 1,200 万个 token），两个 epoch。在 T4 上这大约是一小时
# （按 T4 fp16 峰值 65 TFLOP/s、约 20% 利用率估算，未在 T4 上实测）；在 A100/H100 上可以把 `max_bytes` 和 `num_epochs` 调大。
# GPU 上 `TrainingConfig` 默认 `compile=True`：第一步要先等一两分钟编译学生、教师和分块损失，之后每步快得多
# （H100 上约 3.3 倍于不编译的朴素实现，见 `BENCHMARKS.md`）；想跳过编译就设 `compile=False`。

# %%
IN_TEST = bool(os.environ.get("IN_TEST"))
FULL = device.type == "cuda" and not IN_TEST
# 完整模式用固定目录（断线后重新运行可以续训）；小模式每次用新的临时目录
RUN_DIR = globals().get("CHECKPOINT_ROOT") or (os.path.abspath("distill_edu_run") if FULL else tempfile.mkdtemp(prefix="distill_edu_"))

if FULL:
    TEACHER = "/tmp/teacher05"
    CORPUS = dict(source=".devdata/zh_modern.jsonl.xz", max_bytes=None)
    student_config = ModelConfig()
    train_config = TrainingConfig(batch_size=8, seq_len=512, max_steps=300, warmup_steps=30, log_interval=50,
                                  eval_interval=100, save_interval=1000, eval_batches=50,
                                  checkpoint_dir=os.path.join(RUN_DIR, "checkpoints"))
else:
    TEACHER = None                                   # 小模式：下面现造一个小教师
    CORPUS = dict(source="peoples_daily", max_bytes=300_000)
    student_config = ModelConfig(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128,
                                 max_seq_len=128)
    # CPU 上每个 token 都要算 15 万维的 softmax，所以小模式只用很少的 token
    train_config = TrainingConfig(batch_size=2, seq_len=32, max_steps=10, warmup_steps=2, log_interval=5,
                                  eval_interval=5, save_interval=10**6, eval_batches=2,
                                  checkpoint_dir=os.path.join(RUN_DIR, "checkpoints"))
print("完整模式" if FULL else "小模式", "|", train_config.checkpoint_dir)

# %% [markdown]
# ## 3. 分词器与数据
#
# `load_tokenizer()` 优先从 Hub 读取 Qwen2.5 的分词器；连不上 Hub 时自动用 `dashscope` 包里的官方 BPE 排名离线重建同一个分词器（见 06_data）。
# `create_dataloaders` 分词、拼接、切块，并把 token 流缓存到磁盘：第二次运行不再分词。

# %%
tokenizer = load_tokenizer(".devdata/tokenizer")
train_loader, val_loader = create_dataloaders(tokenizer, batch_size=train_config.batch_size, seq_len=train_config.seq_len,
                                              model_config=student_config, seed=train_config.seed, **CORPUS)
batch = next(iter(train_loader))
print(f"词表 {len(tokenizer):,}；训练 {len(train_loader.dataset):,} / 验证 {len(val_loader.dataset):,} 个样本；"
      f"batch 形状 {tuple(batch['input_ids'].shape)}")
assert batch["input_ids"].shape == (train_config.batch_size, train_config.seq_len)
assert torch.equal(batch["input_ids"][0, 1:], batch["labels"][0, :-1])     # labels[t] 是 input_ids[t] 的下一个 token

# %% [markdown]
# ## 4. 学生
#
# 参数量和显存：fp32 权重每个参数 4 字节，AdamW 再存两份状态（一阶、二阶矩），共 16 字节/参数。

# %%
torch.manual_seed(train_config.seed)
student = StudentModel(student_config)
n = student.count_parameters()
print(f"学生参数 {n:,}；权重 + 梯度 + AdamW 状态 ≈ {16 * n / 2**30:.2f} GiB")
assert student.lm_head.weight is student.embedding.weight

# %% [markdown]
# ## 5. 教师
#
# 完整模式直接加载 `Qwen/Qwen2.5-0.5B`（bf16；T4 上用 fp16 并检查溢出）。小模式在本地造一个小小的 Qwen2 模型，
# 用 `save_pretrained` 存盘，再用同一个 `load_teacher_model` 读回——与加载 Hub 模型走的是同一条代码路径。

# %%
if TEACHER is None:
    tiny = ModelConfig(hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=256,
                       vocab_size=151936, max_seq_len=128)           # 像 Qwen2.5 一样有 151936 行（含填充）
    torch.manual_seed(1)
    TEACHER = os.path.join(RUN_DIR, "tiny_teacher")
    to_hf_qwen2(StudentModel(tiny)).save_pretrained(TEACHER)
if device.type == "cuda": torch.cuda.reset_peak_memory_stats(device)
teacher = load_teacher_model(TEACHER, device=device, student_vocab=len(tokenizer))
print(f"教师：{sum(p.numel() for p in teacher.parameters()):,} 个参数，{next(teacher.parameters()).dtype}，"
      f"输出层 {teacher.lm_head.weight.shape[0]:,} 行（学生 {student_config.vocab_size:,}）")
if device.type == "cuda": print(f"加载教师后显存 {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")
assert not any(p.requires_grad for p in teacher.parameters())

# %% [markdown]
# ## 6. 训练
#
# 默认使用分块蒸馏损失（从不构造完整的 token × 词表 logits，见 07_distill），日志每行给出损失的各部分、学习率、
# 梯度范数、tokens/s 和 MFU。训练中途断开（Colab 常见）时，重新运行本单元格即可从最近的检查点继续。

# %%
trainer = DistillationTrainer(student, teacher, train_loader, val_loader, train_config, device, progress=FULL)
if os.path.isfile(trainer.checkpoint_path):
    trainer.load_checkpoint(); print(f"从第 {trainer.step} 步继续")
t0 = time.time()
history = trainer.train()
print(f"{trainer.step} 步，{time.time() - t0:.0f} 秒；最终验证困惑度 {history['val_ppl'][-1]:.2f}")
if device.type == "cuda": print(f"训练峰值显存 {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")
assert history["val_ppl"] and all(v == v for v in history["train_loss"])     # 有评估结果，没有 NaN

# %% [markdown]
# ## 7. 损失曲线

# %%
plot_history(history);

# %% [markdown]
# ## 8. 三种解码策略并排
#
# 同一个提示，贪心、top-k、top-p（原理见 08_generate）。小模式的学生只训练了几步，输出是乱码——这是预期的。

# %%
gen = TextGenerator(student, tokenizer, device)
for prompt in ["中国的首都是", "知识蒸馏是一种"]:
    for strategy, kw in [("greedy", {}), ("top_k", dict(top_k=50, temperature=0.8)), ("top_p", dict(top_p=0.9, temperature=0.8))]:
        text = gen.generate(prompt, max_new_tokens=40 if FULL else 10, strategy=strategy, seed=0, **kw)
        print(f"[{strategy:6}] {text!r}")

# %% [markdown]
# ## 9. 保存
#
# 两种格式：训练检查点（含优化器状态，可续训；`load_trained_model` 可直接读）和 Hugging Face 目录（任何人都能用
# `AutoModelForCausalLM.from_pretrained` 加载）。最后读回两者，确认 logits 与内存中的学生一致。

# %%
from transformers import AutoModelForCausalLM
ckpt_path = trainer.save_checkpoint()
hf_dir = os.path.join(RUN_DIR, "student_hf")
to_hf_qwen2(student).save_pretrained(hf_dir); tokenizer.save_pretrained(hf_dir)

ids = batch["input_ids"][:1, :16].to(device)
with torch.no_grad():
    ref = student.eval()(ids).float()
    from_ckpt = load_trained_model(ckpt_path, device)(ids).float()
    from_hf = AutoModelForCausalLM.from_pretrained(hf_dir).to(device).eval()(ids).logits.float()
torch.testing.assert_close(from_ckpt, ref); torch.testing.assert_close(from_hf, ref, rtol=1e-4, atol=1e-4)
print(f"检查点：{ckpt_path}\nHugging Face 目录：{hf_dir}（{sorted(os.listdir(hf_dir))}）")

# %% [markdown]
# ## 下一步
#
# - 想比较“蒸馏”和“不蒸馏”：把 `train_config` 的 `alpha` 设为 0 并把教师换成 `None`，就是同一训练器上的纯交叉熵基线；
#   我们在 H100 上做的对照实验（相同种子、数据顺序和 token 数）以及它的结论见 `BENCHMARKS.md`。
# - 命令行版本：`distill-edu train --help`；多卡：`torchrun --nproc_per_node=N -m distill_edu.cli train ...`。
