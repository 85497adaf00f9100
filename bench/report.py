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
    return f"卡：{res.get('device_name', res['device'])}；日期：{res['date']}；命令：`{res.get('command', '')}`\n\n"


def kd_step_targets(r) -> str:
    "默认设置的峰值显存、MFU、相对朴素参考的加速比，以及时间花在哪里"
    d = next(x for x in r["rows"] if x["variant"] == "default")
    eager = next((x for x in r["rows"] if x["variant"] == "eager"), None)
    defaults = ", ".join(f"{k}={v}" for k, v in r["defaults"].items())
    return (f"\n“default”是 `TrainingConfig()` 的默认设置（{defaults}），“eager”是同样设置但不编译，"
            "“naive”是不分块、完整词表 logits 的 fp32 损失、不编译。"
            f"\n默认设置：峰值显存 {d['peak_mem_gib']} GiB，MFU {100 * d['mfu']:.1f}%，是朴素参考的 {d['speedup']}×。"
            + (f"不编译时（eager）{eager['speedup']}×、{eager['peak_mem_gib']} GiB：分块本身只省显存，速度来自编译。" if eager else "")
            + "\n\n时间花在哪里（`bench/profile_step.py` 把每部分的墙钟和 GPU kernel 时间并排列出，"
            "原始输出在 `bench/results/raw/profile_step_h100.log`）：LM head 跟随 autocast 用 bf16、权重行补到 128 的倍数"
            "（词表 151665 是奇数，不补 cuBLAS 只能用不对齐的慢 kernel），补出来的列在损失里遮掉；逐块的损失与梯度是手推公式，"
            "前向 KL 与纯 CE 用一个在线 softmax 的 Triton kernel（每块 logits 读两遍，`torch.compile` 生成的归约 kernel 读 6 遍），"
            "∂L/∂W 由 cuBLAS 直接累加进 float32（`addmm(out_dtype=float32)`）。学生和教师的前向（学生还有反向）录成 CUDA graph，"
            "NaN/Inf 的判断留在 GPU 上（融合版 AdamW 的 found_inf），训练器不再每步等 GPU：一步的 CPU 发射时间小于 GPU 时间，"
            "整步受 GPU 限制（`raw/profile_step_h100.log`：每步约 26 ms，其中教师前向约 8 ms、学生前向 + 反向约 6 ms、"
            "分块损失约 9 ms（大头是 LM head 的四次矩阵乘）、裁剪 + AdamW 约 2 ms；`bench/check_cuda_graphs.py` 在 GPU 上检查 "
            "CUDA graph 不改变训练结果；梯度累积时只有教师录图，`--accum 2` 的损失与不录图逐位相同，"
            "`raw/check_cuda_graphs_accum2_h100x2.log`）。"
            "实测峰值取 20 次 8192³ 矩阵乘里最快的一次：长时间满载时 H100 会降频，中位数低到约 666 TFLOP/s，"
            "用它会把 MFU 算高一成多（`raw/kd_step_h100.log`）。\n")


def kd_rows(r) -> dict: return {x["arm"]: x for x in r["rows"]}


def kd_conclusion(r) -> str:
    "结论的措辞由数字决定：各组对同 token 数的 ce、同 GPU 时间的 ce_time 的比值（两个种子的平均）"
    a = kd_rows(r)
    ratio = lambda arm, base, where="val_ppl": a[arm][where] / a[base][where]
    best = a["ce_time"]["best_val_ppl"]
    out = (f"\n**同 token 数**（{a['ce']['steps']} 步，约 {a['ce']['steps'] * r['batch'] * r['seq'] / r['data']['train_tokens']:.0f} 个 epoch）："
           f"在线前向 KL（τ=1）的验证困惑度是 CE 的 {ratio('kd_t1', 'ce'):.2f}×，τ=2 是 {ratio('kd_t2', 'ce'):.2f}×，"
           f"教师缓存（top-{r['cache']['k']} + 尾部桶）是 {ratio('sparse', 'ce'):.2f}×；留出领域上分别是 CE 的 "
           f"1/{1 / ratio('kd_t1', 'ce', 'heldout_ppl'):.0f}、1/{1 / ratio('kd_t2', 'ce', 'heldout_ppl'):.0f}、"
           f"1/{1 / ratio('sparse', 'ce', 'heldout_ppl'):.0f}。"
           f"\n\n**同 GPU 时间**（{a['ce_time']['gpu_seconds']:.0f} 秒，CE 走 {a['ce_time']['steps']} 步）：CE 的终点过拟合，"
           f"验证困惑度 {a['ce_time']['val_ppl']}，但它曲线上最好的一点是 {best}（用验证集挑停止点，偏向 CE）。"
           f"教师缓存同样的时间走 {a['sparse_time']['steps']} 步，终点 {a['sparse_time']['val_ppl']}："
           f"比 CE 的终点低 {100 * (1 - ratio('sparse_time', 'ce_time')):.0f}%，比 CE 曲线上最好的一点"
           f"{'低' if a['sparse_time']['val_ppl'] < best else '高'} {100 * abs(1 - a['sparse_time']['val_ppl'] / best):.0f}%"
           f"（两个种子各是 {' / '.join(f'{v / b:.2f}×' for v, b in zip(a['sparse_time']['per_seed_val_ppl'], a['ce_time']['per_seed_best_val_ppl']))}，"
           "一个种子高、一个种子低）；"
           f"在线 KD（τ=1）每步贵一倍，同样的时间只走 {a['kd_t1']['steps']} 步，终点 {a['kd_t1']['val_ppl']}。"
           f"留出领域上教师缓存是 CE 终点的 1/{1 / ratio('sparse_time', 'ce_time', 'heldout_ppl'):.0f}。"
           "要在同 GPU 时间上稳稳胜过早停的 CE，缓存的一步还得更便宜（见下一节）。"
           "\n\n**读法**：训练集只有约一百万 token，123M 的学生几个 epoch 就开始背诵，CE 越训越差；教师的软目标是一种"
           "不会被背下来的正则，蒸馏的学生在同样的 epoch 数里一直在变好。留出领域（技术文档，满是训练集里没有的英文和代码 token）"
           "上差距是几个数量级：只见过新闻的 CE 学生把这些 token 的概率压到几乎为零，教师的分布把概率分给了它们。"
           "尾部桶只告诉学生“词表其余部分一共多少概率”，不告诉形状，所以留出领域上缓存不如在线 KD；α=0.9 更偏向教师，"
           "留出领域最好、验证集变差。推荐的配方（写在 00_config 的 TrainingConfig 说明里，07c 讲缓存）：有缓存时用缓存（τ=1、α=0.5、top-64 + 尾部桶），"
           "没有缓存、或更在意未见领域时用在线前向 KL（τ=1）。\n")
    return out


def kd_section(r) -> str:
    rows = [{**x, "per_seed_val_ppl": " / ".join(map(str, x["per_seed_val_ppl"]))} for x in r["rows"]]
    d = r["data"]
    return (provenance(r) + f"教师：真实的 Qwen2.5-Coder-0.5B-Instruct（验证集困惑度 {r['teacher']['val']}，留出领域 "
            f"{r['teacher']['heldout']}）。学生：默认的 123M 配置，batch {r['batch']} × {r['seq']}，bf16，编译。"
            f"训练集：zh_modern 里的《人民日报》1998 年 1 月（{d['train_tokens']:,} token），验证集是同一来源每 10 篇取 1 篇"
            f"（{d['val_tokens']:,} token）；留出领域：同一文件里的 Debian 中文文档（{d['heldout_tokens']:,} token，取前 24 个 batch），"
            "学生从不在上面训练。各组同一个种子、同样的数据顺序和学习率计划（5% 预热 + 余弦），两个种子（0、1），表中是平均。"
            "GPU 秒数 = 步数 × 稳态每步时间（第一段含编译，不计入）。同 GPU 时间的组（ce_time、sparse_time）的步数"
            "由同一次运行里测得的每步时间决定，与 kd_t1 的 GPU 时间相同。\n\n"
            + table(rows, ["arm", "steps", "step_ms", "gpu_seconds", "val_ppl", "best_val_ppl", "heldout_ppl", "top1_val",
                           "per_seed_val_ppl"])
            + kd_conclusion(r) + "\n![困惑度曲线（种子 0）](bench/results/kd_curves.png)\n")


SPARSE_STEP_TARGET = 1.15                  # 稀疏蒸馏一步 ≤ CE 一步的这么多倍


def _sparse_gap_note(rows: list) -> str:
    "稀疏一步没达到 CE 的价钱时：说明多出的时间在哪里，给出这次运行的主机 batch 时间"
    by = {r["variant"]: r for r in rows}
    host = f"（这次运行里每步的主机 batch 时间：CE {by['ce']['host_batch_ms']} ms、稀疏 {by['sparse_kd']['host_batch_ms']} ms）"
    return ("多出的时间不在 GPU 上：稀疏损失的 kernel 只比 CE 的慢一点（`bench/profile_sparse.py`，记录在 `raw/profile_sparse_h200.log`），而这一步本来就受主机限制——"
            "CE 一步里主机发射 kernel 的时间与 GPU 时间差不多，于是主机线程每批从缓存读出 (B·T, k) 的目标、拼 batch、"
            f"锁页拷贝的每一毫秒都直接加在步时上{host}。")


def _other_host_note(rows: list) -> str:
    "同一个基准在另一台 H200 机器上的结果（sparse_kd_other_host.json）：稀疏一步对主机的快慢敏感"
    if not (o := load("sparse_kd_other_host")): return ""
    by, other = ({x["variant"]: x for x in rs} for rs in (rows, o["rows"]))
    extra = by["sparse_kd"]["host_batch_ms"] - by["ce"]["host_batch_ms"]
    return (f"这个比值依赖主机：同一个基准在另一台 H200 机器上（{o['date'][:10]}，`bench/results/sparse_kd_other_host.json`）"
            f"量得稀疏一步 {other['sparse_kd']['step_ms']} ms、CE {other['ce']['step_ms']} ms，是 CE 的 {other['sparse_kd']['time_vs_ce']}×"
            f"（目标{'达到' if other['sparse_kd']['time_vs_ce'] <= SPARSE_STEP_TARGET else '未达到'}），"
            f"而 CE 与在线蒸馏的一步两边几乎一样（{other['ce']['step_ms']} 对 {by['ce']['step_ms']} ms、"
            f"{other['online_kd']['step_ms']} 对 {by['online_kd']['step_ms']} ms）：GPU 一样快，差别在主机一侧。"
            f"稀疏一步比 CE 多出的主机工作是每批从缓存读出 (B·T, k) 的目标、拼 batch、锁页（这次约 {extra:.1f} ms），"
            "在那台机器上它没能被 GPU 的活盖住。")


def sparse_section(r) -> str:
    rows, b = r["rows"], r["cache_build"]
    sp, ce, on = (next(x for x in rows if x["variant"] == v) for v in ("sparse_kd", "ce", "online_kd"))
    extra_mem = sp["peak_mem_gib"] - ce["peak_mem_gib"]
    ceiling = b.get("ceiling_vs_online_kd_step")                        # 只做教师前向 + LM head 的吞吐 / 在线一步的吞吐
    per_tok = lambda tps: 1 / tps
    saved = per_tok(on["tokens_per_sec"]) - per_tok(sp["tokens_per_sec"])
    breakeven = per_tok(b["tokens_per_sec"]) / saved if saved > 0 else None
    met = lambda ok: "达到" if ok else "未达到"
    workers = r.get("workers", 0)
    return (provenance(r) + "同一次运行、同一份真实数据（《人民日报》训练集）、默认 123M 学生；sparse_kd 从教师缓存读 top-64 + 尾部桶，"
            f"online_kd 每步跑 0.5B 教师；三者的 DataLoader 相同（num_workers={workers}）。\n\n"
            + table(rows, ["variant", "tokens_per_sec", "step_ms", "time_vs_ce", "peak_mem_gib"])
            + f"\n建缓存：{b['rows']:,} 个位置 × k={b['k']}，{b['mib']} MiB，{b['tokens_per_sec']:,} tokens/s"
              f"（教师前向、topk 与 log Σ 编译过，第一批含编译，不计入），是在线蒸馏一步吞吐的 {b['vs_online_kd_step']}×。\n\n"
            f"- 稀疏的一步是 CE 的 {sp['time_vs_ce']}×（目标 ≤ {SPARSE_STEP_TARGET}×，{met(sp['time_vs_ce'] <= SPARSE_STEP_TARGET)}），在线蒸馏是 {on['time_vs_ce']}×。"
            "两者做同样的学生前向与反向；稀疏损失用 07c 5.6 节的 Triton kernel，和 CE 一样一遍读完一块 logits，只多读 k 个缓存值。"
            "缓存的 id 保持 int32 直到 GPU 上才转 int64；DataLoader 开 worker 时每批 (B·T, k) 的目标还要经共享内存搬一次，"
            "在 `bench/profile_sparse.py` 里（`raw/profile_sparse_h200.log`，num_workers=0 与 2 各量一次）开 worker 并不更快，"
            "所以缓存数据在主进程里读。"
            + (_sparse_gap_note(rows) if sp["time_vs_ce"] > SPARSE_STEP_TARGET else "") + _other_host_note(rows) + "\n"
            f"- 峰值显存比 CE 多 {extra_mem:.2f} GiB（目标 ≤ 1 GiB，{met(extra_mem <= 1)}），比在线蒸馏少 "
            f"{on['peak_mem_gib'] - sp['peak_mem_gib']:.2f} GiB（不用放教师）。\n"
            f"- 建缓存的吞吐是在线一步的 {b['vs_online_kd_step']}×（目标 ≥ 3×，{met(b['vs_online_kd_step'] >= 3)}）。"
            + (f"建缓存的每个 token 至少要做一次教师前向和 LM head 的矩阵乘：同一次运行里单独量这两样（同样的批大小、同样编译），"
               f"是 {b['teacher_forward_tokens_per_sec']:,} tokens/s，即在线一步的 {ceiling}×，这就是建缓存的天花板（还没算每个位置的 topk 与 log Σ）。"
               + ("3× 比天花板还高：0.5B 的教师参数是学生的 4 倍，它一次前向的计算量就超过学生一次前向加反向，"
                  "对这样的教师与学生，3× 做不到。" if ceiling < 3 else "")
               + "离天花板还差的是每批在整个词表上的 topk 与 log Σ（见 `bench/profile_sparse.py`）。" if ceiling else "")
            + "缓存的价钱要按总账算：它只付一次。"
            + (f"按上面的每 token 时间，训练超过 {breakeven:.1f} 个 epoch 时“建缓存 + 稀疏蒸馏”的总 GPU 时间就少于在线蒸馏；"
               "多 epoch 的训练（本页上面的实验是 6 个 epoch 以上）越长，省得越多。\n" if breakeven else "\n"))


def ddp_remarks(r) -> str:
    "两卡的加速比与多卡是怎么做的"
    one, top = r["rows"][0], r["rows"][-1]
    text = (f"\n{top['gpus']} 卡的吞吐是单卡的 {top['speedup']}×（每张卡 batch 8 × 512，单卡是同一次调用里的默认设置）。"
            "多卡时训练器不用 DDP 包装：开训前把 rank 0 的参数广播出去，每步反向结束后把全部梯度拼成一个向量做一次 all_reduce，"
            "所以学生和单卡时一样录成 CUDA graph（07e_checkpoint 第 2 节）。"
            f"每卡每步 {top['step_ms']} ms，单卡 {one['step_ms']} ms：多出的是 123M 个 float32 梯度的拼接和经 NVLink 的 all_reduce，"
            "它不和计算重叠，所以余量不大。")
    if top.get("param_diff_across_ranks") is not None:
        text += f"计时结束后各 rank 的参数与 rank 0 的最大绝对差是 {top['param_diff_across_ranks']}（param_diff_across_ranks，应为 0）。"
    return text + "\n"


def teacher_section(r) -> str:
    rows = [{**x, "top1_agreement_with_ours": None if "top1_agreement_with_ours" not in x
             else f"{x['top1_agreement_with_ours']:.6f}"} for x in r["rows"]]
    return (provenance(r) + f"教师：{r['teacher']}（代码/指令模型，代替连不上的 Qwen2.5-0.5B 基座）。验证集按项目的划分"
            f"（每 10 篇文档取 1 篇），每段 {r['seq_len']} 个 token、不重叠；zh_classical 只取前 3000 段。"
            "`top1_agreement_with_ours`：同一份权重装进我们的 `StudentModel` 后，与 transformers 的下一个 token 预测相同的比例。"
            "fp32 下几乎逐个相同；bf16 下两边在 GPU 上选用的 kernel 不同（舍入顺序不同），本来就接近平局的 argmax 会翻转，"
            "所以一致率略低于 1——这是 bf16 的精度，不是实现的差别（CPU 上同一 bf16 比较的 logits 差为 0，见 05_model）。\n\n"
            + table(rows, ["corpus", "dtype", "tokens", "val_ppl", "nonfinite_logits", "top1_agreement_with_ours"]))


def generate_targets(r) -> str:
    "静态缓存 + CUDA graph：每个 batch 最快的 ours_cuda_graph*，与同一次运行里最快的 HF 配置相比"
    parts = [f"batch {B}：{t['ours_best']} tok/s，是同一次运行里最快的 HF 配置（{t['hf_best']} tok/s）的 "
             f"{t['ours_best'] / t['hf_best']:.1f}×" for B, t in r["targets"].items()]
    checked = "；计时前 `--check` 已核对 CUDA graph 的贪心 = 不录图 = HF、批量 = 一条一条" if r.get("checked") else ""
    hf = sorted({row["method"] for row in r["rows"] if row["method"].startswith("hf_")})
    return (f"\n静态缓存 + CUDA graph 的最快一种（{provenance(r).strip()}）：" + "；".join(parts)
            + checked + f"。这次运行测到的 HF 配置：{'、'.join(hf)}。"
            "“首次调用秒”含建解码器、录图与编译；torch.compile 把编译结果存在磁盘缓存里，"
            "同一台机器上第二个进程的首次调用快得多，全新机器上的第一次要长几倍（coordinate descent 调优要逐个试 kernel）。\n")


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
    if (r := load("full_distillation")):
        out.append(("09 的完整蒸馏：真实 Qwen2.5 教师，蒸馏学生 vs 交叉熵基线", full_run_section(r)))
    if (r := load("kd_experiment")):
        out.append(("知识蒸馏 vs 纯交叉熵：同 token 数与同 GPU 时间（真实 Qwen2.5 教师）", kd_section(r)))
    if (r := load("sparse_kd")):
        out.append(("离线教师缓存：稀疏蒸馏的一步（batch %d × %d）" % (r["batch"], r["seq"]), sparse_section(r)))
    if (r := load("ddp")):
        out.append(("多卡数据并行", provenance(r) + table(r["rows"], ["gpus", "tokens_per_sec", "step_ms", "speedup", "peak_mem_gib",
                                                                         "param_diff_across_ranks"])
                    + ddp_remarks(r)))
    gen = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("generate_*.json"))]
    if gen:
        rows = [{**row, "device": r["device_name"], "dtype": r["dtype"], "threads": r.get("threads")} for r in gen for row in r["rows"]]
        out.append(("文本生成（默认学生，提示 %d token，生成 %d token）" % (gen[0]["prompt_len"], gen[0]["new_tokens"]),
                    "命令与读数说明见 [bench/generate.md](bench/generate.md)。`first_call_s` 是第一次调用的秒数"
                    "（含建解码器、录 CUDA graph、编译），不计入 tokens_per_s。\n\n"
                    + table(rows, ["device", "dtype", "threads", "batch_size", "method", "tokens_per_s", "vs_ours_cache",
                                   "first_call_s"])
                    + "".join(generate_targets(r) for r in gen if r.get("targets"))))
    if (r := load("cpu_suite")):
        out.append(("CPU 测试套件（nbdev_test + pytest）", provenance(r) + table(r["rows"], ["command", "seconds", "exit_code"])))
    return out


def summary_lines() -> list[str]:
    "README 的实测结果：每个 JSON 一句话"
    lines = []
    if (r := load("full_distillation")):
        m = {x["model"]: x for x in r["rows"]}
        kd, ce, t = m["蒸馏学生"], m["基线（交叉熵）"], m["教师"]
        lines.append(f"09 的完整运行（{r['device']}，教师 {r['teacher']}，{r['steps']} 步 × {r['batch']} × {r['seq']}）："
                     f"验证困惑度 蒸馏学生 {kd['val_ppl']:.1f}、交叉熵基线 {ce['val_ppl']:.1f}、教师 {t['val_ppl']:.1f}；"
                     f"与教师的 top-1 一致率 {kd['top1_agreement']:.1%} 对 {ce['top1_agreement']:.1%}")
    if (r := load("kd_experiment")):
        rows = {x["arm"]: x for x in r["rows"]}
        if {"ce", "kd_t1", "ce_time", "sparse_time"} <= rows.keys():
            lines.append(f"小语料（约一百万 token）上的对照：同样 token 数，τ=1 的蒸馏验证困惑度是交叉熵的 "
                         f"{rows['kd_t1']['val_ppl'] / rows['ce']['val_ppl']:.2f}×，从不训练的领域上是 "
                         f"{rows['kd_t1']['heldout_ppl'] / rows['ce']['heldout_ppl']:.3f}×；同样 GPU 时间，教师缓存的蒸馏是交叉熵终点的 "
                         f"{rows['sparse_time']['val_ppl'] / rows['ce_time']['val_ppl']:.2f}×、是它途中最好一点的 "
                         f"{rows['sparse_time']['val_ppl'] / rows['ce_time']['best_val_ppl']:.2f}×")
    if (r := load("kd_step")):
        d = next(x for x in r["rows"] if x["variant"] == "default")
        lines.append(f"一步蒸馏训练（{r['device']}，batch {r['batch']} × {r['seq']}）：{d['tokens_per_sec']:,} tokens/s，"
                     f"MFU {100 * d['mfu']:.1f}%（分母是实测的矩阵乘峰值），峰值显存 {d['peak_mem_gib']} GiB")
    if (r := load("generate_gpu_h200")) and r.get("targets"):
        t = r["targets"]
        lines.append(f"生成（{r['device_name']}，CUDA graph 解码）：batch 1 {t['1']['ours_best']:,} tokens/s，"
                     f"batch 8 {t['8']['ours_best']:,} tokens/s")
    if (r := load("cpu_suite")):
        rows = {x["command"]: x for x in r["rows"]}
        parts = [f"测试 {rows['total']['seconds'] / 60:.1f} 分钟"]
        if "distill-edu demo" in rows: parts.insert(0, f"`distill-edu demo` {rows['distill-edu demo']['seconds'] / 60:.1f} 分钟")
        lines.append(f"两条命令在 {r['cpu_count']} 核 CPU 上（没有别的任务时）：" + "，".join(parts))
    return lines


def full_run_section(r) -> str:
    return (provenance(r) + f"教师 {r['teacher']}；语料 {r['corpus']}；配方：前向 KL，τ={r['recipe']['temperature']}，α={r['recipe']['alpha']}；两个学生同一种子、同一数据顺序、"
            f"各 {r['steps']} 步 × {r['batch']} × {r['seq']}（同样的 token 数）。\n\n"
            + table(r["rows"], ["model", "val_ppl", "top1_agreement", "seconds"])
            + "\n命令是在 GPU 机器上按完整模式执行 09，输出提交在 09 里；生成的文字、曲线和导出见 09_full_distillation "
              "与 08_generate 的“成绩单”一节。\n")


def main():
    secs = sections()
    body = "# 性能基准\n\n由 `python bench/report.py` 从 `bench/results/*.json` 生成，请勿手改。\n\n" + \
           "".join(f"## {title}\n\n{text}\n" for title, text in secs)
    (ROOT / "BENCHMARKS.md").write_text(body, encoding="utf-8")
    summary = "".join(f"- {line}\n" for line in summary_lines())
    summary += "\n卡、日期、命令、各组对照的全部数字见 [BENCHMARKS.md](BENCHMARKS.md)。"
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
