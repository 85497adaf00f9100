"""README 的两条命令在 CPU 上的墙钟时间：测试（nbdev_test + pytest）与主任务 `distill-edu demo`。
在没有别的任务的机器上运行，结果才代表读者会等多久。

    python bench/cpu_suite.py --out bench/results/cpu_suite.json
"""
import argparse, os, subprocess, time
from common import device_name, write_json, print_table

TESTS = [["nbdev_test"], ["pytest", "-q", "tests"]]
DEMO = ["distill-edu", "demo"]


def timed(cmd) -> dict:
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    return {"command": " ".join(cmd), "seconds": round(time.perf_counter() - t, 1), "exit_code": proc.returncode,
            "tail": (proc.stdout + proc.stderr).strip().splitlines()[-1:]}

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results/cpu_suite.json")
    args = ap.parse_args()
    rows = [timed(cmd) for cmd in TESTS]
    rows.append({"command": "total", "seconds": round(sum(r["seconds"] for r in rows), 1),
                 "exit_code": max(r["exit_code"] for r in rows)})
    rows.append(timed(DEMO))
    print_table(rows, ["command", "seconds", "exit_code"])
    write_json(args.out, {"benchmark": "cpu_suite", "device": device_name("cpu"), "cpu_count": os.cpu_count(), "rows": rows,
                          "command": "python bench/cpu_suite.py"})
