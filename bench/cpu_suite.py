"""整套 CPU 测试的墙钟时间：nbdev_test + pytest（目标：2 核机器上 ≤ 10 分钟）。

    python bench/cpu_suite.py --out bench/results/cpu_suite.json
"""
import argparse, os, subprocess, time
from common import device_name, write_json, print_table

COMMANDS = [("nbdev_test", ["nbdev_test"]), ("pytest", ["pytest", "-q", "tests"])]

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results/cpu_suite.json")
    args = ap.parse_args()
    rows = []
    for name, cmd in COMMANDS:
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        rows.append({"command": " ".join(cmd), "seconds": round(time.perf_counter() - t, 1), "exit_code": proc.returncode,
                     "tail": (proc.stdout + proc.stderr).strip().splitlines()[-1:]})
    rows.append({"command": "total", "seconds": round(sum(r["seconds"] for r in rows), 1),
                 "exit_code": max(r["exit_code"] for r in rows)})
    print_table(rows, ["command", "seconds", "exit_code"])
    write_json(args.out, {"benchmark": "cpu_suite", "device": device_name("cpu"), "cpu_count": os.cpu_count(), "rows": rows,
                          "command": "python bench/cpu_suite.py"})
