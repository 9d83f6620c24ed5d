"""Hypothesis: random shapes, output sizes and layouts; every backend against PyTorch."""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from oracles import assert_close, assert_identical, backward, forward, torch_backward, torch_forward

SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@st.composite
def problems(draw):
    dims = draw(st.integers(1, 3))
    n = draw(st.integers(1, 3))
    c = draw(st.integers(1, 4))
    spatial = tuple(draw(st.integers(1, 12 if dims < 3 else 7)) for _ in range(dims))
    osize = tuple(draw(st.one_of(st.none(), st.integers(1, 14))) for _ in range(dims))
    layout = draw(st.sampled_from(["c", "f", "channels_last", "reversed", "unbatched"]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    x = np.round(rng.standard_normal((n, c) + spatial) * 3) / 3  # ties
    special = rng.random(x.shape)
    x[special < 0.03] = np.nan
    x[(special > 0.97)] = -np.inf
    if layout == "f":
        x = np.asfortranarray(x)
    elif layout == "channels_last":
        x = np.moveaxis(np.ascontiguousarray(np.moveaxis(x, 1, -1)), -1, 1)
    elif layout == "reversed":
        x = x[::-1, ::-1].copy()[::-1, ::-1]
    elif layout == "unbatched":
        x = x[0]
    return dims, x, osize, seed


@SETTINGS
@given(problem=problems())
def test_forward_and_backward_agree_with_torch(backend, problem):
    dims, x, osize, seed = problem
    rng = np.random.default_rng(seed + 1)
    for kind in ("avg", "max"):
        values, indices = forward(kind, dims, x, osize, backend=backend)
        ref_values, ref_indices = torch_forward(kind, dims, x, osize)
        assert_close(values, ref_values)
        if kind == "max":
            assert_identical(indices, ref_indices)
        grad = rng.standard_normal(values.shape)
        x_clean = np.nan_to_num(x, nan=0.0, neginf=-5.0)  # torch's autograd recomputes indices
        _, idx_clean = forward(kind, dims, x_clean, osize, backend=backend)
        gi = backward(kind, dims, grad, idx_clean, x.shape, backend=backend)
        assert_close(gi, torch_backward(kind, dims, x_clean, osize, grad))
