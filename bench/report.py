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


def check(ok: bool) -> str: return "达到" if ok else "**未达到**"


def kd_step_targets(r) -> str:
    "issue 中的目标：默认设置峰值显存 ≤ 8 GiB、MFU ≥ 35%、吞吐 ≥ 朴素参考的 3 倍"
    d = next(x for x in r["rows"] if x["variant"] == "default")
    eager = next((x for x in r["rows"] if x["variant"] == "eager"), None)
    defaults = ", ".join(f"{k}={v}" for k, v in r["defaults"].items())
    return (f"\n“default”是 `TrainingConfig()` 的默认设置（{defaults}），“eager”是同样设置但不编译，"
            "“naive”是不分块、完整词表 logits 的 fp32 损失、不编译。"
            f"\n目标对照（默认设置）：峰值显存 {d['peak_mem_gib']} GiB（目标 ≤ 8 GiB，{check(d['peak_mem_gib'] <= 8)}）；"
            f"MFU {100 * d['mfu']:.1f}%（目标 ≥ 35%，{check(d['mfu'] >= 0.35)}）；"
            f"相对朴素参考 {d['speedup']}×（目标 ≥ 3×，{check(d['speedup'] >= 3)}）。"
            + (f"不编译时（eager）{eager['speedup']}×、{eager['peak_mem_gib']} GiB：分块本身只省显存，速度来自编译。" if eager else "")
            + "\n\n时间花在哪里（`bench/profile_step.py` 把每部分的墙钟和 GPU kernel 时间并排列出，"
            "原始输出在 `bench/results/raw/profile_step_*.log`）：LM head 跟随 autocast 用 bf16、权重行补到 128 的倍数"
            "（词表 151665 是奇数，不补 cuBLAS 只能用不对齐的慢 kernel），补出来的列在损失里遮掉；逐块的损失与梯度是手推公式，"
            "前向 KL 与纯 CE 用一个在线 softmax 的 Triton kernel（每块 logits 读两遍，`torch.compile` 生成的归约 kernel 读 6 遍），"
            "∂L/∂W 由 cuBLAS 直接累加进 float32（`addmm(out_dtype=float32)`）。学生和教师的前向（学生还有反向）录成 CUDA graph，"
            "NaN/Inf 的判断留在 GPU 上（融合版 AdamW 的 found_inf），训练器不再每步等 GPU：一步的 CPU 发射时间小于 GPU 时间，"
            "整步受 GPU 限制（`raw/profile_step_h100_c00fbb3.log`：每步约 26 ms，其中教师前向约 8 ms、学生前向 + 反向约 6 ms、"
            "分块损失约 9 ms（大头是 LM head 的四次矩阵乘）、裁剪 + AdamW 约 2 ms；`bench/check_cuda_graphs.py` 在 GPU 上检查 "
            "CUDA graph 不改变训练结果；梯度累积时只有教师录图，`--accum 2` 的损失与不录图逐位相同，"
            "`raw/check_cuda_graphs_accum2_h100x2_a374bab.log`）。"
            "实测峰值取 20 次 8192³ 矩阵乘里最快的一次：长时间满载时 H100 会降频，中位数低到约 666 TFLOP/s，"
            "用它会把 MFU 算高一成多（`raw/kd_step_h100_c00fbb3.log`）。\n")


def by_model(r) -> dict:
    "kd_experiment 结果的各行，按 model 名字索引"
    return {x["model"]: x for x in r["rows"]}


def steady_step_seconds(curve) -> float:
    "稳态每步秒数：各评估段用时的中位数，去掉第一段（它含 torch.compile 的一次性编译）"
    s = [p["seconds"] for p in curve]
    segs = sorted((b - a) / (q["step"] - p["step"]) for a, b, p, q in zip(s, s[1:], curve, curve[1:]))
    return segs[len(segs) // 2]


def kd_conclusion(runs, ce_long=None) -> str:
    "从各种子的结果里算出结论的措辞，不手写数字。runs: 各种子的 kd_experiment*.json；ce_long: 加长的 CE 基线"
    def ratio(r_, arm): return by_model(r_)[arm]["val_ppl"] / by_model(r_)["ce_baseline"]["val_ppl"]
    fmt = lambda arm: " / ".join(f"{ratio(r_, arm):.2f}" for r_ in runs)
    def verdict(arm):
        rs = [ratio(r_, arm) for r_ in runs]
        return "**胜过**" if max(rs) < 1 else "**没有胜过**" if min(rs) > 1 else "在不同种子上时好时坏，不能说胜过"
    r = runs[0]
    kd_t1 = by_model(r)["kd_forward_kl_T1"]
    best = all(max((x for x in r_["rows"] if "top1_agreement" in x), key=lambda x: x["top1_agreement"])["model"]
                   == "kd_forward_kl_T1" for r_ in runs)
    agree = "与教师的 top-1 一致率也是各学生里最高的" if best else "但与教师的 top-1 一致率不是各学生里最高的"
    cost = steady_step_seconds(r["curves"]["kd_forward_kl_T1"]) / steady_step_seconds(r["curves"]["ce_baseline"])
    text = (f"\n**结论**（种子 {' / '.join(str(r_['seed']) for r_ in runs)}，学生与基线的困惑度之比，小于 1 即蒸馏更好）：\n\n"
            f"- 同 token 数，T=1 的前向 KL 蒸馏{verdict('kd_forward_kl_T1')}纯 CE 基线：{fmt('kd_forward_kl_T1')}；{agree}。\n"
            f"- 同 token 数，`TrainingConfig` 默认的 T=2{verdict('kd_forward_kl')}基线：{fmt('kd_forward_kl')}。"
            "我们的解读：T=2 让学生去拟合被压平的分布，它的长尾在这个阶段帮不上忙，而验证困惑度衡量的是 T=1 的分布；"
            "T=1 时软标签直接就是要逼近的那个分布，又比单个硬标签多给出了整行的概率。\n"
            f"- 同墙钟：稳态下蒸馏一步的时间是基线的 {cost:.2f} 倍（多一次教师前向和整行 KL）。")
    if ce_long:
        c, n = ce_long["curves"]["ce_baseline"], r["student_steps"]
        at = [p for p in c if p["step"] <= n * cost][-1]
        same_step = next(p for p in c if p["step"] == n)
        ce = by_model(r)["ce_baseline"]
        text += (f"把同样的时间花在纯 CE 上：另跑一条 {ce_long['student_steps']} 步的基线，它第 {at['step']} 步时"
                 f"（稳态用时与蒸馏学生 {n} 步相当）困惑度是 {at['val_ppl']:.2f}，远好于蒸馏学生的 {kd_t1['val_ppl']:.2f}。"
                 f"这条加长的基线在第 {n} 步时是 {same_step['val_ppl']:.2f}，按 {n} 步计划训完的基线是 {ce['val_ppl']:.2f}"
                 + ("：学习率在更长的计划里衰减得慢，反而更好，说明这里的瓶颈更多在训练步数和学习率上。\n"
                    if same_step["val_ppl"] < ce["val_ppl"] else "。\n"))
    return text + ("\n所以在这个很短的预算里，“蒸馏后验证困惑度优于基线”只在同 token 数、T=1 时成立；"
                   "按算力算，多训练 token 更划算。学生只看了约一遍小语料，离收敛还远；"
                   "教师远强于数据本身（真实的 Qwen2.5-0.5B 见过万亿级 token）或学生训练到收敛时，"
                   "蒸馏的收益才可能值得它的代价，这需要更长的 GPU 时间来验证。\n")


def kd_section(runs, ce_long, earlier) -> str:
    r = runs[0]
    cols = ["model", "val_ppl", "ppl_at_equal_wallclock", "top1_agreement", "tokens", "train_seconds"]
    out = (provenance(r) + f"语料：{r['corpus']}；学生 {r['student_steps']} 步 × batch {r['student_batch']} × {r['seq']}；"
           f"教师 {r['teacher_steps']} 步纯 CE 预训练，存盘后经 `load_teacher_model(目录)` 读回。"
           "train_seconds 含 torch.compile 的一次性编译（第一段评估之前，10–60 s 不等），所以同墙钟一列偏向编译快的基线，"
           "稳态比较见结论。\n\n")
    for r_ in runs:
        out += f"种子 {r_['seed']}（{r_['device']}，提交 `{r_['commit']}`）：\n\n" + table(r_["rows"], cols) + "\n"
    out += ("种子 1 的 kd_forward_kl 是在另一次运行里、用另一次重训的同配方教师跑的（`bench/results/raw/students_seed1_h100.log`），"
            "表里其余学生用的是同一个教师（`raw/teacher_h100_run2.log`）。各臂的逐段曲线在 `raw/arms_h100/`。\n")
    out += kd_conclusion(runs, ce_long) + "\n![验证困惑度曲线（种子 0）](bench/results/kd_curves.png)\n"
    if earlier:
        f = by_model(earlier)
        out += ("\n**更早的一次运行（另一个教师，含反向 KL）**：" + provenance(earlier) + table(earlier["rows"], cols)
                + f"\n反向 KL（T=2）与前向 KL（T=2）几乎一样（{f['kd_reverse_kl']['val_ppl']} vs {f['kd_forward_kl']['val_ppl']}），"
                  f"都不如基线（{f['ce_baseline']['val_ppl']}）。那时还没有编译和 bf16 的 LM head，墙钟时间不可与上表比较。\n")
    return out


def ddp_remarks(r) -> str:
    "目标对照、多卡怎么做的，以及 raw/ 里更早的两卡实现（同样是 2×H100）的加速比"
    one, top = r["rows"][0], r["rows"][-1]
    earlier = sorted((json.loads(p.read_text()) for p in (RESULTS / "raw").glob("ddp_h100x2_*.json")), key=lambda x: x["date"])
    text = (f"\n目标 {top['gpus']} 卡 ≥ 1.8×：{check(top['speedup'] >= 1.8)}。每张卡 batch 8 × 512，加速比相对同一次调用里的单卡默认设置。"
            "多卡时训练器不用 DDP 包装：开训前把 rank 0 的参数广播出去，每步反向结束后把全部梯度拼成一个向量做一次 all_reduce，"
            "所以学生和单卡时一样录成 CUDA graph（07e_checkpoint 第 2 节）。"
            f"每卡每步 {top['step_ms']} ms，单卡 {one['step_ms']} ms：多出的是 123M 个 float32 梯度的拼接和经 NVLink 的 all_reduce，"
            "它不和计算重叠，所以余量不大。")
    if top.get("param_diff_across_ranks") is not None:
        text += f"计时结束后各 rank 的参数与 rank 0 的最大绝对差是 {top['param_diff_across_ranks']}（param_diff_across_ranks，应为 0）。"
    if earlier:
        text += ("更早的两卡运行（同为 2×H100，按时间先后）：" + "、".join(f"`{x['commit']}` {x['rows'][-1]['speedup']}×" for x in earlier)
                 + "（`raw/ddp_h100x2_*.json`）。`5dfba69` 用 DDP 包装，学生不能录 CUDA graph（DDP 下录图在 2×H100 上卡住，"
                   "`raw/ddp_graphs_hang_h100x2_240834b.log`），又回到受 CPU 发射限制；`e92efb7` 已是一次 all_reduce，"
                   "但平均后还要再除以卡数、拷回各参数，现在改成反向前把损失除以卡数、`.grad` 直接指向归约后的向量。")
    return text + "\n"


def kd_runs():
    "同一个教师下的各种子结果：kd_experiment.json（种子 0）、kd_experiment_seed1.json …"
    return [r for r in [load("kd_experiment"), *(load(p.stem) for p in sorted(RESULTS.glob("kd_experiment_seed*.json")))] if r]


def teacher_section(r) -> str:
    rows = [{**x, "top1_agreement_with_ours": None if "top1_agreement_with_ours" not in x
             else f"{x['top1_agreement_with_ours']:.6f}"} for x in r["rows"]]
    return (provenance(r) + f"教师：{r['teacher']}（代码/指令模型，代替连不上的 Qwen2.5-0.5B 基座）。验证集按项目的划分"
            f"（每 10 篇文档取 1 篇），每段 {r['seq_len']} 个 token、不重叠；zh_classical 只取前 3000 段。"
            "`top1_agreement_with_ours`：同一份权重装进我们的 `StudentModel` 后，与 transformers 的下一个 token 预测相同的比例。"
            "fp32 下几乎逐个相同；bf16 下两边在 GPU 上选用的 kernel 不同（舍入顺序不同），本来就接近平局的 argmax 会翻转，"
            "所以一致率略低于 1——这是 bf16 的精度，不是实现的差别（CPU 上同一 bf16 比较的 logits 差为 0，见 05_model）。\n\n"
            + table(rows, ["corpus", "dtype", "tokens", "val_ppl", "nonfinite_logits", "top1_agreement_with_ours"]))


def sections():
    out = []
    if (r := load("teacher_eval")):
        out.append(("真实教师在离线语料上的表现", teacher_section(r)))
    if (r := load("kd_step")):
        rows = [{**x, "mfu": f"{100 * x['mfu']:.1f}%"} for x in r["rows"]]
        out.append(("一步蒸馏训练（123M 学生 + 0.5B 结构教师，batch %d × %d，bf16）" % (r["batch"], r["seq"]),
                    provenance(r) + f"实测 bf16 矩阵乘峰值 {r['measured_bf16_peak_tflops']} TFLOP/s（MFU 的分母；"
                    "训练器的日志用同一个分母：开训前用同一个函数 `measured_matmul_peak` 在这张卡上实测一次）。\n\n"
                    + table(rows, ["variant", "tokens_per_sec", "step_ms", "mfu", "peak_mem_gib", "speedup"])
                    + kd_step_targets(r)))
    if (runs := kd_runs()):
        out.append(("知识蒸馏 vs 纯交叉熵基线（同种子、同数据顺序、同 token 数）",
                    kd_section(runs, load("kd_experiment_ce1400"), load("kd_experiment_h200"))))
    if (r := load("ddp")):
        out.append(("多卡数据并行", provenance(r) + table(r["rows"], ["gpus", "tokens_per_sec", "step_ms", "speedup", "peak_mem_gib",
                                                                         "param_diff_across_ranks"])
                    + ddp_remarks(r)))
    gen = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("generate_*.json"))]
    if gen:
        rows = [{**row, "device": r["device_name"], "dtype": r["dtype"], "threads": r.get("threads")} for r in gen for row in r["rows"]]
        out.append(("文本生成（默认学生，提示 %d token，生成 %d token）" % (gen[0]["prompt_len"], gen[0]["new_tokens"]),
                    "命令与读数说明见 [bench/generate.md](bench/generate.md)。\n\n"
                    + table(rows, ["device", "dtype", "threads", "batch_size", "method", "tokens_per_s", "vs_ours_cache"])))
    if (r := load("cpu_suite")):
        out.append(("CPU 测试套件（nbdev_test + pytest）", provenance(r) + table(r["rows"], ["command", "seconds", "exit_code"])))
    return out


def main():
    secs = sections()
    body = "# 性能基准\n\n由 `python bench/report.py` 从 `bench/results/*.json` 生成，请勿手改。\n\n" + \
           "".join(f"## {title}\n\n{text}\n" for title, text in secs)
    (ROOT / "BENCHMARKS.md").write_text(body, encoding="utf-8")
    runs, step, ddp = kd_runs(), load("kd_step"), load("ddp")
    summary = ""
    if runs:
        summary += (f"验证困惑度（越低越好，同 token 数，种子 {runs[0]['seed']}）：\n\n"
                    + table(runs[0]["rows"], ["model", "val_ppl", "top1_agreement"]) + kd_conclusion(runs, load("kd_experiment_ce1400")))
    if step:
        rows = [{**x, "mfu": f"{100 * x['mfu']:.1f}%"} for x in step["rows"]]
        summary += f"\n一步蒸馏训练（{step['device']}，batch {step['batch']} × {step['seq']}）：\n\n" + \
                   table(rows, ["variant", "tokens_per_sec", "mfu", "peak_mem_gib"])
    if ddp:
        x = ddp["rows"][-1]["speedup"]
        summary += f"\n两卡数据并行：{x}× 单卡吞吐（目标 ≥ 1.8×，{check(x >= 1.8)}）。\n"
    summary += "\n卡、日期、提交、命令和全部数字见 [BENCHMARKS.md](BENCHMARKS.md)。"
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
