"""把 491 MB 的教师 GGUF 分批送上借来的 GPU 机器，并打印要发出的调用序列。

每次 `run` 调用最多携带 64 MiB，所以文件被切成 ≤ 47 MiB 的片，每片放进仓库里一个被 git 忽略的目录 `.t00/` … `.t09/`，
每次调用携带一片并复制进 GPU 机器的 `/tmp/q/`（只要机器一直热着，`/tmp` 就保留；调用之间别停超过约 30 秒）。
最后一次调用拼接、校验 sha256，并用 `tools/gguf_to_hf.py` 转成 bf16 的 Hugging Face 目录 `/tmp/q/teacher`。
已切好且大小正确的片不会重切。

    python tools/fetch_teacher.py && python tools/stage_teacher.py
"""
import argparse, importlib.util, math
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("fetch_teacher", ROOT / "tools" / "fetch_teacher.py")
fetch_teacher = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fetch_teacher)
PIECE = 47 * 2**20
WHEELS = ".whl"            # gguf 的 wheel（GPU 机器上没有 gguf 包），见 CONTRIBUTING


def ignore_pieces(root: Path = ROOT):
    "把 /.t[0-9]*/ 写进 .git/info/exclude（只写一次）"
    exclude = root / ".git" / "info" / "exclude"
    lines = exclude.read_text().splitlines() if exclude.exists() else []
    if "/.t[0-9]*/" not in lines:
        exclude.parent.mkdir(parents=True, exist_ok=True)
        exclude.write_text("\n".join(lines + ["/.t[0-9]*/"]) + "\n")


def split(gguf: Path, root: Path = ROOT) -> list[Path]:
    "切成 ≤ 47 MiB 的片：root/.tKK/piece.KK；已存在且大小正确的片跳过"
    size = gguf.stat().st_size
    pieces = []
    with open(gguf, "rb") as f:
        for k in range(math.ceil(size / PIECE)):
            piece = root / f".t{k:02d}" / f"piece.{k:02d}"
            want = min(PIECE, size - k * PIECE)
            if not (piece.is_file() and piece.stat().st_size == want):
                piece.parent.mkdir(exist_ok=True)
                f.seek(k * PIECE)
                piece.write_bytes(f.read(want))
            pieces.append(piece)
    return pieces


def calls(pieces: list[Path]) -> list[dict]:
    "每片一次 run 调用；最后一次还拼接、校验、安装 gguf 并转换"
    out = [{"carry": [p.parent.name], "command": f"mkdir -p /tmp/q && cp {p.parent.name}/{p.name} /tmp/q/"}
           for p in pieces]
    out[-1]["carry"].append(WHEELS)
    out[-1]["command"] += (
        f" && cat /tmp/q/piece.* > /tmp/q/teacher.gguf && rm /tmp/q/piece.*"
        f" && echo '{fetch_teacher.GGUF_SHA256}  /tmp/q/teacher.gguf' | sha256sum -c"
        f" && python3 -m pip install -q --no-index --no-deps --target /tmp/site {WHEELS}/*.whl"
        f" && PYTHONPATH=.:/tmp/site python3 tools/gguf_to_hf.py /tmp/q/teacher.gguf /tmp/q/teacher")
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gguf", type=Path, default=fetch_teacher.DEFAULT_DIR / fetch_teacher.GGUF_NAME)
    gguf = ap.parse_args().gguf
    if not fetch_teacher.is_complete(gguf): raise SystemExit(f"{gguf} 不存在或校验不通过：先运行 python tools/fetch_teacher.py")
    if not list((ROOT / WHEELS).glob("gguf-*.whl")):
        raise SystemExit(f"{WHEELS}/ 里没有 gguf 的 wheel：见 CONTRIBUTING 的“GPU 机器上的真实教师”")
    ignore_pieces()
    pieces = split(gguf)
    print(f"{len(pieces)} 片，依次发出（每次之间不要停超过约 30 秒）：")
    for k, c in enumerate(calls(pieces), 1):
        print(f"{k:2d}. carry={c['carry']}  command: {c['command']}")
