"""多卡数据并行的扩展效率：同一台机器上 1 张与 N 张 GPU 的蒸馏训练 tokens/s（每张卡 batch 8 × 512）。

    torchrun --nproc_per_node=1 bench/ddp.py --out bench/results/ddp_1.json
    torchrun --nproc_per_node=2 bench/ddp.py --out bench/results/ddp_2.json
    python bench/ddp.py --summarize bench/results/ddp_1.json bench/results/ddp_2.json --out bench/results/ddp.json
"""
import argparse, faulthandler, json, os
import torch
import torch.distributed as dist
from kd_step import run_variant, teacher_model
from common import device_name, measured_matmul_peak, write_json, print_table


def measure(args):
    faulthandler.dump_traceback_later(args.watchdog, exit=True)          # 卡住时打印各线程的栈并退出，而不是一直等
    dist.init_process_group("nccl")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
    torch.cuda.set_device(device)
    torch.backends.cuda.matmul.allow_tf32 = True
    args.peak = measured_matmul_peak(device)
    row = run_variant(f"{world} GPU", teacher_model(device), args, device)
    if rank == 0:
        write_json(args.out, {"benchmark": "ddp", "world_size": world, "device": device_name(device), "row": row,
                              "batch_per_gpu": args.batch, "seq": args.seq})
        print(row)
    dist.destroy_process_group()


def summarize(paths, out):
    runs = sorted((json.load(open(p)) for p in paths), key=lambda r: r["world_size"])
    base = runs[0]["row"]["tokens_per_sec"]
    rows = [{"gpus": r["world_size"], "tokens_per_sec": r["row"]["tokens_per_sec"], "step_ms": r["row"]["step_ms"],
             "speedup": round(r["row"]["tokens_per_sec"] / base, 2), "peak_mem_gib": r["row"]["peak_mem_gib"],
             "param_diff_across_ranks": r["row"].get("param_diff_across_ranks")} for r in runs]
    print_table(rows, ["gpus", "tokens_per_sec", "step_ms", "speedup", "peak_mem_gib", "param_diff_across_ranks"])
    write_json(out, {"benchmark": "ddp", "device": runs[0]["device"], "rows": rows,
                     "command": "torchrun --nproc_per_node=N bench/ddp.py"})


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results/ddp.json")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--watchdog", type=int, default=600, help="超过这么多秒还没跑完就打印栈并退出")
    ap.add_argument("--summarize", nargs="*")
    args = ap.parse_args()
    summarize(args.summarize, args.out) if args.summarize else measure(args)
