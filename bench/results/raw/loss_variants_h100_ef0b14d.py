# 产生 loss_variants_h100_ef0b14d.log 的一次性探索脚本（在设备上以 PYTHONPATH=.:bench 运行）
"分块损失的 torch.compile 选项：每块 (1024, V₊) 的逐元素归约是否被拆开、拆成几个 kernel、各花多久"
import torch, time
from torch.profiler import profile, ProfilerActivity
from distill_edu import distill
from distill_edu.distill import chunked_distillation_loss
from profile_step import cuda_ms, kernel_ms
dev = torch.device("cuda"); torch.manual_seed(0)
N, V, d, dt = 4096, 151665, 512, 896
h0 = torch.randn(N, d, device=dev, dtype=torch.bfloat16); W = (torch.randn(V, d, device=dev) * 0.02).requires_grad_()
th = torch.randn(N, dt, device=dev, dtype=torch.bfloat16); tW = torch.randn(151936, dt, device=dev, dtype=torch.bfloat16) * 0.02
y = torch.randint(0, V, (N,), device=dev)
for name, opts in [("default", None), ("no split", {"split_reductions": False})]:
    for kind in ("forward_kl", "reverse_kl"):
        fn = torch.compile(distill._chunk_loss_grad, dynamic=False, options=opts)
        distill._compiled_chunk_loss_grad = lambda fn=fn: fn
        def step(chunk=1024):
            h = h0.clone().requires_grad_()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss, m = chunked_distillation_loss(h, W, y, th, tW, kind=kind, chunk_size=chunk, compiled=True)
            loss.backward(); W.grad = None
            return loss
        t = time.perf_counter(); l = step(); torch.cuda.synchronize(); c = time.perf_counter() - t
        print(f"{name:9s} {kind:10s} loss {l.item():.5f}  wall {cuda_ms(step):6.2f} ms  kernels {kernel_ms(step):6.2f} ms  (compile {c:.0f}s)")
        with profile(activities=[ProfilerActivity.CUDA]) as prof: step(); torch.cuda.synchronize()
        for e in sorted(prof.key_averages(), key=lambda e: -e.self_device_time_total):
            if e.device_type == torch.autograd.DeviceType.CUDA and "triton" in e.key:
                print(f"    {e.count:3d} x {e.self_device_time_total / e.count / 1000:6.3f} ms  {e.key[:90]}")
