"""解码速度基准：我们的生成循环（有/无 KV 缓存、静态缓存 + CUDA graph）与 Hugging Face `generate` 在同一份权重上的对比。

用法：
    python bench/generate.py --json bench/results_cpu.json                      # CPU
    python bench/generate.py --gpu-suite --out bench/results/generate_gpu_h200.json   # GPU：一次跑完全部对比与检查

`--gpu-suite` = `--device cuda --dtype bfloat16 --naive --graphs --hf-static --check`：计时之前在 float32 下核对
CUDA graph 的贪心 = 不录图的贪心 = HF generate、批量 = 一条一条，有一处不同就以非零状态退出。

每一行测的是：预填充一个 P 个 token 的随机提示，再生成 N 个新 token（忽略 EOS，保证恰好 N 个），
吞吐量 = B × N / 总时间（含预填充）。默认模型是默认的 ModelConfig 学生（12 层、d=512、V=151665），随机权重。
"""
from __future__ import annotations
import argparse, platform, statistics, sys, time
from pathlib import Path

import torch

from distill_edu.config import ModelConfig
from common import write_json
from distill_edu.generate import StaticDecoder, TextGenerator, decode_steps
from distill_edu.model import StudentModel, to_hf_qwen2


def sync(device: torch.device):
    if device.type == "cuda": torch.cuda.synchronize(device)


def time_it(fn, device, repeats: int, warmup: int = 1) -> float:
    "fn 运行 repeats 次的中位数耗时（秒）；先不计时地运行 warmup 次"
    for _ in range(warmup): fn(); sync(device)
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


def ours(model, input_ids, mask, new_tokens, use_cache, decoder=None):
    def run():
        for _ in decode_steps(model, input_ids, mask, new_tokens, use_cache=use_cache, decoder=decoder): pass
    return run


def timed_first_call(make, device):
    "make() 建好要计时的函数（建解码器、录图、编译都算在内）并运行第一次；返回 (函数, 首次调用的秒数)"
    sync(device); start = time.perf_counter()
    fn = make(); fn(); sync(device)
    return fn, time.perf_counter() - start


def graph_run(model, input_ids, mask, new_tokens, compile):
    "静态缓存 + CUDA graph：解码器在第一次调用时建立（录图、可选编译），之后反复使用"
    def make():
        dec = StaticDecoder(model, input_ids.shape[0], input_ids.shape[1] + new_tokens, cuda_graph=True, compile=compile)
        return ours(model, input_ids, mask, new_tokens, True, dec)
    return make


def naive(model, input_ids, new_tokens):
    "最朴素的写法：每步 model(整条序列)[:, -1]，所有位置都算 lm_head"
    @torch.inference_mode()
    def run():
        tokens = input_ids
        for _ in range(new_tokens):
            next_token = model(tokens)[:, -1].argmax(-1)
            tokens = torch.cat([tokens, next_token[:, None]], dim=1)
    return run


def hf(hf_model, input_ids, mask, new_tokens, **kw):
    "kw 例如 cache_implementation='static'：HF 的静态缓存，GPU 上 generate 会自动 torch.compile 解码步（reduce-overhead）"
    @torch.inference_mode()
    def run():
        hf_model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=new_tokens,
                          min_new_tokens=new_tokens, do_sample=False, pad_token_id=0, **kw)
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
    return ids, mask, cached


def check_graphs_agree(model, ids, mask, expected, compile: bool):
    """CUDA graph 的贪心 = 不录图的贪心（float32，左填充批量），同一个解码器用两次结果不变；
    不编译时再查批量 = 一条一条（每行去掉填充单独生成）"""
    n = expected.shape[1]
    dec = StaticDecoder(model, ids.shape[0], ids.shape[1] + n, cuda_graph=True, compile=compile)
    name = "CUDA graph + compile" if compile else "CUDA graph"
    for attempt in (1, 2):
        got = torch.stack(list(decode_steps(model, ids, mask, n, decoder=dec)), 1)
        first_bad = (got != expected).any(0).nonzero()
        assert first_bad.numel() == 0, (f"{name} 的贪心输出与不录图的不同（第 {attempt} 次使用，第 {first_bad[0].item()} 步起）："
                                        f"\n  录图 {got.tolist()}\n  不录图 {expected.tolist()}")
    if not compile:
        one = StaticDecoder(model, 1, ids.shape[1] + n, cuda_graph=True)
        for row in range(ids.shape[0]):
            real = ids[row:row + 1, mask[row].bool()]
            alone = torch.stack(list(decode_steps(model, real, torch.ones_like(real), n, decoder=one)), 1)[0]
            assert torch.equal(alone, expected[row]), f"{name}：第 {row} 行批量生成 ≠ 单独生成：{expected[row].tolist()} vs {alone.tolist()}"
    print(f"检查通过：{name} = 不录图（float32 贪心，左填充批量，解码器用两次）" + ("；批量 = 一条一条" if not compile else ""))


class NumberTokenizer:
    "检查用的最小分词器：文本是空格分隔的 token 编号（TextGenerator 只用到这几个方法）"
    def __init__(self, vocab_size: int, eos_token_id: int):
        self.vocab_size, self.eos_token_id, self.pad_token_id = vocab_size, eos_token_id, 0
    def __len__(self): return self.vocab_size
    def get_vocab(self): return {}
    def encode(self, text, add_special_tokens=False): return [int(t) for t in text.split()]
    def decode(self, ids, **kw): return "".join(f" {i}" for i in ids)


def check_text_generator(model, ids, mask, expected):
    """TextGenerator 在 CUDA 上默认走 CUDA graph：与 cuda_graphs=False 的输出逐 token 相同，包括逐行停在 EOS
    （EOS 取第 0 行贪心输出里的第 5 个 token，别的行照常写满）与流式输出"""
    eos = expected[0, 5].item()
    tok = NumberTokenizer(model.config.vocab_size, eos)
    prompts = [" ".join(map(str, row[m.bool()].tolist())) for row, m in zip(ids, mask)]
    fast, plain = TextGenerator(model, tok), TextGenerator(model, tok, cuda_graphs=False)
    n = expected.shape[1]
    a, b = fast.generate_ids(prompts, n), plain.generate_ids(prompts, n)
    assert a == b, f"TextGenerator：CUDA graph {a} ≠ 不录图 {b}"
    stop = expected[0].tolist().index(eos)
    assert len(a[0]) == len(prompts[0].split()) + stop, f"第 0 行应停在 EOS（第 {stop} 步）之前：{a[0]}"
    assert fast._decoders, "CUDA 上的 TextGenerator 没有用 CUDA graph 解码器"
    streamed = "".join(fast.generate(prompts[1], n, stream=True))
    assert streamed == plain.generate(prompts[1], n), "流式输出 ≠ 非流式"
    print("检查通过：TextGenerator（CUDA graph）= TextGenerator(cuda_graphs=False)：逐行停在 EOS、流式相同")


TARGETS = {1: 1500.0, 8: 8000.0}       # tokens/s：静态缓存 + CUDA graph 在 H200 上的目标


def target_report(rows) -> dict:
    "每个 batch：最快的 ours_cuda_graph* 是否达到目标、是否快过同一次运行里每一种 HF 配置"
    out = {}
    for B, goal in TARGETS.items():
        by = {r["method"]: r["tokens_per_s"] for r in rows if r["batch_size"] == B}
        ours_best = max((v for k, v in by.items() if k.startswith("ours_cuda_graph")), default=None)
        hf_best = max((v for k, v in by.items() if k.startswith("hf_")), default=None)
        if ours_best is None: continue
        out[str(B)] = dict(target_tokens_per_s=goal, ours_best=ours_best, hf_best=hf_best, meets_target=ours_best >= goal,
                           beats_hf=None if hf_best is None else ours_best > hf_best)
    return out


def _command(argv: list[str]) -> str:
    "记录进 JSON 的命令：输出文件写成仓库里的 bench/results/<文件名>（别的机器上的路径对读者没有意义）"
    argv = list(argv)
    for i, a in enumerate(argv[:-1]):
        if a in ("--out", "--json"): argv[i + 1] = f"bench/results/{Path(argv[i + 1]).name}"
    return "python bench/generate.py " + " ".join(argv)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", "--out", dest="json", required=True, help="结果写到这个 JSON 文件")
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
    ap.add_argument("--check", action="store_true", help="计时前检查有缓存/无缓存/HF（以及 --graphs 的 CUDA graph）的贪心输出一致")
    ap.add_argument("--graphs", action="store_true", help="另测静态缓存 + CUDA graph（不编译与编译两种，仅 CUDA）")
    ap.add_argument("--hf-static", action="store_true", help="另测 HF generate(cache_implementation='static')（GPU 上自动编译）")
    ap.add_argument("--gpu-suite", action="store_true", help="= --device cuda --dtype bfloat16 --naive --graphs --hf-static --check")
    args = ap.parse_args(argv)
    if args.gpu_suite:
        args.device, args.dtype, args.naive, args.graphs, args.hf_static, args.check = "cuda", "bfloat16", True, True, True, True
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}（或 --gpu-suite）需要 GPU，但 torch.cuda.is_available() 为 False（torch {torch.__version__}）")
    if args.graphs and not args.device.startswith("cuda"):
        raise SystemExit("--graphs 只能在 CUDA 上测（CUDA graph）；CPU 上请去掉 --graphs")
    if args.hf_static and args.no_hf: raise SystemExit("--hf-static 与 --no-hf 互相矛盾")

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    cfg = ModelConfig(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128,
                      vocab_size=1000) if args.tiny else ModelConfig()
    torch.manual_seed(0)
    model = StudentModel(cfg).to(device).eval()
    hf_model = None if args.no_hf else to_hf_qwen2(model).eval()
    if args.check and hf_model is not None:
        try:
            ids, check_mask, expected = check_greedy_agrees(model, hf_model, cfg, device)
            if args.graphs:
                for compile in (False, True): check_graphs_agree(model, ids, check_mask, expected, compile)
                check_text_generator(model, ids, check_mask, expected)
        except AssertionError as e:
            raise SystemExit(f"检查失败，不计时：{e}")
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
        firsts = {}                    # 首次调用（含建解码器、录图、编译）的方法：先单独计时一次，之后照常计时
        if args.graphs:
            firsts["ours_cuda_graph"] = graph_run(model, input_ids, mask, args.new_tokens, compile=False)
            firsts["ours_cuda_graph_compiled"] = graph_run(model, input_ids, mask, args.new_tokens, compile=True)
        if args.hf_static:
            firsts["hf_generate_static"] = lambda: hf(hf_model, input_ids, mask, args.new_tokens, cache_implementation="static")
        for name, make in firsts.items():
            runs[name], first = timed_first_call(make, device)
            runs[name].first_call_s = round(first, 2)
        for name, fn in runs.items():
            slow = name in ("ours_no_cache", "naive_full_logits")
            warmup = 2 if name == "hf_generate_static" else int(not slow or device.type == "cuda")   # HF 的 cudagraph 第二次调用才录
            seconds = time_it(fn, device, 1 if slow else args.repeats, warmup=warmup)
            rows.append(dict(batch_size=B, method=name, seconds=round(seconds, 4),
                             tokens_per_s=round(B * args.new_tokens / seconds, 1),
                             first_call_s=getattr(fn, "first_call_s", None)))
            print(f"  B={B} {name}: {rows[-1]['tokens_per_s']} tok/s"
                  + (f"（首次调用 {rows[-1]['first_call_s']} 秒）" if rows[-1]["first_call_s"] is not None else ""), flush=True)

    for B in args.batch_sizes:
        by = {r["method"]: r for r in rows if r["batch_size"] == B}
        base = by["ours_cache"]["tokens_per_s"]
        for r in by.values(): r["vs_ours_cache"] = round(r["tokens_per_s"] / base, 3)

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"\n设备 {device_name}，{args.dtype}，提示 {args.prompt_len} 个 token，生成 {args.new_tokens} 个，"
          f"{'tiny' if args.tiny else '默认学生'}模型（{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M 参数）")
    print(f"{'B':>3} {'方法':<26} {'秒':>9} {'tok/s':>10} {'相对有缓存':>10} {'首次调用秒':>10}")
    for r in rows:
        first = "" if r["first_call_s"] is None else f"{r['first_call_s']:.2f}"
        print(f"{r['batch_size']:>3} {r['method']:<26} {r['seconds']:>9.3f} {r['tokens_per_s']:>10.1f} "
              f"{r['vs_ours_cache']:>10.3f} {first:>10}")
    targets = target_report(rows)
    for B, t in targets.items():
        print(f"目标 batch {B}：最快的 CUDA graph {t['ours_best']} tok/s（目标 ≥ {t['target_tokens_per_s']:.0f}："
              f"{'达到' if t['meets_target'] else '未达到'}），最快的 HF {t['hf_best']} tok/s"
              f"（{'领先' if t['beats_hf'] else '落后' if t['beats_hf'] is not None else '未测'}）")
    import transformers
    result = dict(device=str(device), device_name=device_name, dtype=args.dtype, torch=torch.__version__,
                  transformers=transformers.__version__, threads=torch.get_num_threads(), prompt_len=args.prompt_len,
                  new_tokens=args.new_tokens, model="tiny" if args.tiny else "default", config=cfg.to_dict(), rows=rows,
                  checked=bool(args.check and hf_model is not None), targets=targets,
                  command=_command(sys.argv[1:] if argv is None else argv))
    write_json(args.json, result)                                      # 加上日期与提交
    print(f"已写入 {args.json}")


if __name__ == "__main__":
    main()
