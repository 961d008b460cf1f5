"""Stage 02, vectorized: the convolution's innermost loop made unit-stride, so the compiler can use SIMD.

One change from 01, in the convolution. Its input is copied channels-last (x[ih, iw, ci]) and its weights
are stored channels-last (w[co, kh, kw, ci]): then the kw taps of one input row and all their channels
sit next to each other in memory, and one output value is a handful of dot products over contiguous
runs of kw*ci values (192 floats for a 64-channel 3x3 conv). The innermost loop is that dot product,
and `fastmath` lets LLVM reassociate its sum into several partial sums, i.e. packed FMA instructions on
16-float zmm registers. BatchNorm gets the same treatment: its per-channel scale and shift are computed
once per channel, so its innermost loop is one multiply-add over contiguous values, and the classifier's
dot products get fastmath too. The other ops are 01's.

The forward pass walks `spec.STEPS` (conv1, maxpool, 16 bottlenecks, avgpool, fc): each step reads one
named tensor and writes one; a bottleneck's last conv adds the block's input (the residual) before its ReLU.
"""

from functools import partial

import numpy as np
from numba import njit

from common import spec
from common.inputs import check_batch, check_max_batch

BN_EPS = np.float32(spec.BN_EPS)


@njit(cache=True, fastmath=True)
def conv2d(x, w, stride, pad):
    """x (N, C, H, W), w (CO, K, K, C) channels-last -> y (N, CO, HO, WO)."""
    n_img, cin, h, wd = x.shape
    cout, k, _, _ = w.shape
    ho = (h + 2 * pad - k) // stride + 1
    wo = (wd + 2 * pad - k) // stride + 1
    y = np.empty((n_img, cout, ho, wo), dtype=np.float32)
    rows = w.reshape(cout, k, k * cin)  # rows[co, kh] = all kw taps of kernel row kh, channels innermost
    xt = np.empty((h, wd * cin), dtype=np.float32)  # one image, channels last: xt[ih, iw * cin + ci]
    for n in range(n_img):
        for ci in range(cin):
            for i in range(h):
                for j in range(wd):
                    xt[i, j * cin + ci] = x[n, ci, i, j]
        for co in range(cout):
            for oh in range(ho):
                for ow in range(wo):
                    iw0 = ow * stride - pad
                    kw_lo = max(0, -iw0)  # taps that fall on the zero padding are left out
                    kw_hi = min(k, wd - iw0)
                    acc = np.float32(0.0)
                    for kh in range(k):
                        ih = oh * stride - pad + kh
                        if 0 <= ih < h:
                            xs = xt[ih, (iw0 + kw_lo) * cin : (iw0 + kw_hi) * cin]
                            ws = rows[co, kh, kw_lo * cin : kw_hi * cin]
                            for j in range(xs.size):  # unit-stride dot product: packed FMA
                                acc += ws[j] * xs[j]
                    y[n, co, oh, ow] = acc
    return y


@njit(cache=True)
def batchnorm(x, gamma, beta, mean, var, eps):
    n_img, c, h, wd = x.shape
    y = np.empty_like(x)
    for n in range(n_img):
        for ch in range(c):
            scale = gamma[ch] / np.sqrt(var[ch] + eps)  # once per channel, so the inner loop is a multiply-add
            shift = beta[ch] - mean[ch] * scale
            for i in range(h):
                for j in range(wd):
                    y[n, ch, i, j] = x[n, ch, i, j] * scale + shift
    return y


@njit(cache=True)
def relu(x):
    y = np.empty_like(x)
    flat_x = x.reshape(-1)
    flat_y = y.reshape(-1)
    for i in range(flat_x.size):
        flat_y[i] = max(flat_x[i], np.float32(0.0))
    return y


@njit(cache=True)
def add(a, b):
    y = np.empty_like(a)
    flat_a, flat_b, flat_y = a.reshape(-1), b.reshape(-1), y.reshape(-1)
    for i in range(flat_a.size):
        flat_y[i] = flat_a[i] + flat_b[i]
    return y


@njit(cache=True)
def maxpool(x, k, stride, pad):
    n_img, c, h, wd = x.shape
    ho = (h + 2 * pad - k) // stride + 1
    wo = (wd + 2 * pad - k) // stride + 1
    y = np.empty((n_img, c, ho, wo), dtype=np.float32)
    for n in range(n_img):
        for ch in range(c):
            for oh in range(ho):
                for ow in range(wo):
                    best = -np.inf
                    for kh in range(k):
                        for kw in range(k):
                            ih = oh * stride - pad + kh
                            iw = ow * stride - pad + kw
                            if 0 <= ih < h and 0 <= iw < wd and x[n, ch, ih, iw] > best:
                                best = x[n, ch, ih, iw]
                    y[n, ch, oh, ow] = best
    return y


@njit(cache=True)
def avgpool(x):
    n_img, c, h, wd = x.shape
    y = np.empty((n_img, c), dtype=np.float32)
    for n in range(n_img):
        for ch in range(c):
            acc = np.float32(0.0)
            for i in range(h):
                for j in range(wd):
                    acc += x[n, ch, i, j]
            y[n, ch] = acc / np.float32(h * wd)
    return y


@njit(cache=True, fastmath=True)
def fc(x, w, b):
    n_img, cin = x.shape
    cout = w.shape[0]
    y = np.empty((n_img, cout), dtype=np.float32)
    for n in range(n_img):
        for o in range(cout):
            acc = np.float32(0.0)
            for i in range(cin):
                acc += x[n, i] * w[o, i]
            y[n, o] = acc + b[o]
    return y


def channels_last(w: np.ndarray) -> np.ndarray:
    """(CO, CI, K, K) as stored -> (CO, K, K, CI), the layout conv2d reads."""
    return np.ascontiguousarray(w.transpose(0, 2, 3, 1))


class ResNet50:
    def __init__(self, weights, max_batch: int = 1) -> None:
        max_batch = check_max_batch(max_batch)
        self.weights = weights
        self.max_batch = max_batch

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """x: (N, 3, 224, 224) float32, C-contiguous -> logits (N, 1000) float32."""
        out = None
        for _name, run in self.layer_steps(x):
            out = run()
        return out

    def layer_steps(self, x: np.ndarray) -> list:
        """The forward pass as (layer name, step) pairs: calling the steps in order returns the logits
        from the last one. `__call__` does just that; the profiler times each step."""
        tensors = {spec.INPUT: check_batch(x, self.max_batch)}
        return [(step.name, partial(self._run, step, tensors)) for step in spec.STEPS]

    def _run(self, step: spec.Step, tensors: dict) -> np.ndarray:
        x = tensors[step.src]
        if step.op == "conv":
            c = step.conv
            load = self.weights.load
            y = conv2d(x, channels_last(load(c.weight)), c.stride, c.pad)
            y = batchnorm(
                y,
                load(f"{c.bn}.weight"),
                load(f"{c.bn}.bias"),
                load(f"{c.bn}.running_mean"),
                load(f"{c.bn}.running_var"),
                BN_EPS,
            )
            if step.residual:
                y = add(y, tensors[step.residual])
            if step.relu:
                y = relu(y)
        elif step.op == "maxpool":
            y = maxpool(x, *spec.MAXPOOL)
        elif step.op == "avgpool":
            y = avgpool(x)
        else:
            y = fc(x, self.weights.load("fc.weight"), self.weights.load("fc.bias"))
        tensors[step.dst] = y
        return y
