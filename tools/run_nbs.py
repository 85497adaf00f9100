"""执行笔记本并把真实输出写回文件（开发工具，不属于 distill_edu 包）。

与 nbdev_test 一样跳过带 `#| notest` / `#| gpu` / `#| slow` 标志的单元格，被跳过的单元格保留原有输出
（例如在 GPU 机器上运行得到的输出）。用法：

    python tools/run_nbs.py nbs/05_model.ipynb [更多笔记本] [--skip notest gpu slow] [--in-test]
"""
import argparse, os, sys
from pathlib import Path


def cell_flags(source: str) -> set:
    "单元格开头 `#| ...` 指令行中的词，例如 {'notest'}、{'export'}"
    return {w for line in source.splitlines() if line.startswith('#|') for w in line[2:].split()}


def run_notebook(path: Path, skip: set) -> bool:
    # execnb 只在这里导入：tools/gpu_cells.py 在没有 execnb 的 GPU 机器上也要用 cell_flags
    from execnb.nbio import read_nb, write_nb
    from execnb.shell import CaptureShell
    from fastcore.xtras import working_directory
    nb = read_nb(path)
    def no_eval(cell): return cell.cell_type != 'code' or bool(skip & cell_flags(cell.source))
    for cell in nb.cells:                      # execnb 只在有新输出时才覆盖：先清空要运行的单元格，避免留下过期输出
        if not no_eval(cell): cell.outputs = []
    shell = CaptureShell(path)
    try:
        with working_directory(path.parent): shell.run_all(nb, exc_stop=True, preproc=no_eval)
    except Exception:
        sys.stderr.write(shell.prettytb(fname=path) + '\n')
        return False
    nb.metadata = {'kernelspec': {'display_name': 'Python 3', 'language': 'python', 'name': 'python3'}}
    write_nb(nb, path)
    return True


if __name__ == '__main__':
    ap = argparse.ArgumentParser()
    ap.add_argument('notebooks', nargs='+', type=Path)
    ap.add_argument('--skip', nargs='*', default=['notest', 'gpu', 'slow'])
    ap.add_argument('--in-test', action='store_true', help='设置 IN_TEST=1（与 nbdev_test 相同的缩小规模）')
    args = ap.parse_args()
    if args.in_test: os.environ['IN_TEST'] = '1'
    ok = all([run_notebook(p.resolve(), set(args.skip)) for p in args.notebooks])
    sys.exit(0 if ok else 1)
