"""PyTorch CPU yardstick for `dnat bench`: ResNet20 or VGG8 training-step and eval
images/s, the same step as `dnat bench` (SGD + Nesterov, weight decay, batch of random
images).

    python3 tools/pytorch/bench.py --threads 2 --batch 128 [--model vgg8]
"""
import argparse
import json
import resource
import statistics
import time

import torch
import torch.nn.functional as F

from common import VGG8, ResNet20

ap = argparse.ArgumentParser()
ap.add_argument("--model", choices=["resnet20", "vgg8"], default="resnet20")
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--batch", type=int, default=128)
ap.add_argument("--steps", type=int, default=10)
ap.add_argument("--warmup", type=int, default=2)
a = ap.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)
model = {"resnet20": ResNet20, "vgg8": VGG8}[a.model]()
opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
x = torch.randn(a.batch, 3, 32, 32)
y = torch.arange(a.batch) % 10
train_t = []
model.train()
for i in range(a.warmup + a.steps):
    t = time.perf_counter()
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()
    if i >= a.warmup:
        train_t.append(time.perf_counter() - t)
eval_t = []
model.eval()
with torch.no_grad():
    for i in range(a.warmup + a.steps):
        t = time.perf_counter()
        model(x)
        if i >= a.warmup:
            eval_t.append(time.perf_counter() - t)
ts, es = statistics.median(train_t), statistics.median(eval_t)
res = {
    "engine": f"pytorch {torch.__version__}",
    "model": a.model,
    "batch": a.batch,
    "threads": a.threads,
    "train_step_ms": ts * 1e3,
    "train_images_per_s": a.batch / ts,
    "eval_images_per_s": a.batch / es,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}
print("engine   model    batch threads  train step ms  train img/s  eval img/s  peak RSS MiB")
print(f"pytorch  {a.model:<8} {a.batch:>5} {a.threads:>7} {res['train_step_ms']:>14.1f} {res['train_images_per_s']:>12.1f} {res['eval_images_per_s']:>11.1f} {res['peak_rss_mb']:>13.0f}")
print(json.dumps(res))
