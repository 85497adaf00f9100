"""把 bench/results/*.json 汇总成 BENCHMARKS.md，并更新 nbs/index.ipynb（README 的来源）里的性能表。

所有数字都来自 JSON 结果文件（由各基准脚本实测写出），这里只做排版。

    python bench/report.py && jupyter nbconvert --to markdown nbs/index.ipynb --output-dir . --output README
"""
import json, re
from pathlib import Path

RESULTS, ROOT = Path("bench/results"), Path(".")
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def load(name):
    p = RESULTS / f"{name}.json"
    return json.loads(p.read_text()) if p.is_file() else None


def table(rows, cols):
    head = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
    return head + "".join("| " + " | ".join("" if r.get(c) is None else str(r.get(c)) for c in cols) + " |\n" for r in rows)


def provenance(res):
    return f"卡：{res['device']}；日期：{res['date']}；提交：`{res['commit']}`；命令：`{res.get('command', '')}`\n\n"


def sections():
    out = []
    if (r := load("kd_step")):
        rows = [{**x, "mfu": f"{100 * x['mfu']:.1f}%"} for x in r["rows"]]
        out.append(("一步蒸馏训练（123M 学生 + 0.5B 结构教师，batch %d × %d，bf16）" % (r["batch"], r["seq"]),
                    provenance(r) + f"实测 bf16 矩阵乘峰值 {r['measured_bf16_peak_tflops']} TFLOP/s（MFU 的分母）。\n\n"
                    + table(rows, ["variant", "tokens_per_sec", "step_ms", "mfu", "peak_mem_gib", "speedup"])))
    if (r := load("kd_experiment")):
        out.append(("知识蒸馏 vs 纯交叉熵基线（同种子、同数据顺序、同 token 数）",
                    provenance(r) + f"语料：{r['corpus']}；学生 {r['student_steps']} 步 × batch {r['student_batch']} × {r['seq']}；"
                    f"教师 {r['teacher_steps']} 步纯 CE 预训练。同墙钟比较点：{r['equal_wallclock_seconds']:.0f} s。\n\n"
                    + table(r["rows"], ["model", "val_ppl", "ppl_at_equal_wallclock", "top1_agreement", "tokens", "train_seconds"])
                    + "\n![验证困惑度曲线](bench/results/kd_curves.png)\n"))
    if (r := load("ddp")):
        out.append(("多卡数据并行", provenance(r) + table(r["rows"], ["gpus", "tokens_per_sec", "speedup", "peak_mem_gib"])))
    for name in ("generate_gpu", "generate_cpu"):
        if (r := load(name)) and "rows" in r:
            cols = [c for c in r["rows"][0].keys()]
            out.append((f"文本生成（{r['device']}）", provenance(r) + table(r["rows"], cols)))
    if (r := load("cpu_suite")):
        out.append(("CPU 测试套件（nbdev_test + pytest）", provenance(r) + table(r["rows"], ["command", "seconds", "exit_code"])))
    return out


def main():
    secs = sections()
    body = "# 性能基准\n\n由 `python bench/report.py` 从 `bench/results/*.json` 生成，请勿手改。\n\n" + \
           "".join(f"## {title}\n\n{text}\n" for title, text in secs)
    (ROOT / "BENCHMARKS.md").write_text(body, encoding="utf-8")
    summary = "\n".join(f"- **{title}**：见 [BENCHMARKS.md](BENCHMARKS.md)" for title, _ in secs)
    kd = load("kd_experiment")
    if kd: summary = "验证困惑度（越低越好）：\n\n" + table(kd["rows"], ["model", "val_ppl", "top1_agreement"]) + "\n" + summary
    nb_path = Path("nbs/index.ipynb")
    nb = json.loads(nb_path.read_text(encoding="utf-8"))
    for cell in nb["cells"]:
        src = "".join(cell["source"])
        if BEGIN in src:
            src = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), BEGIN + "\n" + summary + "\n" + END, src, flags=re.S)
            cell["source"] = src.splitlines(keepends=True)
    nb_path.write_text(json.dumps(nb, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"写入 BENCHMARKS.md（{len(secs)} 节），更新 nbs/index.ipynb")


if __name__ == "__main__":
    main()
