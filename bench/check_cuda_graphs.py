"""CUDA graph 只在 GPU 上起作用，CI 测不到：这里在 GPU 上检查它不改变训练结果。

同一个种子、同一批数据，训练器的默认设置（不累积梯度时学生和教师都用 CUDA graph，累积时只有教师用）与只编译不录图的
设置各训练 5 步，比较每步的损失和最后的参数（bf16 训练，两者只差浮点误差）。

    python bench/check_cuda_graphs.py [--accum 2]
"""
import argparse, functools
import torch
from torch.utils.data import DataLoader
from distill_edu.config import ModelConfig, TrainingConfig
from distill_edu.model import StudentModel
from distill_edu.teacher import teacher_hidden_and_head
from distill_edu.trainer import DistillationTrainer, StudentLoss
from kd_step import RandomTokens, teacher_model

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--accum", type=int, default=1, help="grad_accum_steps；每个微批 8 // accum 条")
    accum = ap.parse_args().accum
    dev = torch.device("cuda")
    teacher = teacher_model(dev)
    data = RandomTokens(8 * 6, 512, 151665)
    results = []
    for graphs in (False, True):
        torch.manual_seed(0)
        student = StudentModel(ModelConfig())
        cfg = TrainingConfig(batch_size=8 // accum, grad_accum_steps=accum, seq_len=512, warmup_steps=0, max_steps=5,
                             log_interval=10**6, save_interval=10**6, eval_interval=10**6,
                             checkpoint_dir="/tmp/check_cuda_graphs")
        tr = DistillationTrainer(student, teacher, DataLoader(data, batch_size=8 // accum), None, cfg, dev, progress=False)
        if not graphs: tr.loss_fn = StudentLoss(student, cfg, compiled=True, cuda_graphs=False)
        if not graphs: tr.teacher_targets.fn = torch.compile(functools.partial(teacher_hidden_and_head, teacher))
        losses = [tr._train_step()["stats"][0].item() for _ in range(5)]
        results.append((losses, torch.cat([p.detach().float().flatten() for p in student.parameters()])))
        print("cuda_graphs" if graphs else "compile only", [round(x, 5) for x in losses])
    (la, pa), (lb, pb) = results
    dl, dp = max(abs(a - b) for a, b in zip(la, lb)), float((pa - pb).norm() / pa.norm())
    print(f"max |Δloss| {dl:.2e}, 参数相对差 {dp:.2e}")
    assert dl < 1e-3 and dp < 1e-2, "CUDA graph 改变了训练结果"
