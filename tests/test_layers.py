"""Layer objects: forward/backward against torch.nn modules and autograd, state, repr, errors."""

import numpy as np
import pytest
from oracles import assert_close, assert_identical, require_torch

import fastpool

LAYERS = {("avg", d): getattr(fastpool, f"AdaptiveAvgPool{d}d") for d in (1, 2, 3)} | {
    ("max", d): getattr(fastpool, f"AdaptiveMaxPool{d}d") for d in (1, 2, 3)
}

# (dims, input shape, output_size): batched and unbatched, non-divisible, None entries.
CASES = [
    (1, (2, 3, 11), 4),
    (1, (3, 7), (9,)),
    (2, (2, 3, 9, 7), (4, 3)),
    (2, (3, 5, 6), 7),
    (2, (2, 2, 8, 8), (None, 3)),
    (3, (2, 2, 4, 5, 6), (2, 3, 4)),
    (3, (2, 3, 4, 5), (None, 2, 1)),
]
IDS = [f"{d}d-{'x'.join(map(str, s))}-{o}" for d, s, o in CASES]


def _torch_module(kind, dims, output_size, **kw):
    torch = require_torch()
    name = f"Adaptive{kind.capitalize()}Pool{dims}d"
    return getattr(torch.nn, name)(output_size, **kw)


@pytest.mark.parametrize("kind", ("avg", "max"))
@pytest.mark.parametrize(("dims", "shape", "osize"), CASES, ids=IDS)
def test_forward_backward_match_torch_module(backend, rng, dims, shape, osize, kind):
    torch = require_torch()
    x = rng.standard_normal(shape)
    if kind == "max":
        x = np.round(x * 2) / 2  # ties: the first one in scan order wins in both
    layer = LAYERS[kind, dims](osize, backend=backend)
    y = layer(x)
    assert isinstance(y, np.ndarray)  # max: values only, as torch's return_indices=False

    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    yt = _torch_module(kind, dims, osize)(xt)
    assert_close(y, yt.detach().numpy())

    grad = rng.standard_normal(y.shape)
    yt.backward(torch.from_numpy(grad))
    grad_x = layer.backward(grad)
    assert grad_x.shape == x.shape
    assert_close(grad_x, xt.grad.numpy())


@pytest.mark.parametrize("dims", (1, 2, 3))
def test_max_return_indices_matches_torch(backend, rng, dims):
    torch = require_torch()
    shape = (2, 3) + (5, 6, 7)[:dims]
    x = rng.standard_normal(shape)
    layer = LAYERS["max", dims](3, return_indices=True, backend=backend)
    values, indices = layer(x)
    ref_values, ref_indices = _torch_module("max", dims, 3, return_indices=True)(
        torch.from_numpy(x)
    )
    assert_close(values, ref_values.numpy())
    assert_identical(indices, ref_indices.numpy())
    # the layer's backward uses the same indices the caller saw
    grad = rng.standard_normal(values.shape)
    expected = getattr(fastpool, f"adaptive_max_pool{dims}d_backward")(
        grad, indices, x.shape, backend=backend
    )
    assert_identical(layer.backward(grad), expected)


def test_layer_equals_functional_api(backend, rng):
    x = rng.standard_normal((2, 3, 10, 9)).astype(np.float32)
    grad = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    avg = fastpool.AdaptiveAvgPool2d(4, backend=backend)
    assert_identical(avg(x), fastpool.adaptive_avg_pool2d(x, 4, backend=backend))
    assert_identical(
        avg.backward(grad), fastpool.adaptive_avg_pool2d_backward(grad, x.shape, backend=backend)
    )
    mx = fastpool.AdaptiveMaxPool2d(4, backend=backend)
    values, indices = fastpool.adaptive_max_pool2d(x, 4, True, backend=backend)
    assert_identical(mx(x), values)
    assert_identical(
        mx.backward(grad),
        fastpool.adaptive_max_pool2d_backward(grad, indices, x.shape, backend=backend),
    )


@pytest.mark.parametrize("kind", ("avg", "max"))
def test_backward_uses_the_latest_forward(rng, kind):
    layer = LAYERS[kind, 2]((2, 2))
    layer(rng.standard_normal((1, 1, 4, 4)))
    x = rng.standard_normal((3, 2, 5, 7))
    y = layer(x)
    grad = layer.backward(np.ones_like(y))
    assert grad.shape == x.shape
    # each output cell spreads (avg) or routes (max) its 1 over its window of the LATEST input
    assert np.isclose(grad.sum(), y.size)


@pytest.mark.parametrize("kind", ("avg", "max"))
def test_channels_last_layer(backend, rng, kind):
    x = rng.standard_normal((2, 3, 9, 7))
    first = LAYERS[kind, 2]((4, 3), backend=backend)
    last = LAYERS[kind, 2]((4, 3), backend=backend, data_format="channels_last")
    y = first(x)
    y_last = last(np.moveaxis(x, 1, -1))
    assert_close(y_last, np.moveaxis(y, 1, -1))
    grad = rng.standard_normal(y.shape)
    assert_close(last.backward(np.moveaxis(grad, 1, -1)), np.moveaxis(first.backward(grad), 1, -1))


def test_accepts_lists():
    layer = fastpool.AdaptiveMaxPool1d(2)
    assert_identical(layer([[3.0, 1.0, 4.0, 1.0, 5.0]]), np.array([[4.0, 5.0]]))
    assert_identical(layer.backward([[1.0, 2.0]]), np.array([[0.0, 0.0, 1.0, 0.0, 2.0]]))


# ------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(("kind", "dims"), sorted(LAYERS))
def test_backward_before_forward_is_a_clear_error(kind, dims):
    layer = LAYERS[kind, dims](2)
    with pytest.raises(RuntimeError, match="before a forward"):
        layer.backward(np.ones((1, 1) + (2,) * dims))


def test_grad_shape_must_match_latest_output():
    layer = fastpool.AdaptiveAvgPool2d(2)
    layer(np.ones((1, 3, 4, 4)))
    with pytest.raises(ValueError, match=r"latest output \(1, 3, 2, 2\).*\(1, 3, 3, 3\)"):
        layer.backward(np.ones((1, 3, 3, 3)))


@pytest.mark.parametrize(
    ("args", "kwargs", "error"),
    [
        ((-1,), {}, ValueError),
        (((2, 2, 2),), {}, ValueError),
        ((2.5,), {}, TypeError),
        ((2,), {"data_format": "NHWC"}, ValueError),
        ((2,), {"backend": 3}, TypeError),
    ],
)
def test_constructor_rejects_bad_arguments(args, kwargs, error):
    with pytest.raises(error):
        fastpool.AdaptiveAvgPool2d(*args, **kwargs)
    with pytest.raises(error):
        fastpool.AdaptiveMaxPool2d(*args, **kwargs)


def test_unknown_backend_is_reported_at_construction():
    for layer in (fastpool.AdaptiveAvgPool1d, fastpool.AdaptiveMaxPool3d):
        with pytest.raises(fastpool.BackendError, match="unknown backend 'nope'"):
            layer(2, backend="nope")


def test_unusable_backend_is_reported_at_the_call(monkeypatch):
    """Whether a known backend is usable is asked when it runs (that loads it)."""
    monkeypatch.setattr(fastpool._backends, "_loaded", dict(fastpool._backends._loaded))
    monkeypatch.setitem(fastpool._backends.BACKEND_MODULES, "numpy", "fastpool._no_such_module")
    monkeypatch.delitem(fastpool._backends._loaded, "numpy", raising=False)
    layer = fastpool.AdaptiveAvgPool1d(2, backend="numpy")
    with pytest.raises(fastpool.BackendError):
        layer(np.ones((1, 4)))


# -------------------------------------------------------------------------------- repr


@pytest.mark.parametrize("kind", ("avg", "max"))
@pytest.mark.parametrize(
    ("dims", "osize"),
    [(1, 3), (1, (3,)), (2, 7), (2, (7, 7)), (2, (None, 7)), (3, (1, None, 2)), (3, 5)],
)
def test_repr_is_torchs(kind, dims, osize):
    assert repr(LAYERS[kind, dims](osize)) == repr(_torch_module(kind, dims, osize))
    if kind == "max":  # torch leaves return_indices out of its repr, so does fastpool
        assert repr(LAYERS[kind, dims](osize, True)) == repr(
            _torch_module(kind, dims, osize, return_indices=True)
        )


def test_repr_shows_fastpool_options():
    assert repr(fastpool.AdaptiveAvgPool2d((7, 7))) == "AdaptiveAvgPool2d(output_size=(7, 7))"
    assert (
        repr(fastpool.AdaptiveMaxPool3d(2, backend="numpy", data_format="channels_last"))
        == "AdaptiveMaxPool3d(output_size=2, backend='numpy', data_format='channels_last')"
    )


def test_exported():
    for name in ("avg", "max"):
        for dims in (1, 2, 3):
            cls = f"Adaptive{name.capitalize()}Pool{dims}d"
            assert cls in fastpool.__all__
            assert getattr(fastpool, cls).__module__ == "fastpool.layers"
