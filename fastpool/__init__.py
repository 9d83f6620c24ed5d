"""fastpool: adaptive average and max pooling (1d/2d/3d, forward and backward) for NumPy.

The semantics are PyTorch's ``torch.nn.functional.adaptive_{avg,max}_pool{1,2,3}d``; several
backends (``numpy``, ``numba``, ``cython``, ``cuda``) compute them. See the README.
"""

from ._api import (
    adaptive_avg_pool1d,
    adaptive_avg_pool1d_backward,
    adaptive_avg_pool2d,
    adaptive_avg_pool2d_backward,
    adaptive_avg_pool3d,
    adaptive_avg_pool3d_backward,
    adaptive_max_pool1d,
    adaptive_max_pool1d_backward,
    adaptive_max_pool2d,
    adaptive_max_pool2d_backward,
    adaptive_max_pool3d,
    adaptive_max_pool3d_backward,
)
from ._backends import (
    BackendError,
    available_backends,
    get_backend,
    set_backend,
    use_backend,
)
from ._threads import get_num_threads, limit_threads, set_num_threads
from .layers import (
    AdaptiveAvgPool1d,
    AdaptiveAvgPool2d,
    AdaptiveAvgPool3d,
    AdaptiveMaxPool1d,
    AdaptiveMaxPool2d,
    AdaptiveMaxPool3d,
)

__version__ = "0.1.0"

__all__ = [
    "AdaptiveAvgPool1d",
    "AdaptiveAvgPool2d",
    "AdaptiveAvgPool3d",
    "AdaptiveMaxPool1d",
    "AdaptiveMaxPool2d",
    "AdaptiveMaxPool3d",
    "BackendError",
    "adaptive_avg_pool1d",
    "adaptive_avg_pool1d_backward",
    "adaptive_avg_pool2d",
    "adaptive_avg_pool2d_backward",
    "adaptive_avg_pool3d",
    "adaptive_avg_pool3d_backward",
    "adaptive_max_pool1d",
    "adaptive_max_pool1d_backward",
    "adaptive_max_pool2d",
    "adaptive_max_pool2d_backward",
    "adaptive_max_pool3d",
    "adaptive_max_pool3d_backward",
    "available_backends",
    "get_backend",
    "get_num_threads",
    "limit_threads",
    "set_backend",
    "set_num_threads",
    "use_backend",
]
