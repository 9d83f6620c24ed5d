"""Run a CPU backend's kernels: allocation, ``out=``, float16 and empty cases, in one place.

A CPU backend module only defines four kernels over 5-D arrays ``(N, C, D, H, W)`` of any
strides and the dtypes it handles natively::

    avg_forward(x, out)                    max_forward(x, out, indices)
    avg_backward(grad_output, grad_input)  max_backward(grad_output, indices, grad_input[, fresh])

Kernels write every element of their outputs and never see empty arrays. Everything else
(validation, allocation, ``out=``, float16 through float32 a few planes at a time) happens
here, before they run.
One exception: a module with ``CHECKS_INDICES = True`` checks the max-backward indices
itself, in the same call and in parallel; its ``max_backward`` returns False when one lies
outside the plane, and the ValueError is raised here. It writes nothing then, unless told
``fresh=True`` (``grad_input`` was made here and is dropped on an error): a kernel may
then check only when its results say it met a bad index.
"""

from __future__ import annotations

import numpy as np

from . import _validate as v

_F32 = np.dtype(np.float32)
_I64 = np.dtype(np.int64)
_FORWARD = {"avg": "avg_forward", "max": "max_forward"}
_BACKWARD = {"avg": "avg_backward", "max": "max_backward"}


class HostBackend:
    """Adapts a module of CPU kernels to the interface the public functions call."""

    accepts_device = False

    def __init__(self, name: str, module) -> None:
        self.name = name
        self.module = module
        self.native_dtypes = tuple(np.dtype(d) for d in module.NATIVE_DTYPES)
        self.checks_indices = bool(getattr(module, "CHECKS_INDICES", False))

    def __repr__(self) -> str:
        return f"<fastpool backend {self.name!r}>"

    def forward(self, kind: str, x, plan: v.Plan, out_values=None, out_indices=None):
        x = v.as_host_array(x, "x")
        values = _output(out_values, plan.out_shape, plan.dtype, "out")
        indices = None
        if kind == "max":
            indices = _output(out_indices, plan.out_shape, np.int64, "out[1] (indices)")
        if out_values is not None or out_indices is not None:
            v.check_no_overlap(
                [("out", out_values), ("out[1] (indices)", out_indices)], [("x", x)]
            )
        if plan.empty:
            return values, indices
        x5, v5 = plan.view5(x), plan.view5(values)
        i5 = plan.view5(indices) if indices is not None else None
        args = (i5,) if kind == "max" else ()
        kernel = getattr(self.module, _FORWARD[kind])
        if plan.dtype in self.native_dtypes:
            kernel(x5, v5, *args)
            return values, indices
        for part in _float16_parts(plan.in5, plan.out5):
            tmp = np.empty(v5[part].shape, dtype=_F32)
            kernel(x5[part].astype(_F32), tmp, *(a[part] for a in args))
            v5[part] = tmp
        return values, indices

    def backward(self, kind: str, grad_output, indices, plan: v.Plan, out=None):
        # (written for small calls too: each step here costs as much as pooling a 5x5 map)
        if type(grad_output) is not np.ndarray:
            grad_output = v.as_host_array(grad_output, "grad_output")
        given = indices
        if kind == "max":
            if type(indices) is not np.ndarray:
                indices = v.as_host_array(indices, "indices")
            given = indices
            if not self.checks_indices:
                v.check_index_bounds(indices, plan.plane)
            if indices.dtype != _I64:
                indices = indices.astype(_I64)
        if out is None:
            grad_input = np.empty(plan.in_shape, dtype=plan.dtype)
        else:
            grad_input = v.check_out(out, plan.in_shape, plan.dtype, "out")
            inputs = [("grad_output", grad_output)]
            if kind == "max":
                inputs.append(("indices", indices))
            v.check_no_overlap([("out", out)], inputs)
        if plan.in5[0] == 0:
            return grad_input
        if plan.empty:  # no output cell covers anything
            grad_input[...] = 0
            return grad_input
        g5, gi5 = plan.view5(grad_output), plan.view5(grad_input)
        args = (plan.view5(indices),) if kind == "max" else ()
        kernel = getattr(self.module, _BACKWARD[kind])
        checks = kind == "max" and self.checks_indices
        if plan.dtype in self.native_dtypes:
            if checks:  # fresh: grad_input is ours, dropped on error
                ok = kernel(g5, *args, gi5, fresh=out is None)
            else:
                ok = kernel(g5, *args, gi5)
        else:
            if checks:
                v.check_index_bounds(given, plan.plane)  # before the first part is written
            for part in _float16_parts(plan.in5, plan.out5):
                src, dst = g5[part].astype(_F32), np.empty(gi5[part].shape, dtype=_F32)
                part_args = [a[part] for a in args]
                if checks:
                    ok = kernel(src, *part_args, dst, fresh=True)
                else:
                    ok = kernel(src, *part_args, dst)
                if ok is False:
                    break
                gi5[part] = dst
        if ok is False:  # an index outside the plane (out= untouched)
            v.check_index_bounds(given, plan.plane)  # raises, naming the index
            raise AssertionError("the kernel reported an index the check does not find")
        return grad_input


#: float16 runs through float32 copies of parts of the arrays of at most this many bytes
#: (input and result together, a plane of each at least): exact upcasts, float32 sums, one
#: rounding at the end, without temporaries twice the size of the arrays.
_FLOAT16_PART = 16 << 20


def _float16_parts(in5, out5):
    """Index tuples over the (N, C) axes of the 5-D arrays, each part's planes within
    ``_FLOAT16_PART`` bytes as float32. Parts of a batch pool as the whole does."""
    plane = 4 * (in5[2] * in5[3] * in5[4] + out5[2] * out5[3] * out5[4])
    return plane_parts(in5[0], in5[1], max(1, _FLOAT16_PART // plane))


def plane_parts(n: int, c: int, planes: int) -> list[tuple[slice, ...]]:
    """Index tuples over the (N, C) axes of ``n`` x ``c`` planes, in order, each part at
    most ``planes`` planes (at least one): runs of whole samples where ``planes`` is at least
    ``c``, else runs of one sample's channels."""
    if planes >= c:
        step = planes // c
        return [(slice(i, i + step),) for i in range(0, n, step)]
    return [(slice(i, i + 1), slice(j, j + planes)) for i in range(n) for j in range(0, c, planes)]


def _output(out, shape, dtype, name):
    if out is None:
        return np.empty(shape, dtype=dtype)
    return v.check_out(out, shape, dtype, name)
