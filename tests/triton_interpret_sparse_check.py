"""在 CPU 上用 Triton 的解释器执行 07c 5.6 节的稀疏蒸馏 kernel，与 PyTorch 实现 `_sparse_chunk_loss_grad` 比较。
TRITON_INTERPRET=1 必须在 import triton 之前设置，所以由 test_sparse.py 在子进程里运行本文件。"""
import os
assert os.environ.get("TRITON_INTERPRET") == "1", "请设置 TRITON_INTERPRET=1 再运行"
import torch
import torch.nn.functional as F
from distill_edu.sparse import _sparse_chunk_loss_grad, _sparse_kl_ce_triton, sparse_targets

gen = torch.Generator().manual_seed(0)
C, V, V_pad = 5, 4500, 4608
for dtype in (torch.float32, torch.bfloat16):
    z = (3 * torch.randn(C, V_pad, generator=gen)).to(dtype)
    z[:, V:] = 1e4
    t = 3 * torch.randn(C, V, generator=gen)
    y = torch.randint(0, V, (C,), generator=gen); y[1] = -100
    for k in (64, 5, V):
        for T in (1.0, 2.0):
            ids, lp = sparse_targets(F.log_softmax(t / T, -1), k, "topk")
            y2 = y.clone(); y2[2] = ids[2, 0]          # 标签落在 K 里
            for mode in ("topk", "topk_rest"):
                for want in (True, False):
                    got = _sparse_kl_ce_triton(z, ids, lp.half(), y2, 0.5, T, mode, want, V)
                    ref = _sparse_chunk_loss_grad(z, ids, lp.half(), y2, 0.5, T, mode, want, V)
                    case = f"{dtype} k={k} T={T} {mode} grad={want}"
                    torch.testing.assert_close(torch.stack(got[:2]), torch.stack(ref[:2]).float(), rtol=1e-4, atol=1e-3, msg=case)
                    if want:
                        torch.testing.assert_close(got[2].float(), ref[2].float(), rtol=0.02, atol=1e-5, msg=case)
                        assert (got[2][:, V:] == 0).all() and (got[2][1] == 0).all(), case
print("ok")
