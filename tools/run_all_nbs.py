"""像学习者那样从头到尾执行每个笔记本：离线、只用 CPU、不跳过任何单元格（与 `jupyter nbconvert --execute` 一样，
`#| notest` / `#| gpu` / `#| slow` 也照跑），报告每个笔记本的用时和最慢的单元格（开发工具，不属于 distill_edu 包）。

每个笔记本在自己的子进程里、在笔记本目录的一份临时副本里运行（不改动仓库里的文件和输出）；环境里设置
HF_HUB_OFFLINE=1、HF_DATASETS_OFFLINE=1、CUDA_VISIBLE_DEVICES=""，并去掉 IN_TEST（学习者不会设置它）。
没有另外设置 OMP_NUM_THREADS 时设为 1：在几个人共用的 CPU 上，多线程 OpenMP 的线程互相等待被抢走的核，
小模型的单元格会慢几十倍、用时也忽长忽短；单线程的用时更稳定，也偏保守。

    python tools/run_all_nbs.py                      # nbs/ 下的全部笔记本，每个限时 300 秒
    python tools/run_all_nbs.py nbs/08_generate.ipynb --limit 120
"""
import argparse, json, os, shutil, signal, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OFFLINE_CPU_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                   "CUDA_VISIBLE_DEVICES": "", "MPLBACKEND": "Agg"}


def run_one(path: Path, report: Path):
    """子进程：执行 path 的全部代码单元格，把 {ok, error, cells: [(序号, 秒, 首行)], running} 写进 report。
    每个单元格开始之前都写一次（running = 正在运行的单元格）：进程被超时结束时，也知道它卡在哪里"""
    from execnb.nbio import read_nb
    from execnb.shell import CaptureShell
    nb, timings, started = read_nb(path), [], {}
    pos = {id(c): i for i, c in enumerate((c for c in nb.cells if c.cell_type == "code"), 1)}
    first_line = lambda cell: next((l for l in cell.source.splitlines() if l.strip() and not l.startswith("#|")), "")[:60]
    def write(ok=False, error=None, running=None):
        report.write_text(json.dumps({"ok": ok, "error": error, "cells": timings, "running": running}, ensure_ascii=False))
    def before(cell):
        write(running=f"#{pos[id(cell)]} {first_line(cell)}")
        started["t"] = time.perf_counter(); return False          # False = 执行这个单元格
    def after(cell):
        timings.append((pos[id(cell)], round(time.perf_counter() - started["t"], 2), first_line(cell)))
    shell, error = CaptureShell(path), None
    try: shell.run_all(nb, exc_stop=True, preproc=lambda c: c.cell_type != "code" or before(c), postproc=after)
    except Exception: error = shell.prettytb(fname=path)
    write(ok=error is None, error=error)


def run_isolated(nb: Path, limit: float) -> dict:
    "在临时目录里的 nbs/ 副本中、一个新的进程组里运行 nb；超过 limit 秒就结束整个进程组"
    with tempfile.TemporaryDirectory(prefix="run_all_nbs_") as tmp:
        work = Path(tmp) / "nbs"
        shutil.copytree(nb.parent, work, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "_docs"))
        report = Path(tmp) / "report.json"
        env = {"OMP_NUM_THREADS": "1"} | {k: v for k, v in os.environ.items() if k != "IN_TEST"} | OFFLINE_CPU_ENV
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        cmd = [sys.executable, __file__, "--child", str(work / nb.name), str(report)]
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        try: log, _ = proc.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL); log, _ = proc.communicate()
        seconds = time.perf_counter() - start
        result = json.loads(report.read_text()) if report.is_file() else {"ok": False, "cells": [], "running": "启动"}
        if result["running"]:                                     # 子进程没有跑完就结束了
            why = f"超过 {limit:.0f} 秒被结束" if seconds >= limit else f"进程退出码 {proc.returncode}\n{log[-3000:]}"
            result["error"] = f"{why}（当时在运行：{result['running']}）"
    return {**result, "seconds": seconds}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebooks", nargs="*", type=Path)
    ap.add_argument("--limit", type=float, default=300, help="每个笔记本的时限（秒）")
    ap.add_argument("--slowest", type=int, default=3, help="每个笔记本列出几个最慢的单元格")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child: return run_one(Path(args.child[0]), Path(args.child[1]))
    notebooks = [p.resolve() for p in args.notebooks] or sorted((ROOT / "nbs").glob("*.ipynb"))
    failed = []
    for nb in notebooks:
        res = run_isolated(nb, args.limit)
        slow = sorted(res["cells"], key=lambda c: -c[1])[:args.slowest]
        status = "通过" if res["ok"] else "失败"
        print(f"{nb.name:<28} {res['seconds']:7.1f} s  {status}  最慢：" +
              "；".join(f"#{i} {s:.1f}s {src}" for i, s, src in slow), flush=True)
        if not res["ok"]:
            failed.append(nb.name)
            print("    " + (res["error"] or "").strip().replace("\n", "\n    ")[-2500:], flush=True)
    print(f"\n{len(notebooks) - len(failed)}/{len(notebooks)} 个笔记本在 {args.limit:.0f} 秒内无错误地跑完" +
          (f"；失败：{failed}" if failed else ""))
    sys.exit(1 if failed else 0)


if __name__ == "__main__": main()
