"""PyTorch twins of dnat's networks and data pipeline: a yardstick beside the project
(speed, op values, weight interchange), never a dependency of it."""
import gzip
import io
import tarfile

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

MEAN = np.array([0.4914, 0.4822, 0.4465], dtype=np.float32)
STD = np.array([0.2470, 0.2435, 0.2616], dtype=np.float32)


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.stride, self.pad = stride, (cout - cin) // 2

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        s = x
        if self.stride != 1 or self.pad:
            # Option A shortcut: subsample, zero-pad channels evenly.
            s = F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, self.pad, self.pad))
        return F.relu(h + s)


class ResNet20(nn.Module):
    """Same structure and state_dict names as dnat's resnet20."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, cin = [], 16
        for i, cout in enumerate([16, 32, 64]):
            blocks = []
            for b in range(3):
                stride = 2 if i > 0 and b == 0 else 1
                blocks.append(BasicBlock(cin, cout, stride))
                cin = cout
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.layer3(self.layer2(self.layer1(h)))
        return self.linear(F.adaptive_avg_pool2d(h, 1).flatten(1))


class VGG8(nn.Module):
    """Same structure and state_dict names as dnat's vgg8: conv 128,128, pool, 256,256,
    pool, 512,512, pool (conv 3x3 without bias, BN, ReLU), fc 8192->1024, ReLU, fc."""

    def __init__(self, num_classes=10):
        super().__init__()
        layers, cin = [], 3
        for c in [128, 128, "M", 256, 256, "M", 512, 512, "M"]:
            if c == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(cin, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
                cin = c
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Linear(512 * 4 * 4, 1024), nn.ReLU(), nn.Linear(1024, num_classes))
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


def load_cifar10(path):
    """(train_x u8 [N,3,32,32], train_y, test_x, test_y) from the binary .tar.gz."""
    files = {}
    with tarfile.open(path, "r:gz") as tf:
        for m in tf.getmembers():
            if m.isfile() and m.name.endswith(".bin"):
                files[m.name.rsplit("/", 1)[-1]] = tf.extractfile(m).read()

    def parse(names):
        raw = np.frombuffer(b"".join(files[n] for n in names), dtype=np.uint8).reshape(-1, 3073)
        return raw[:, 1:].reshape(-1, 3, 32, 32).copy(), raw[:, 0].astype(np.int64)

    tx, ty = parse([f"data_batch_{i}.bin" for i in range(1, 6)])
    vx, vy = parse(["test_batch.bin"])
    return tx, ty, vx, vy


def normalise(x_u8):
    x = x_u8.astype(np.float32) / 255.0
    return torch.from_numpy((x - MEAN[None, :, None, None]) / STD[None, :, None, None])


@torch.no_grad()
def evaluate(model, x_u8, y, batch=500):
    model.eval()
    correct = 0
    for i in range(0, len(y), batch):
        logits = model(normalise(x_u8[i : i + batch]))
        correct += (logits.argmax(1).numpy() == y[i : i + batch]).sum()
    return 100.0 * correct / len(y)
