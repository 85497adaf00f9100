"""给笔记本里 `#| gpu` 单元格填上真实的 GPU 输出（开发工具，不属于 distill_edu 包）。

GPU 机器上通常没有 Jupyter：`run` 在那里按顺序执行笔记本的代码单元格（跳过 notest/slow，IN_TEST=1），
把每个 `#| gpu` 单元格的标准输出和它画出的 matplotlib 图（PNG）按单元格 id 存成 JSON；拿回来之后 `fill` 把它们写进笔记本。
`--full` 不设 IN_TEST，笔记本按完整规模运行，并记录**每个**执行过的单元格的输出：09 这样的笔记本在
`nbdev_test` 里跑小模式（单元格不带 `#| gpu`），提交的却是 GPU 上完整模式的真实输出。

    python tools/gpu_cells.py run nbs/07b_chunked_loss.ipynb out.json [--full]   # 在 GPU 机器上
    python tools/gpu_cells.py fill nbs/07b_chunked_loss.ipynb out.json     # 在本机，然后 nbdev_clean
"""
import base64, contextlib, io, json, os, sys, types
from run_nbs import cell_flags                         # 与 run_nbs / nbdev_test 同一套 `#|` 标志规则


def code_cells(nb):
    "[(单元格, 源码, #| 标志)]"
    for cell in nb["cells"]:
        if cell["cell_type"] != "code": continue
        src = "".join(cell["source"])
        yield cell, src, cell_flags(src)


def _figures_as_png() -> list[str]:
    "取走当前打开的所有 matplotlib 图：每张存成 base64 的 PNG，然后关闭"
    import matplotlib.pyplot as plt
    images = []
    for num in plt.get_fignums():
        buf = io.BytesIO(); plt.figure(num).savefig(buf, format="png", bbox_inches="tight")
        images.append(base64.b64encode(buf.getvalue()).decode())
    plt.close("all")
    return images


def run(path, out, full=False):
    import matplotlib; matplotlib.use("Agg")
    if full: os.environ.pop("IN_TEST", None)
    else: os.environ["IN_TEST"] = "1"
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
        images = _figures_as_png()
        if "gpu" in flags or full:
            results[cell["id"]] = {"text": buf.getvalue(), "images": images}
            print(f"[{cell['id']}]\n{buf.getvalue()}" + (f"（{len(images)} 张图）" if images else ""), flush=True)
        with open(out, "w", encoding="utf-8") as f: json.dump(results, f, ensure_ascii=False, indent=1)   # 中途失败也留下已完成的单元格


def _outputs(result) -> list[dict]:
    "一个单元格的结果 → notebook 输出：先文字，后图"
    if isinstance(result, str): result = {"text": result, "images": []}
    outs = [{"name": "stdout", "output_type": "stream", "text": result["text"].splitlines(True)}] if result["text"] else []
    return outs + [{"output_type": "display_data", "metadata": {}, "data": {"image/png": png, "text/plain": ["<Figure>"]}}
                   for png in result["images"]]


def fill(path, out):
    nb, results = json.load(open(path, encoding="utf-8")), json.load(open(out, encoding="utf-8"))
    for cell, _, flags in code_cells(nb):
        if cell["id"] in results:
            cell["outputs"] = _outputs(results[cell["id"]])
    with open(path, "w", encoding="utf-8") as f: json.dump(nb, f, ensure_ascii=False, indent=1)
    print(f"填入 {len(results)} 个单元格的输出：{path}")


if __name__ == "__main__":
    cmd, path, out = sys.argv[1:4]
    if cmd == "run": run(path, out, full="--full" in sys.argv[4:])
    else: fill(path, out)
