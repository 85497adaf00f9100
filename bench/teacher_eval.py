"""真实教师的底子：它在本项目离线语料验证集上的困惑度（bf16 与 fp16）、fp16 logits 是否保持有限，
以及我们从零实现的 StudentModel 装上同一份权重后，与 transformers 的 top-1 一致率（应为 1.0）。

教师是 `tools/gguf_to_hf.py` 转出的 Hugging Face 目录；语料按项目的验证划分（val_fraction=0.1，按文档编号）切分，
每段 seq_len 个 token，不重叠。

    PYTHONPATH=.:bench python bench/teacher_eval.py --teacher DIR --tokenizer DIR --corpus zh_modern.jsonl.xz [...]
"""
import argparse, math, sys, time
from pathlib import Path
import torch
from common import device_name, write_json
from distill_edu.data import WikiDataset
from distill_edu.tokenizer import load_tokenizer
from distill_edu.teacher import load_teacher_model, model_logits
from distill_edu.model import from_hf_qwen2


def evaluate(model, ds, batch: int, device, vocab: int, reference=None) -> dict:
    "按 batch 个样本一组前向：平均 CE → 困惑度；非有限 logits 计数；给了 reference 时统计 top-1 一致率"
    nll, n_tok, bad, agree = 0.0, 0, 0, 0
    for i in range(0, len(ds), batch):
        items = [ds[j] for j in range(i, min(i + batch, len(ds)))]
        x = torch.stack([it["input_ids"] for it in items]).to(device)
        y = torch.stack([it["labels"] for it in items]).to(device)
        with torch.inference_mode():
            logits = model_logits(model, x)[..., :vocab]
            bad += int((~torch.isfinite(logits)).sum())
            nll += float(torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum"))
            if reference is not None:
                agree += int((model_logits(reference, x)[..., :vocab].argmax(-1) == logits.argmax(-1)).sum())
        n_tok += y.numel()
    out = {"tokens": n_tok, "val_ppl": round(math.exp(nll / n_tok), 3), "nonfinite_logits": bad}
    if reference is not None: out["top1_agreement_with_ours"] = agree / n_tok
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", required=True); ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--corpus", action="append", required=True, help="可给多次：每个语料文件各评一次")
    ap.add_argument("--seq-len", type=int, default=512); ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-samples", type=int, default=None, help="每个语料最多评多少段（默认全部验证集）")
    ap.add_argument("--out", default="bench/results/teacher_eval.json")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tok = load_tokenizer(args.tokenizer)
    rows = []
    for corpus in args.corpus:
        ds = WikiDataset(tok, "validation", args.seq_len, source=corpus, max_bytes=None, verbose=False)
        if args.max_samples: ds.num_samples = min(ds.num_samples, args.max_samples)
        for dtype in ("fp32", "bf16", "fp16"):
            t0 = time.perf_counter()
            teacher = load_teacher_model(args.teacher, device=device, dtype=dtype, student_vocab=len(tok))
            ours = from_hf_qwen2(teacher).to(device).eval() if dtype != "fp16" else None
            r = evaluate(teacher, ds, args.batch, device, len(tok), reference=ours)
            rows.append({"corpus": Path(corpus).name.split(".")[0], "dtype": dtype, **r,
                         "seconds": round(time.perf_counter() - t0, 1)})
            print(rows[-1], flush=True)
            del teacher, ours
    write_json(args.out, {"bench": "teacher_eval", "device": device_name(device), "command": " ".join(["python"] + sys.argv),
                          "teacher": "Qwen2.5 Coder 0.5B Instruct AWQ (GGUF → bf16)", "seq_len": args.seq_len,
                          "rows": rows})


if __name__ == "__main__":
    main()
