"""ResNet-50 in plain numpy: im2col + one BLAS matrix product per conv.

What a numpy user would write without any of the ladder's ideas. It calibrates the random weights (its
BatchNorm can be swapped for one that records statistics) and is the benchmark's "plain numpy" peer.
"""

from collections.abc import Callable, Mapping

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from common import spec

BatchNorm = Callable[[str, np.ndarray, Mapping[str, np.ndarray]], np.ndarray]


def conv2d(x: np.ndarray, w: np.ndarray, stride: int, pad: int) -> np.ndarray:
    """(N, C, H, W) * (CO, C, K, K) -> (N, CO, HO, WO) as W(CO, C*K*K) @ cols(C*K*K, HO*WO)."""
    n, c, _, _ = x.shape
    co, _, k, _ = w.shape
    if pad:
        x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    if k == 1:
        cols = x[:, :, ::stride, ::stride]
        ho, wo = cols.shape[2:]
        cols = np.ascontiguousarray(cols).reshape(n, c, ho * wo)
    else:
        windows = sliding_window_view(x, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]
        ho, wo = windows.shape[2:4]
        cols = windows.transpose(0, 1, 4, 5, 2, 3).reshape(n, c * k * k, ho * wo)
    return np.matmul(w.reshape(co, -1), cols).reshape(n, co, ho, wo)


def batchnorm(bn: str, y: np.ndarray, params: Mapping[str, np.ndarray]) -> np.ndarray:
    scale = params[f"{bn}.weight"] / np.sqrt(params[f"{bn}.running_var"] + np.float32(spec.BN_EPS))
    shift = params[f"{bn}.bias"] - params[f"{bn}.running_mean"] * scale
    return y * scale[:, None, None] + shift[:, None, None]


def maxpool(x: np.ndarray) -> np.ndarray:
    k, s, p = spec.MAXPOOL
    padded = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=-np.inf)
    return sliding_window_view(padded, (k, k), axis=(2, 3))[:, :, ::s, ::s].max(axis=(4, 5))


def _last_use() -> dict[str, int]:
    last: dict[str, int] = {}
    for i, step in enumerate(spec.STEPS):
        last[step.src] = i
        if step.residual:
            last[step.residual] = i
    return last


LAST_USE = _last_use()


def forward(params: Mapping[str, np.ndarray], x: np.ndarray, bn: BatchNorm = batchnorm) -> np.ndarray:
    """(N, 3, 224, 224) float32 -> logits (N, 1000) float32."""
    tensors = {spec.INPUT: x}
    for i, step in enumerate(spec.STEPS):
        src = tensors[step.src]
        if step.op == "conv":
            c = step.conv
            y = bn(c.bn, conv2d(src, params[c.weight], c.stride, c.pad), params)
            if step.residual:
                y += tensors[step.residual]
            if step.relu:
                np.maximum(y, 0, out=y)
        elif step.op == "maxpool":
            y = maxpool(src)
        elif step.op == "avgpool":
            y = src.mean(axis=(2, 3))
        else:
            y = src @ params["fc.weight"].T + params["fc.bias"]
        tensors[step.dst] = y.astype(np.float32, copy=False)
        for name in [t for t, last in LAST_USE.items() if last == i]:
            tensors.pop(name, None)
    return tensors[spec.LOGITS]


class NumpyResNet50:
    """The stage contract around `forward`, with every tensor loaded once."""

    def __init__(self, weights, max_batch: int = 1) -> None:
        self.params = weights.load_all()
        self.max_batch = max_batch

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return forward(self.params, x)
