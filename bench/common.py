"bench/ 下各脚本共用的小工具：机器信息、实测 bf16 矩阵乘峰值、写 JSON"
import json, os, platform, subprocess
from datetime import datetime, timezone
import torch
from distill_edu.teacher import measured_matmul_peak   # 训练日志的 MFU 用同一个分母


def git_commit() -> str:
    "当前提交；设备机器上没有 .git 时由环境变量 BENCH_COMMIT 传入"
    if os.environ.get("BENCH_COMMIT"): return os.environ["BENCH_COMMIT"]
    try: return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True, stderr=subprocess.DEVNULL).strip()
    except Exception: return "unknown"


def device_name(device) -> str:
    device = torch.device(device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} 核)"


def cuda_times(fn, reps: int = 10, warmup: int = 3) -> list[float]:
    "fn 每次运行的 GPU 时间（毫秒，CUDA event 计时，预热 warmup 次后运行 reps 次），从快到慢排好"
    for _ in range(warmup): fn()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record(); torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return sorted(times)


def cuda_ms(fn, reps: int = 10, warmup: int = 3) -> float:
    "fn 的 GPU 时间（毫秒，reps 次的中位数）"
    times = cuda_times(fn, reps, warmup)
    return times[len(times) // 2]


def print_top_ops(fn, top: int = 12, title: str | None = None):
    "在 CPU + CUDA 剖析器下运行 fn() 一次（结束时同步 GPU），打印按 GPU 自身时间、再按 CPU 自身时间排序的前 top 个算子"
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn(); torch.cuda.synchronize()
    if title: print(f"\n== {title}")
    for key in ("self_cuda_time_total", "self_cpu_time_total"):
        print(prof.key_averages().table(sort_by=key, row_limit=top, max_name_column_width=60))


def write_json(path, payload: dict):
    payload = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "commit": git_commit(), **payload}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f: json.dump(payload, f, ensure_ascii=False, indent=2)
    return payload


def print_table(rows: list[dict], cols: list[str]):
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in cols]
    print(" | ".join(c.ljust(w) for c, w in zip(cols, widths)))
    print("-+-".join("-" * w for w in widths))
    for r in rows: print(" | ".join(str(r.get(c, "")).ljust(w) for c, w in zip(cols, widths)))
