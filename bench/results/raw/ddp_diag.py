"DDP 变慢的诊断：DIAG=as_is | no_teacher_graph | sync（每步读回损失）| both"
import argparse, functools, os, sys
sys.path.insert(0, "bench")
import torch
from distill_edu import distill
import ddp
mode = os.environ["DIAG"]
orig_init, orig_step = distill.DistillationTrainer.__init__, distill.DistillationTrainer._train_step
def init(self, *a, **k):
    orig_init(self, *a, **k)
    if mode in ("no_teacher_graph", "both"):
        self.teacher_fn = torch.compile(functools.partial(distill.teacher_hidden_and_head, self.teacher))
def step(self):
    out = orig_step(self)
    if mode in ("sync", "both"): out["stats"].tolist()
    return out
distill.DistillationTrainer.__init__, distill.DistillationTrainer._train_step = init, step
args = argparse.Namespace(out=f"/tmp/diag_{mode}.json", steps=20, warmup=5, batch=8, seq=512)
ddp.measure(args)
