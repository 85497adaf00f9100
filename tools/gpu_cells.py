"""给笔记本里 `#| gpu` 单元格填上真实的 GPU 输出（开发工具，不属于 distill_edu 包）。

GPU 机器上通常没有 Jupyter：`run` 在那里按顺序执行笔记本的代码单元格（跳过 notest/slow，IN_TEST=1），
把每个 `#| gpu` 单元格的标准输出按单元格 id 存成 JSON；拿回来之后 `fill` 把它们写进笔记本。

    python tools/gpu_cells.py run nbs/07b_chunked_loss.ipynb out.json      # 在 GPU 机器上
    python tools/gpu_cells.py fill nbs/07b_chunked_loss.ipynb out.json     # 在本机，然后 nbdev_clean
"""
import contextlib, io, json, os, sys, types
from run_nbs import cell_flags                         # 与 run_nbs / nbdev_test 同一套 `#|` 标志规则


def code_cells(nb):
    "[(单元格, 源码, #| 标志)]"
    for cell in nb["cells"]:
        if cell["cell_type"] != "code": continue
        src = "".join(cell["source"])
        yield cell, src, cell_flags(src)


def run(path, out):
    import matplotlib; matplotlib.use("Agg")
    os.environ["IN_TEST"] = "1"
    nb = json.load(open(path, encoding="utf-8"))
    main = types.ModuleType("__main__"); sys.modules["__main__"] = main   # 单元格的全局变量放进一个干净的 __main__
    os.chdir(os.path.dirname(os.path.abspath(path)))
    results = {}
    for cell, src, flags in code_cells(nb):
        if flags & {"notest", "slow", "default_exp"}: continue
        fname = f"/tmp/nbcell_{cell['id']}.py"                   # Triton 的 @jit 要用 inspect 读源码：写成真文件
        with open(fname, "w", encoding="utf-8") as f: f.write(src)
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf): exec(compile(src, fname, "exec"), main.__dict__)
        if "gpu" in flags: results[cell["id"]] = buf.getvalue(); print(f"[{cell['id']}]\n{buf.getvalue()}")
    with open(out, "w", encoding="utf-8") as f: json.dump(results, f, ensure_ascii=False, indent=1)


def fill(path, out):
    nb, results = json.load(open(path, encoding="utf-8")), json.load(open(out, encoding="utf-8"))
    for cell, _, flags in code_cells(nb):
        if "gpu" in flags and cell["id"] in results:
            cell["outputs"] = [{"name": "stdout", "output_type": "stream", "text": results[cell["id"]].splitlines(True)}]
    with open(path, "w", encoding="utf-8") as f: json.dump(nb, f, ensure_ascii=False, indent=1)
    print(f"填入 {len(results)} 个单元格的输出：{path}")


if __name__ == "__main__":
    cmd, path, out = sys.argv[1:4]
    {"run": run, "fill": fill}[cmd](path, out)
