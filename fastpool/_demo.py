"""``python -m fastpool demo`` (``make demo``): fastpool on real images, then a short benchmark.

It checks, on every usable CPU backend, that the results agree with the numpy reference and,
when PyTorch is installed, with PyTorch (values, max-pool indices, both backward passes), and
exits 1 if anything disagrees. It needs nothing but numpy: the photo comes from matplotlib's
sample data when matplotlib is installed, else the images are drawn here.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import fastpool

from . import _backends, bench
from ._info import default_backend

_SHADES = " .:-=+*#%@"  # dark to bright
#: the short benchmark: small enough to take seconds with the numpy backend included
DEMO_CASES = ("16x64x100x100->13 NCHW", "16x64x100x100->13 NHWC", "32x64x5x5->7 NCHW")
DEMO_SETTINGS = bench.Settings(
    budget=0.05,
    min_repeats=3,
    max_repeats=10,
    numpy_repeats=1,
    note="demo: 3 cases, few repeats, the numpy backend timed with one call; "
    "the full table: python -m fastpool bench",
)


def _images() -> tuple[np.ndarray, np.ndarray, str]:
    """A batch ``(8, 3, 224, 224)`` float32 in [0, 1] and one grey picture to draw: crops of
    a photo, or drawn shapes when there is no photo to read."""
    try:
        import matplotlib.cbook
        import matplotlib.image

        path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
        photo = matplotlib.image.imread(path).astype(np.float32).transpose(2, 0, 1) / 255
        # fastpool itself halves the photo (600x512 -> 300x256), then 224x224 crops around
        # the face, every other one mirrored
        half = fastpool.adaptive_avg_pool2d(photo, (300, 256))
        crops = []
        for k in range(8):
            top, left = 10 * k, 4 * k
            crop = half[:, top : top + 224, left : left + 224]
            crops.append(crop[:, :, ::-1] if k % 2 else crop)
        return (
            np.ascontiguousarray(np.stack(crops)),
            photo.mean(axis=0),
            "224x224 crops of matplotlib's sample photo grace_hopper.jpg",
        )
    except Exception:  # no matplotlib or no Pillow: discs on gradients instead
        yy, xx = np.mgrid[0:224, 0:224].astype(np.float32) / 224
        batch = np.empty((8, 3, 224, 224), dtype=np.float32)
        rng = np.random.default_rng(0)
        for k in range(8):
            cy, cx, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.1, 0.3)
            disc = ((yy - cy) ** 2 + (xx - cx) ** 2 < r**2).astype(np.float32)
            for c in range(3):
                batch[k, c] = 0.5 * disc + 0.25 * (xx if c == 0 else yy) + 0.1 * c
        return batch, batch[0].mean(axis=0), "discs on gradients (with matplotlib: a photo)"


def _ascii(img: np.ndarray, rows: int = 14) -> list[str]:
    """A grey image as characters: the adaptive average pool is the downscaler."""
    h, w = img.shape
    cols = max(1, round(rows * w / h * 2))  # a character cell is about twice as tall as wide
    small = fastpool.adaptive_avg_pool2d(img[None], (rows, cols))[0]
    lo, hi = float(small.min()), float(small.max())
    levels = ((small - lo) / max(hi - lo, 1e-12) * (len(_SHADES) - 1)).round().astype(int)
    return ["    " + "".join(_SHADES[v] for v in row) for row in levels]


def _ms(f) -> float:
    t0 = time.perf_counter()
    f()
    return (time.perf_counter() - t0) * 1e3


def _torch():
    try:
        import torch

        return torch
    except ImportError:
        return None


def _section(title: str) -> None:
    print(f"\n== {title} " + "=" * max(0, 70 - len(title)))


def _backends_section() -> list[str]:
    _section("backends")
    status = _backends.backend_status()
    for name, (ok, reason) in status.items():
        reason = " ".join(reason.split())  # some reasons come with line breaks
        print(f"  {name:<7} {'usable' if ok else 'not usable: ' + reason}")
    print(
        f"  backend=None uses {default_backend()!r} for host arrays here "
        "(fastest usable; change it with backend=, fastpool.use_backend(), "
        "fastpool.set_backend() or $FASTPOOL_BACKEND)"
    )
    return [b for b in fastpool.available_backends() if b in bench.CPU_BACKENDS]


def _check_section(x: np.ndarray, backends: list[str]) -> bool:
    """Every op on every backend against numpy and PyTorch; True when all agree."""
    torch = _torch()
    ok = True
    out = 7
    g = np.random.default_rng(1).standard_normal((x.shape[0], x.shape[1], out, out)).astype(x.dtype)
    ref_avg = fastpool.adaptive_avg_pool2d(x, out, backend="numpy")
    ref_max, ref_idx = fastpool.adaptive_max_pool2d(x, out, True, backend="numpy")
    t_avg = t_max = t_idx = t_gavg = t_gmax = None
    if torch is not None:
        xt = torch.from_numpy(x).requires_grad_()
        ya = torch.nn.functional.adaptive_avg_pool2d(xt, out)
        ya.backward(torch.from_numpy(g))
        t_avg, t_gavg = ya.detach().numpy(), xt.grad.numpy().copy()
        xt.grad = None
        ym, it = torch.nn.functional.adaptive_max_pool2d(xt, out, return_indices=True)
        ym.backward(torch.from_numpy(g))
        t_max, t_idx, t_gmax = ym.detach().numpy(), it.numpy(), xt.grad.numpy().copy()
    print(
        f"  ops: adaptive_{{avg,max}}_pool2d(x, {out}) -> {ref_avg.shape}, and their backward "
        "with a random grad_output."
    )
    print(
        "  vs numpy / vs torch: max |difference|; indices: the max-pool indices are identical."
        + ("" if torch else "\n  PyTorch is not installed: numpy is the only reference.")
    )
    print(
        f"  {'backend':<8} {'op':<13} {'1st call ms':>11} {'ms':>8} {'vs numpy':>9}"
        f" {'vs torch':>9} {'indices':>8}"
    )

    def diff(a, b):
        return None if b is None else float(np.max(np.abs(a.astype(np.float64) - b)))

    def fmt(d):
        return "-" if d is None else f"{d:.1e}"

    grads = {
        "avg_backward": (
            fastpool.adaptive_avg_pool2d_backward(g, x.shape, backend="numpy"),
            t_gavg,
        ),
        "max_backward": (
            fastpool.adaptive_max_pool2d_backward(g, ref_idx, x.shape, backend="numpy"),
            t_gmax,
        ),
    }
    tol = 1e-5  # float32 sums of up to 32x32 values in [0, 1] (fastpool: float64 sums)
    for b in backends:
        calls = {
            "avg": lambda b=b: fastpool.adaptive_avg_pool2d(x, out, backend=b),
            "max": lambda b=b: fastpool.adaptive_max_pool2d(x, out, True, backend=b),
            "avg_backward": lambda b=b: fastpool.adaptive_avg_pool2d_backward(
                g, x.shape, backend=b
            ),
            "max_backward": lambda b=b: fastpool.adaptive_max_pool2d_backward(
                g, ref_idx, x.shape, backend=b
            ),
        }
        for op, f in calls.items():
            first = _ms(f)  # loads the backend, compiles or loads its kernels
            ms = min(_ms(f) for _ in range(3))
            res = f()
            same = ""
            if op == "max":
                res, idx = res
                ref, t_ref = ref_max, t_max
                same_idx = np.array_equal(idx, ref_idx) and (
                    t_idx is None or np.array_equal(idx, t_idx)
                )
                same = "same" if same_idx else "DIFFER"
            elif op == "avg":
                ref, t_ref = ref_avg, t_avg
            else:
                ref, t_ref = grads[op]
            d_np, d_t = diff(res, ref), diff(res, t_ref)
            good = d_np <= tol and (d_t is None or d_t <= tol) and same != "DIFFER"
            if op == "max":  # a maximum is picked, not computed: it must be exact
                good &= d_np == 0 and d_t in (None, 0.0)
            ok &= good
            print(
                f"  {b:<8} {op:<13} {first:11.1f} {ms:8.2f} {fmt(d_np):>9} {fmt(d_t):>9}"
                f" {same:>8}" + ("" if good else "   <-- MISMATCH")
            )
    return ok


def _layout_section(x: np.ndarray, backends: list[str]) -> bool:
    # The same bytes as a channels_last tensor: (N, C, H, W) with channel stride 1.
    x_cl = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    torch = _torch()
    if torch is not None:
        t = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)
        x_cl = t.numpy()
        where = "torch.Tensor.contiguous(memory_format=torch.channels_last).numpy()"
    else:
        where = "np.transpose views"
    print(f"  x as a channels-last view ({where}), strides {x_cl.strides}:")
    ok = True
    ref_v, ref_i = fastpool.adaptive_max_pool2d(x, 7, True, backend="numpy")
    for b in backends:
        v, i = fastpool.adaptive_max_pool2d(x_cl, 7, True, backend=b)
        same = np.array_equal(v, ref_v) and np.array_equal(i, ref_i)
        ok &= same
        verdict = "same values and indices as C order" if same else "DIFFERENT"
        print(f"    {b:<7} max pool to 7x7: {verdict}")
    return ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fastpool demo", description=__doc__)
    p.add_argument("--no-bench", action="store_true", help="skip the short benchmark")
    args = p.parse_args(argv)

    print(
        f"fastpool {fastpool.__version__}: adaptive average/max pooling for NumPy, "
        "with PyTorch's semantics"
    )
    backends = _backends_section()

    x, picture, origin = _images()
    _section("an image batch")
    print(f"  x: {x.shape} {x.dtype}, {origin}")
    print(f"  the picture {picture.shape}, pooled by adaptive_avg_pool2d to 20 rows of characters:")
    print("\n".join(_ascii(picture, rows=20)))

    _section("results on every backend, against the references")
    ok = _check_section(x, backends)
    _section("memory layout")
    ok &= _layout_section(x, backends)

    if not args.no_bench:
        _section("a short benchmark")
        cases = [bench.CASES_BY_NAME[n] for n in DEMO_CASES]
        peers = [bench.TORCH] if _torch() is not None else []
        doc = bench.run(cases, bench.OPS, backends + peers, settings=DEMO_SETTINGS)
        print(bench.format_table(doc))

    print()
    print("all results agree" if ok else "SOME RESULTS DISAGREE (marked above)")
    return 0 if ok else 1
