# 产生 loss_variants2_h100_adb17d8.log 的一次性探索脚本（在设备上以 PYTHONPATH=.:bench 运行）
"分块损失逐块函数的两种写法在 torch.compile 下各要几遍读 logits：手写共用最大值（当前）vs torch.log_softmax"
import torch, time, glob, os
from torch.profiler import profile, ProfilerActivity
from distill_edu import distill
from distill_edu.distill import chunked_distillation_loss, IGNORE_INDEX, _fp32, _MASKED_LOGIT, _divergence_and_grad
from profile_step import cuda_ms, kernel_ms

def logsoftmax_version(z, t, y, alpha, temperature, kind, beta, lam, want_grad, vocab):
    valid, mm_dtype = y != IGNORE_INDEX, z.dtype
    y0 = torch.where(valid, y, 0)
    real = torch.arange(z.size(1), device=z.device) < vocab
    z = torch.where(real, _fp32(z), _MASKED_LOGIT)
    log_s = torch.log_softmax(z, -1)
    ce = -(log_s.gather(1, y0[:, None]).squeeze(1) * valid).sum()
    kl = z.new_zeros(())
    if want_grad:
        onehot = torch.arange(z.size(1), device=z.device) == y0[:, None]
        g = (1 - alpha) * (log_s.exp() - onehot.float())
    if t is not None:
        t = torch.where(real, _fp32(t), _MASKED_LOGIT)
        logq, logp = torch.log_softmax(z / temperature, -1), torch.log_softmax(t / temperature, -1)
        d, grad_u = _divergence_and_grad(logq, logp, kind, beta, lam)
        kl = (d * valid).sum()
        if want_grad: g = g + alpha * temperature * grad_u
    if not want_grad: return kl, ce, None
    return kl, ce, (g * valid[:, None]).to(mm_dtype)

dev = torch.device("cuda"); torch.manual_seed(0)
N, V, d, dt = 4096, 151665, 512, 896
h0 = torch.randn(N, d, device=dev, dtype=torch.bfloat16); W = (torch.randn(V, d, device=dev) * 0.02).requires_grad_()
th = torch.randn(N, dt, device=dev, dtype=torch.bfloat16); tW = torch.randn(151936, dt, device=dev, dtype=torch.bfloat16) * 0.02
y = torch.randint(0, V, (N,), device=dev)
out = os.environ.get("OUT", "/tmp")
for name, base in [("shared max", distill._chunk_loss_grad), ("log_softmax", logsoftmax_version)]:
    for kind in ("forward_kl", "reverse_kl"):
        before = set(glob.glob("/tmp/torchinductor_root/**/*.py", recursive=True))
        fn = torch.compile(base, dynamic=False)
        distill._compiled_chunk_loss_grad = lambda fn=fn: fn
        def step(chunk=1024):
            h = h0.clone().requires_grad_()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss, m = chunked_distillation_loss(h, W, y, th, tW, kind=kind, chunk_size=chunk, compiled=True)
            loss.backward(); g = h.grad; W.grad = None
            return loss, g
        l, g = step(); torch.cuda.synchronize()
        loops = [open(f).read().count("for r0_offset") for f in set(glob.glob("/tmp/torchinductor_root/**/*.py", recursive=True)) - before
                 if "triton_red_fused" in open(f).read()]
        print(f"{name:12s} {kind:10s} loss {l.item():.6f} |g_h| {g.float().norm():.6f}  wall {cuda_ms(step):6.2f} ms  "
              f"kernels {kernel_ms(step):6.2f} ms  reduction loops per generated file {loops}")
        with profile(activities=[ProfilerActivity.CUDA]) as prof: step(); torch.cuda.synchronize()
        for e in sorted(prof.key_averages(), key=lambda e: -e.self_device_time_total):
            if e.device_type == torch.autograd.DeviceType.CUDA and "triton" in e.key:
                print(f"    {e.count:3d} x {e.self_device_time_total / e.count / 1000:6.3f} ms  {e.key[:80]}")
