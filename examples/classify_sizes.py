"""Classify images of different sizes in NumPy alone: the job adaptive pooling exists for.

A linear classifier needs a fixed number of features, but the images here are anything from
12x12 to 40x40 pixels (height and width drawn independently). Adaptive pooling turns a
feature map of any size into a fixed 4x4 grid, so one set of weights serves every size:

    image (1, H, W)
      -> fixed filters: intensity, |d/dx|, |d/dy|                (3, H, W)
      -> learned 1x1 layer + ReLU                               (8, H, W)
      -> fastpool.AdaptiveAvgPool2d(4) and AdaptiveMaxPool2d(4)  2 x (8, 4, 4)
      -> flatten, linear layer, softmax                         6 classes

Training is plain gradient descent (Adam) in NumPy; the gradient flows back through both
pooling layers with their ``backward`` methods. Images are grouped by size, one size per
mini-batch (bucketing), since a batch is one array.

The data set is generated: six kinds of shapes (disc, ring, horizontal bars, vertical bars,
plus, x) at random positions, scales and contrasts, with noise. The script checks that the
test accuracy reaches ``ACCURACY_FLOOR`` and also reports the accuracy on larger images
(44..64 px) than any it was trained on.

Run::

    python examples/classify_sizes.py            # a few seconds with a compiled backend
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import numpy as np

import fastpool

CLASSES = ("disc", "ring", "hbars", "vbars", "plus", "x")
TRAIN_SIZES = range(12, 41, 4)  # height and width drawn independently: 64 shapes
UNSEEN_SIZES = range(44, 65, 10)  # larger than anything seen in training
GRID = 4
HIDDEN = 8
EPOCHS = 12
ACCURACY_FLOOR = 0.90


# ------------------------------------------------------------------------------- the data


def make_image(rng: np.random.Generator, label: int, h: int, w: int) -> np.ndarray:
    """One noisy image of class ``label``, shape ``(1, h, w)``, float32."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    cy = h * rng.uniform(0.4, 0.6)
    cx = w * rng.uniform(0.4, 0.6)
    size = min(h, w) * rng.uniform(0.3, 0.45)
    dy, dx = (yy - cy) / size, (xx - cx) / size
    r = np.hypot(dy, dx)
    thick = rng.uniform(0.18, 0.3)
    period = rng.uniform(3.0, 5.0)  # pixels
    phase = rng.uniform(0, 2 * np.pi)
    name = CLASSES[label]
    if name == "disc":
        shape = r < 1.0
    elif name == "ring":
        shape = np.abs(r - 0.8) < thick
    elif name == "hbars":
        shape = (np.sin(2 * np.pi * yy / period + phase) > 0) & (r < 1.3)
    elif name == "vbars":
        shape = (np.sin(2 * np.pi * xx / period + phase) > 0) & (r < 1.3)
    elif name == "plus":
        shape = ((np.abs(dy) < thick) | (np.abs(dx) < thick)) & (np.maximum(abs(dx), abs(dy)) < 1.1)
    else:  # "x"
        shape = (np.abs(np.abs(dy) - np.abs(dx)) < thick * 1.4) & (r < 1.3)
    contrast = rng.uniform(0.6, 1.0)
    image = rng.uniform(-0.2, 0.2) + contrast * shape + rng.normal(0.0, 0.15, (h, w))
    return image[np.newaxis].astype(np.float32)


def make_dataset(rng, count: int, sizes) -> list[tuple[np.ndarray, int]]:
    sizes = list(sizes)
    data = []
    for _ in range(count):
        label = int(rng.integers(len(CLASSES)))
        h, w = int(rng.choice(sizes)), int(rng.choice(sizes))
        data.append((make_image(rng, label, h, w), label))
    return data


def buckets(data, batch: int, rng=None):
    """Mini-batches ``(images (B, 1, H, W), labels (B,))`` with one image size each."""
    groups = defaultdict(list)
    for image, label in data:
        groups[image.shape].append((image, label))
    batches = []
    for items in groups.values():
        if rng is not None:
            rng.shuffle(items)
        for i in range(0, len(items), batch):
            chunk = items[i : i + batch]
            batches.append((np.stack([im for im, _ in chunk]), np.array([lb for _, lb in chunk])))
    if rng is not None:
        rng.shuffle(batches)
    return batches


# ------------------------------------------------------------------------------ the model


def fixed_filters(images: np.ndarray) -> np.ndarray:
    """``(B, 1, H, W)`` -> ``(B, 3, H, W)``: intensity, absolute horizontal/vertical gradients."""
    x = images[:, 0]
    gx = np.abs(np.diff(x, axis=2, append=x[:, :, -1:]))
    gy = np.abs(np.diff(x, axis=1, append=x[:, -1:, :]))
    return np.stack([x, gx, gy], axis=1)


class Model:
    """1x1 layer + ReLU -> adaptive avg and max pooling to GRIDxGRID -> linear -> softmax."""

    def __init__(self, rng: np.random.Generator, n_in: int = 3) -> None:
        features = 2 * HIDDEN * GRID * GRID
        self.params = {
            "w1": rng.normal(0.0, 1.0 / np.sqrt(n_in), (HIDDEN, n_in)).astype(np.float32),
            "b1": np.zeros(HIDDEN, np.float32),
            "w2": rng.normal(0.0, 1.0 / np.sqrt(features), (features, len(CLASSES))).astype(
                np.float32
            ),
            "b2": np.zeros(len(CLASSES), np.float32),
        }
        self.avg = fastpool.AdaptiveAvgPool2d(GRID)
        self.max = fastpool.AdaptiveMaxPool2d(GRID)

    def forward(self, images: np.ndarray) -> np.ndarray:
        p = self.params
        self.inputs = fixed_filters(images)
        pre = np.einsum("kc,nchw->nkhw", p["w1"], self.inputs) + p["b1"][:, None, None]
        self.active = pre > 0
        hidden = np.where(self.active, pre, np.float32(0))
        pooled = np.concatenate([self.avg(hidden), self.max(hidden)], axis=1)
        self.features = pooled.reshape(len(images), -1)
        return self.features @ p["w2"] + p["b2"]

    def backward(self, grad_logits: np.ndarray) -> dict[str, np.ndarray]:
        p = self.params
        grads = {"w2": self.features.T @ grad_logits, "b2": grad_logits.sum(0)}
        grad_pooled = (grad_logits @ p["w2"].T).reshape(len(grad_logits), 2 * HIDDEN, GRID, GRID)
        grad_hidden = self.avg.backward(np.ascontiguousarray(grad_pooled[:, :HIDDEN]))
        grad_hidden += self.max.backward(np.ascontiguousarray(grad_pooled[:, HIDDEN:]))
        grad_pre = np.where(self.active, grad_hidden, np.float32(0))
        grads["w1"] = np.einsum("nkhw,nchw->kc", grad_pre, self.inputs)
        grads["b1"] = grad_pre.sum((0, 2, 3))
        return grads


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray):
    """Mean loss and its gradient with respect to the logits."""
    z = logits - logits.max(1, keepdims=True)
    probs = np.exp(z)
    probs /= probs.sum(1, keepdims=True)
    n = len(labels)
    loss = -np.log(probs[np.arange(n), labels] + 1e-12).mean()
    grad = probs
    grad[np.arange(n), labels] -= 1.0
    return float(loss), grad / n


class Adam:
    def __init__(self, params: dict, lr: float = 0.02, b1=0.9, b2=0.999, eps=1e-8) -> None:
        self.params, self.lr, self.b1, self.b2, self.eps = params, lr, b1, b2, eps
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}
        self.t = 0

    def step(self, grads: dict) -> None:
        self.t += 1
        for k, g in grads.items():
            self.m[k] = self.b1 * self.m[k] + (1 - self.b1) * g
            self.v[k] = self.b2 * self.v[k] + (1 - self.b2) * g * g
            m_hat = self.m[k] / (1 - self.b1**self.t)
            v_hat = self.v[k] / (1 - self.b2**self.t)
            self.params[k] -= (self.lr * m_hat / (np.sqrt(v_hat) + self.eps)).astype(np.float32)


def accuracy(model: Model, data) -> float:
    correct = 0
    for images, labels in buckets(data, batch=256):
        correct += int((model.forward(images).argmax(1) == labels).sum())
    return correct / len(data)


# -------------------------------------------------------------------------------- main


def main(seed: int = 0, threads: int | None = 1) -> float:
    # The mini-batches are small (~100k elements per call), and a parallel kernel's thread
    # team waits for its slowest member: on a busy shared 2-core machine this script took
    # 12 s with one thread per call and 49 s with two. Pass --threads 0 for the default.
    fastpool.set_num_threads(threads or None)
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    train = make_dataset(rng, 1200, TRAIN_SIZES)
    test = make_dataset(rng, 600, TRAIN_SIZES)
    unseen = make_dataset(rng, 300, UNSEEN_SIZES)
    print(
        f"fastpool backend: {fastpool.get_backend()}, "
        f"{fastpool.get_num_threads()} thread(s) per call; {len(CLASSES)} classes; "
        f"{len(train)} training images, {len({im.shape for im, _ in train})} different sizes"
    )

    model = Model(rng)
    optimizer = Adam(model.params)
    for epoch in range(1, EPOCHS + 1):
        losses = []
        for images, labels in buckets(train, batch=32, rng=rng):
            loss, grad_logits = softmax_cross_entropy(model.forward(images), labels)
            optimizer.step(model.backward(grad_logits))
            losses.append(loss)
        if epoch % 4 == 0 or epoch == 1:
            print(
                f"epoch {epoch:3d}  loss {np.mean(losses):.3f}  "
                f"train accuracy {accuracy(model, train):.3f}"
            )

    test_acc = accuracy(model, test)
    unseen_acc = accuracy(model, unseen)
    elapsed = time.perf_counter() - start
    print(f"accuracy on larger, unseen sizes (44..64 px): {unseen_acc:.3f}")
    print(f"test accuracy: {test_acc:.3f} (floor {ACCURACY_FLOOR}) in {elapsed:.1f} s")
    assert test_acc >= ACCURACY_FLOOR, f"test accuracy {test_acc:.3f} < {ACCURACY_FLOOR}"
    return test_acc


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="threads per fastpool call (0: the backends' default)",
    )
    args = parser.parse_args()
    main(args.seed, args.threads)
