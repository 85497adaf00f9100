"""解码速度基准：我们的生成循环（有/无 KV 缓存）与 Hugging Face `generate` 在同一份权重上的对比。

用法（CPU 或 GPU 均可）：
    python bench/generate.py --json bench/results_cpu.json
    python bench/generate.py --device cuda --dtype bfloat16 --compile --json bench/results_gpu.json

每一行测的是：预填充一个 P 个 token 的随机提示，再生成 N 个新 token（忽略 EOS，保证恰好 N 个），
吞吐量 = B × N / 总时间（含预填充）。默认模型是默认的 ModelConfig 学生（12 层、d=512、V=151665），随机权重。
"""
from __future__ import annotations
import argparse, platform, statistics, time

import torch

from distill_edu.config import ModelConfig
from common import write_json
from distill_edu.generate import decode_steps
from distill_edu.model import StudentModel, to_hf_qwen2


def sync(device: torch.device):
    if device.type == "cuda": torch.cuda.synchronize(device)


def time_it(fn, device, repeats: int, warmup: bool = True) -> float:
    "fn 运行 repeats 次的中位数耗时（秒）；warmup 时先不计时地运行一次"
    if warmup: fn(); sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter(); fn(); sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class CompiledView(torch.nn.Module):
    "与原模型共享权重，但 hidden_states 经过 torch.compile（decode_steps 只用 config、hidden_states、lm_head）"
    def __init__(self, model, **compile_kwargs):
        super().__init__()
        self.inner, self.config, self.lm_head = model, model.config, model.lm_head
        self.hidden_states = torch.compile(model.hidden_states, **compile_kwargs)


def ours(model, input_ids, mask, new_tokens, use_cache):
    def run():
        for _ in decode_steps(model, input_ids, mask, new_tokens, use_cache=use_cache): pass
    return run


def naive(model, input_ids, new_tokens):
    "最朴素的写法：每步 model(整条序列)[:, -1]，所有位置都算 lm_head"
    @torch.inference_mode()
    def run():
        tokens = input_ids
        for _ in range(new_tokens):
            next_token = model(tokens)[:, -1].argmax(-1)
            tokens = torch.cat([tokens, next_token[:, None]], dim=1)
    return run


def hf(hf_model, input_ids, mask, new_tokens):
    @torch.inference_mode()
    def run():
        hf_model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=new_tokens,
                          min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    return run


def check_greedy_agrees(model, hf_model, cfg, device):
    "计时之前先确认：有缓存、无缓存、HF generate 的贪心 token 完全相同（float32、左填充批量）"
    ids = torch.randint(0, cfg.vocab_size, (3, 16), device=device)
    mask = torch.ones_like(ids); mask[0, :5] = 0
    model, hf_model = model.float(), hf_model.float()
    cached = torch.stack(list(decode_steps(model, ids, mask, 24)), 1)
    uncached = torch.stack(list(decode_steps(model, ids, mask, 24, use_cache=False)), 1)
    with torch.inference_mode():
        hf_out = hf_model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=24, min_new_tokens=24,
                                   do_sample=False, pad_token_id=0)[:, ids.shape[1]:]
    assert torch.equal(cached, uncached), "有缓存与无缓存的贪心输出不同"
    assert torch.equal(cached, hf_out), "我们的贪心与 HF generate 不同"
    print("检查通过：有缓存 = 无缓存 = HF generate（float32 贪心，左填充批量）")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", required=True, help="结果写到这个 JSON 文件")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tiny", action="store_true", help="用 2 层小模型（冒烟测试）")
    ap.add_argument("--no-uncached", action="store_true", help="跳过不用缓存的对照（最慢的部分）")
    ap.add_argument("--naive", action="store_true", help="加测最朴素的 model(整条序列)[:, -1] 写法（只测 batch 1）")
    ap.add_argument("--no-hf", action="store_true", help="跳过 Hugging Face generate")
    ap.add_argument("--compile", action="store_true", help="另测 torch.compile 过的模型（有缓存）")
    ap.add_argument("--check", action="store_true", help="计时前检查有缓存/无缓存/HF 的贪心输出一致")
    args = ap.parse_args(argv)

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    cfg = ModelConfig(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128,
                      vocab_size=1000) if args.tiny else ModelConfig()
    torch.manual_seed(0)
    model = StudentModel(cfg).to(device).eval()
    hf_model = None if args.no_hf else to_hf_qwen2(model).eval()
    if args.check and hf_model is not None: check_greedy_agrees(model, hf_model, cfg, device)
    model = model.to(dtype)
    hf_model = hf_model.to(dtype) if hf_model is not None else None
    compiled = CompiledView(model, dynamic=True) if args.compile else None

    rows = []
    for B in args.batch_sizes:
        input_ids = torch.randint(0, cfg.vocab_size, (B, args.prompt_len), device=device)
        mask = torch.ones_like(input_ids)
        runs = {"ours_cache": ours(model, input_ids, mask, args.new_tokens, True)}
        if not args.no_uncached: runs["ours_no_cache"] = ours(model, input_ids, mask, args.new_tokens, False)
        if args.naive and B == 1: runs["naive_full_logits"] = naive(model, input_ids, args.new_tokens)
        if hf_model is not None: runs["hf_generate"] = hf(hf_model, input_ids, mask, args.new_tokens)
        if compiled is not None: runs["ours_cache_compiled"] = ours(compiled, input_ids, mask, args.new_tokens, True)
        for name, fn in runs.items():
            slow = name in ("ours_no_cache", "naive_full_logits")
            seconds = time_it(fn, device, 1 if slow else args.repeats, warmup=not slow or device.type == "cuda")
            rows.append(dict(batch_size=B, method=name, seconds=round(seconds, 4),
                             tokens_per_s=round(B * args.new_tokens / seconds, 1)))
            print(f"  B={B} {name}: {rows[-1]['tokens_per_s']} tok/s", flush=True)

    for B in args.batch_sizes:
        by = {r["method"]: r for r in rows if r["batch_size"] == B}
        base = by["ours_cache"]["tokens_per_s"]
        for r in by.values(): r["vs_ours_cache"] = round(r["tokens_per_s"] / base, 3)

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"\n设备 {device_name}，{args.dtype}，提示 {args.prompt_len} 个 token，生成 {args.new_tokens} 个，"
          f"{'tiny' if args.tiny else '默认学生'}模型（{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M 参数）")
    print(f"{'B':>3} {'方法':<22} {'秒':>9} {'tok/s':>10} {'相对有缓存':>10}")
    for r in rows:
        print(f"{r['batch_size']:>3} {r['method']:<22} {r['seconds']:>9.3f} {r['tokens_per_s']:>10.1f} "
              f"{r['vs_ours_cache']:>10.3f}")
    result = dict(device=str(device), device_name=device_name, dtype=args.dtype, torch=torch.__version__,
                  threads=torch.get_num_threads(), prompt_len=args.prompt_len, new_tokens=args.new_tokens,
                  model="tiny" if args.tiny else "default", config=cfg.to_dict(), rows=rows)
    write_json(args.json, result)                                      # 加上日期与提交
    print(f"已写入 {args.json}")


if __name__ == "__main__":
    main()
