"""把 GGUF 文件转成 bf16 的 Hugging Face 目录（config + safetensors + 分词器），`load_teacher_model(目录)` 直接读它。

    python tools/gguf_to_hf.py model.gguf out_dir [--dtype bf16|fp16|fp32]
"""
import argparse, time
import torch
from distill_edu.model import gguf_to_hf_dir

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("gguf"); ap.add_argument("out")
    ap.add_argument("--dtype", choices=DTYPES, default="bf16")
    args = ap.parse_args()
    t0 = time.perf_counter()
    out = gguf_to_hf_dir(args.gguf, args.out, DTYPES[args.dtype])
    print(f"已写出 {out}（{args.dtype}），用时 {time.perf_counter() - t0:.0f}s：", sorted(p.name for p in out.iterdir()))
