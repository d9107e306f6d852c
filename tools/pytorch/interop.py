"""Weight interchange check with PyTorch (a tool beside dnat, not part of it).

    # evaluate a dnat-exported file in PyTorch
    python3 tools/pytorch/interop.py eval --weights W.safetensors --data ../shared/datasets/cifar-10-binary-jpeg75.tar.gz
    # train a PyTorch ResNet20 briefly and export its state_dict for `dnat weights import`
    python3 tools/pytorch/interop.py train --epochs 1 --out pt.safetensors --data ...

Both print one JSON line with the accuracy PyTorch measured.
"""
import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from common import ResNet20, evaluate, load_cifar10, normalise

ap = argparse.ArgumentParser()
ap.add_argument("action", choices=["eval", "train"])
ap.add_argument("--weights")
ap.add_argument("--out")
ap.add_argument("--data", required=True)
ap.add_argument("--epochs", type=int, default=1)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--subset", type=int, default=0, help="train on the first N images only")
a = ap.parse_args()
torch.set_num_threads(a.threads)
tx, ty, vx, vy = load_cifar10(a.data)
if a.subset:
    tx, ty = tx[: a.subset], ty[: a.subset]

if a.action == "eval":
    model = ResNet20()
    state = load_file(a.weights)
    model.load_state_dict(state, strict=True)
    print(json.dumps({"engine": "pytorch", "weights": a.weights, "accuracy": float(evaluate(model, vx, vy))}))
else:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = ResNet20()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    t0 = time.time()
    for epoch in range(a.epochs):
        model.train()
        order = rng.permutation(len(ty))
        for i in range(0, len(order), 128):
            idx = order[i : i + 128]
            x = normalise(tx[idx])
            flip = torch.from_numpy(rng.random(len(idx)) < 0.5)
            x[flip] = x[flip].flip(3)
            opt.zero_grad()
            F.cross_entropy(model(x), torch.from_numpy(ty[idx])).backward()
            opt.step()
    acc = float(evaluate(model, vx, vy))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, a.out)
    print(json.dumps({"engine": "pytorch", "trained_epochs": a.epochs, "accuracy": acc, "out": a.out, "seconds": time.time() - t0}))
