"""在 CPU 上用 Triton 的解释器执行 5.3 节的 kernel，与 PyTorch 实现 `_chunk_loss_grad` 比较。
TRITON_INTERPRET=1 必须在 import triton 之前设置，所以由 test_trainer.py 在子进程里运行本文件。"""
import os
assert os.environ.get("TRITON_INTERPRET") == "1", "请设置 TRITON_INTERPRET=1 再运行"
import torch
from distill_edu.losses import IGNORE_INDEX
from distill_edu.chunked import _chunk_loss_grad, _forward_kl_ce_triton

gen = torch.Generator().manual_seed(0)
C, V, V_pad = 5, 4500, 4608                       # V > 2 × BLOCK(2048)：在线 max/sum 要跨三段合并
for dtype in (torch.float32, torch.bfloat16):
    z = (30 * torch.randn(C, V_pad, generator=gen)).to(dtype)       # 大 logits：检查数值稳定
    t = (30 * torch.randn(C, V_pad, generator=gen)).to(dtype)
    z[:, V:], t[:, V:] = 1e4, -1e4                                  # 补出来的列放垃圾值：必须被遮掉
    y = torch.randint(0, V, (C,), generator=gen); y[1] = IGNORE_INDEX; y[3] = V - 1
    for teacher, alpha, T, want_grad in ((t, 0.5, 2.0, True), (t, 0.7, 1.0, False), (None, 0.0, 2.0, True)):
        got = _forward_kl_ce_triton(z, teacher, y, alpha, T, "forward_kl", 0.5, 0.1, want_grad, V)
        ref = _chunk_loss_grad(z, teacher, y, alpha, T, "forward_kl", 0.5, 0.1, want_grad, V)
        case = f"{dtype} teacher={teacher is not None} α={alpha} T={T} want_grad={want_grad}"
        torch.testing.assert_close(torch.stack(got[:2]), torch.stack(ref[:2]), rtol=1e-5, atol=1e-4, msg=case)
        assert (got[2] is None) == (not want_grad), case
        if want_grad:
            assert got[2].dtype == dtype and got[2].shape == z.shape, case
            torch.testing.assert_close(got[2], ref[2], rtol=0.02, atol=1e-5, msg=case)
            assert (got[2][:, V:] == 0).all() and (got[2][1] == 0).all(), f"{case}: 补出来的列或被忽略的 token 梯度不为 0"
print("ok")
