"测试共用的小零件：玩具学生/教师、合成数据、训练配置、随机 logits"
import torch
from torch.utils.data import DataLoader
from distill_edu.config import ModelConfig, TrainingConfig
from distill_edu.losses import IGNORE_INDEX
from distill_edu.model import StudentModel

V = 96            # 学生词表
V_TEACHER = 128   # 教师输出行（多出的是“填充行”）
SEQ = 16


def tiny_student(seed=0, vocab=V, hidden=32, layers=2):
    torch.manual_seed(seed)
    return StudentModel(ModelConfig(hidden_size=hidden, num_layers=layers, num_heads=4, num_kv_heads=2,
                                    intermediate_size=64, vocab_size=vocab, max_seq_len=64))


def save_hf_teacher(path, vocab=V_TEACHER, seed=1, big_weight=None):
    from transformers import Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(seed)
    cfg = Qwen2Config(hidden_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=96, vocab_size=vocab, max_position_embeddings=64, tie_word_embeddings=True)
    model = Qwen2ForCausalLM(cfg)
    if big_weight is not None:
        with torch.no_grad(): model.lm_head.weight[3, 0] = big_weight
    model.save_pretrained(path)
    return path


def markov_loader(n=48, batch=4, shuffle=True, seed=0, noise=0.1):
    "结构化的合成数据：下一个 token = (5x + 3) mod V，10% 的位置随机替换"
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        x = [int(torch.randint(0, V, (1,), generator=g))]
        for _ in range(SEQ):
            nxt = (5 * x[-1] + 3) % V
            if float(torch.rand(1, generator=g)) < noise: nxt = int(torch.randint(0, V, (1,), generator=g))
            x.append(nxt)
        t = torch.tensor(x)
        rows.append({"input_ids": t[:-1], "labels": t[1:]})
    # 与 distill_edu.data.create_dataloaders 一样带自己的 generator
    return DataLoader(rows, batch_size=batch, shuffle=shuffle, generator=torch.Generator().manual_seed(seed))


def cfg(tmp_path, **kw):
    from pathlib import Path
    tmp_path = Path(tmp_path)
    base = dict(batch_size=4, learning_rate=1e-2, warmup_steps=2, max_steps=10, alpha=0.5, temperature=2.0,
                checkpoint_dir=str(tmp_path / "ckpt"), log_interval=5, eval_interval=5, save_interval=100, seq_len=SEQ,
                loss_chunk_size=24, seed=0)
    base.update(kw)
    return TrainingConfig(**base)


def params_of(model): return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_training(a: dict, b: dict, rtol=1e-4, atol=1e-5, what=""):
    """比较两次训练得到的参数。k_proj.bias 除外：给所有键加同一个偏置 b 只让每个查询的全部分数平移 q·b，
    softmax 不变，所以它的真实梯度恒为 0，算出来的只是 ~1e-9 的舍入噪声——而 Adam 会把噪声放大成 ±lr 的更新，
    两条数值上等价的路径在这里必然不同。"""
    for k in a:
        if k.endswith("k_proj.bias"): continue
        torch.testing.assert_close(b[k], a[k], rtol=rtol, atol=atol, msg=lambda m: f"{what} 参数 {k} 不同：{m}")


def rand_inputs(seed=0, B=2, T=6, Vs=V, Vt=V_TEACHER, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(B, T, Vs, generator=g, dtype=dtype)
    t = torch.randn(B, T, Vt, generator=g, dtype=dtype) * 2
    y = torch.randint(0, Vs, (B, T), generator=g)
    y[0, :2] = IGNORE_INDEX
    return s, t, y


def run_triton_interpreter_check(script: str, timeout: int = 600):
    "在子进程里用 TRITON_INTERPRET=1 运行 tests/ 下的 script（解释器开关必须在 import triton 之前设置），它应当只打印 ok"
    import os, subprocess, sys
    r = subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__), script)],
                       env={**os.environ, "TRITON_INTERPRET": "1"}, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout[-2000:] + r.stderr[-4000:]
