"""batch 1 的静态缓存 + CUDA graph 解码把时间花在哪里（默认学生、随机权重、bf16，提示 32 个 token，生成 256 个）。

逐层剥开一个 token 的价钱：完整的生成循环（采样在图外）→ 只 `step()`（拷 token + replay）→ 只 `replay()` →
把贪心选 token 也录进图里；再看图里有多少个 kernel、哪些最贵，以及编译选项的作用：`StaticDecoder` 用的
`DECODE_COMPILE_OPTIONS`（coordinate descent 调优）对比 inductor 的默认选项，再加 max-autotune 的 Triton 矩阵乘模板又如何。只打印，不写 JSON。

    python bench/profile_decode.py            # 在 GPU 机器上
"""
import time
import torch
from torch.profiler import ProfilerActivity, profile
from distill_edu.config import ModelConfig
from distill_edu.model import StudentModel
from distill_edu.generate import DECODE_COMPILE_OPTIONS, StaticDecoder, decode_steps, static_decode_step
from common import print_top_ops

P, N = 32, 256


def per_token_ms(fn, setup=None, n=N, repeats=3) -> float:
    "fn() 跑 n 个 token（每次之前 setup()，例如重新预填充，让槽位从头写起）；取最快的一次，返回每个 token 的毫秒数"
    best = float("inf")
    for _ in range(repeats):
        if setup: setup()
        torch.cuda.synchronize(); t = time.perf_counter()
        fn(); torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best / n * 1000


def build(model, compile, label):
    t = time.perf_counter()
    dec = StaticDecoder(model, 1, P + N, cuda_graph=True, compile=compile)
    print(f"{label}: 建解码器 {time.perf_counter() - t:.1f} s")
    return dec


def graph_costs(dec, prefill, label):
    "只 replay 的每 token 时间，以及一次 replay 里的 kernel 个数与 GPU 时间（与 profile_step.kernel_ms 同样只数 kernel）"
    def replays():
        for _ in range(N): dec.graph.replay()
    ms = per_token_ms(replays, lambda: prefill(dec))
    prefill(dec)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(10): dec.graph.replay()
        torch.cuda.synchronize()
    kernels = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    count, gpu_ms = sum(e.count for e in kernels) / 10, sum(e.self_device_time_total for e in kernels) / 10 / 1000
    print(f"{label}: 只 replay {ms:.3f} ms/token（{1000 / ms:,.0f} tok/s）；一次 replay {count:.0f} 个 kernel，GPU 忙 {gpu_ms:.3f} ms")


def main():
    torch.manual_seed(0)
    dev = torch.device("cuda")
    model = StudentModel(ModelConfig()).to(dev, torch.bfloat16).eval().requires_grad_(False)
    ids = torch.randint(0, model.config.vocab_size, (1, P), device=dev)
    mask = torch.ones_like(ids)
    prefill = lambda dec: dec.prefill(ids, mask)
    print(f"{torch.cuda.get_device_name(dev)}，torch {torch.__version__}，batch 1，提示 {P}，生成 {N}")

    for compile in (False, True):
        label = "compile" if compile else "eager 录图"
        dec = build(model, compile, label)
        loop = lambda: [None for _ in decode_steps(model, ids, mask, N, decoder=dec, vocab_limit=model.config.vocab_size)]
        ms = per_token_ms(loop)
        print(f"{label}: 完整循环 {ms:.3f} ms/token（{1000 / ms:,.0f} tok/s）")
        tok = torch.zeros(1, dtype=torch.long, device=dev)
        def steps():
            for _ in range(N): dec.step(tok)
        print(f"{label}: 只 step（拷 token + replay）{per_token_ms(steps, lambda: prefill(dec)):.3f} ms/token")
        graph_costs(dec, prefill, label)

        # 贪心也录进图：replay 一次 = 前向 + argmax + 把新 token 写回输入，主机什么都不用做
        prefill(dec)
        g = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(g):
            logits = dec._run()
            dec.token.copy_(logits.argmax(-1, keepdim=True))
        def greedy_in_graph():
            for _ in range(N): g.replay()
        print(f"{label}: 贪心录进图 {per_token_ms(greedy_in_graph, lambda: prefill(dec)):.3f} ms/token\n")
        if compile:
            prefill(dec)
            print_top_ops(lambda: [dec.graph.replay() for _ in range(10)], 15, f"{label}：10 次 replay 里最贵的 kernel")
        del dec, g

    for name, options in (("inductor 默认选项（不做 coordinate descent）", {}),
                          ("再加 max-autotune 的 Triton 矩阵乘模板", {**DECODE_COMPILE_OPTIONS, "max_autotune": True})):
        torch._dynamo.reset()
        t = time.perf_counter()
        dec = StaticDecoder(model, 1, P + N, cuda_graph=False)
        step = torch.compile(static_decode_step, fullgraph=True, dynamic=False, options=options)
        dec._run = lambda: step(dec.model, dec.cache, dec.token, dec.position)
        dec._capture(3)
        print(f"{name}: 建解码器 {time.perf_counter() - t:.1f} s")
        graph_costs(dec, prefill, name)
        del dec


if __name__ == "__main__":
    main()
