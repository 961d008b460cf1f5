"""Stage 04, no allocation: every buffer planned at construction, the forward pass allocates nothing.

One change from 03: memory is planned once. The constructor packs the weight pool into one flat array,
gives every tensor of the forward pass a place in one activation arena (a place is reused as soon as the
tensor in it is dead: ping-pong buffers, sized for `max_batch`), all aligned to cache lines, sets aside
the conv's scratch buffer (the planner is common/arena.py, which every later stage uses too), and writes
each step as a row of plain integers (op, offsets, sizes). The forward pass is one compiled
call that walks those rows; the kernels write into the views they are given instead of returning new
arrays. No dict, no string, no allocation on the hot path. The kernels' loops are 03's.

The forward pass walks `spec.STEPS` (conv1, maxpool, 16 bottlenecks, avgpool, fc): each step reads one
named tensor and writes one; a bottleneck's last conv adds the block's input (the residual) before its ReLU.
"""

from functools import partial

import numpy as np
from numba import njit

from common import spec
from common.arena import aligned_zeros, pack_weights, plan_arena
from common.inputs import SHAPE, check_batch, check_max_batch

BN_EPS = np.float32(spec.BN_EPS)


@njit(cache=True, fastmath=True)
def conv2d(x, w, stride, pad, y, scratch):
    """x (N, C, H, W), w (CO, K, K, C) channels-last -> y (N, CO, HO, WO)."""
    n_img, cin, h, wd = x.shape
    cout, k, _, _ = w.shape
    _, _, ho, wo = y.shape
    rows = w.reshape(cout, k, k * cin)  # rows[co, kh] = all kw taps of kernel row kh, channels innermost
    xt = scratch[: h * wd * cin].reshape(h, wd * cin)  # one image, channels last: xt[ih, iw * cin + ci]
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


@njit(cache=True)
def batchnorm(y, gamma, beta, mean, var, eps):
    """In place. One array read and written: the compiler needs no check that two arrays overlap."""
    n_img, c, h, wd = y.shape
    for n in range(n_img):
        for ch in range(c):
            scale = gamma[ch] / np.sqrt(var[ch] + eps)  # once per channel, so the inner loop is a multiply-add
            shift = beta[ch] - mean[ch] * scale
            for i in range(h):
                for j in range(wd):
                    y[n, ch, i, j] = y[n, ch, i, j] * scale + shift


@njit(cache=True)
def relu(y):
    flat_y = y.reshape(-1)
    for i in range(flat_y.size):
        flat_y[i] = max(flat_y[i], np.float32(0.0))


@njit(cache=True)
def add(y, b):
    """y += b, in place."""
    flat_y, flat_b = y.reshape(-1), b.reshape(-1)
    for i in range(flat_y.size):
        flat_y[i] = flat_y[i] + flat_b[i]


@njit(cache=True)
def maxpool(x, k, stride, pad, y):
    n_img, c, h, wd = x.shape
    _, _, ho, wo = y.shape
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


@njit(cache=True)
def avgpool(x, y):
    n_img, c, h, wd = x.shape
    for n in range(n_img):
        for ch in range(c):
            acc = np.float32(0.0)
            for i in range(h):
                for j in range(wd):
                    acc += x[n, ch, i, j]
            y[n, ch] = acc / np.float32(h * wd)


@njit(cache=True, fastmath=True)
def fc(x, w, b, y):
    n_img, cin = x.shape
    cout = w.shape[0]
    for n in range(n_img):
        for o in range(cout):
            acc = np.float32(0.0)
            for i in range(cin):
                acc += x[n, i] * w[o, i]
            y[n, o] = acc + b[o]


# A step of the plan is one row of integers; these name its columns.
OP, SRC, DST, RES, WEIGHT, BIAS, GAMMA, BETA, MEAN, VAR, C, H, W, CO, HO, WO, K, STRIDE, PAD, RELU = range(20)
CONV, MAXPOOL, AVGPOOL, FC = range(4)
OPS = {"conv": CONV, "maxpool": MAXPOOL, "avgpool": AVGPOOL, "fc": FC}


@njit(cache=True)
def run_plan(x, params, plan, arena, scratch, first, last):
    """Run plan rows first..last-1 on a batch x; every tensor lives in the arena at its planned offset."""
    n = x.shape[0]
    if first == 0:
        arena[plan[0, SRC] : plan[0, SRC] + x.size] = x.reshape(-1)
    for i in range(first, last):
        p = plan[i]
        c, h, w, co, ho, wo = p[C], p[H], p[W], p[CO], p[HO], p[WO]
        src = arena[p[SRC] : p[SRC] + n * c * h * w].reshape(n, c, h, w)
        if p[OP] == CONV:
            k = p[K]
            dst = arena[p[DST] : p[DST] + n * co * ho * wo].reshape(n, co, ho, wo)
            conv2d(
                src,
                params[p[WEIGHT] : p[WEIGHT] + co * k * k * c].reshape(co, k, k, c),
                p[STRIDE],
                p[PAD],
                dst,
                scratch,
            )
            batchnorm(
                dst,
                params[p[GAMMA] : p[GAMMA] + co],
                params[p[BETA] : p[BETA] + co],
                params[p[MEAN] : p[MEAN] + co],
                params[p[VAR] : p[VAR] + co],
                BN_EPS,
            )
            if p[RES] >= 0:
                add(dst, arena[p[RES] : p[RES] + n * co * ho * wo].reshape(n, co, ho, wo))
            if p[RELU]:
                relu(dst)
        elif p[OP] == MAXPOOL:
            maxpool(src, p[K], p[STRIDE], p[PAD], arena[p[DST] : p[DST] + n * co * ho * wo].reshape(n, co, ho, wo))
        elif p[OP] == AVGPOOL:
            avgpool(src, arena[p[DST] : p[DST] + n * co].reshape(n, co))
        else:
            fc(
                src.reshape(n, c),
                params[p[WEIGHT] : p[WEIGHT] + co * c].reshape(co, c),
                params[p[BIAS] : p[BIAS] + co],
                arena[p[DST] : p[DST] + n * co].reshape(n, co),
            )


class ResNet50:
    """`align` and `reuse` switch one idea off at a time, for `make ablate STAGE=04`; the defaults are the
    lesson (common/arena.py holds the planner, used by every stage from here on)."""

    def __init__(self, weights, max_batch: int = 1, align: bool = True, reuse: bool = True) -> None:
        max_batch = check_max_batch(max_batch)
        self.params, weight_at = pack_weights(weights, align)
        self.tensor_at, arena_size = plan_arena(max_batch, align, reuse)
        self.arena = aligned_zeros(arena_size, align)
        self.scratch = aligned_zeros(max(c.h_in * c.w_in * c.cin for c in spec.CONVS), align)
        self.plan = np.array([self._row(step, weight_at) for step in spec.STEPS], np.int64)
        self.max_batch = max_batch

    def _row(self, step: spec.Step, weight_at: dict[str, int]) -> list[int]:
        src = spec.STEP_BY_NAME[step.src].shape if step.src != spec.INPUT else SHAPE
        c, h, w = (*src, 1, 1)[:3]  # (C,) of the fc's input reads as (C, 1, 1)
        co, ho, wo = (*step.shape, 1, 1)[:3]
        k, stride, pad = spec.MAXPOOL if step.op == "maxpool" else (0, 0, 0)
        tensors = [0] * 6  # offsets of weight, bias, gamma, beta, mean, var in the pool (0: not used)
        if step.conv is not None:
            k, stride, pad = step.conv.kernel, step.conv.stride, step.conv.pad
            bn = [f"{step.conv.bn}.{f}" for f in ("weight", "bias", "running_mean", "running_var")]
            tensors = [weight_at[step.conv.weight], 0, *(weight_at[t] for t in bn)]
        elif step.op == "fc":
            tensors = [weight_at["fc.weight"], weight_at["fc.bias"], 0, 0, 0, 0]
        res = self.tensor_at[step.residual] if step.residual else -1
        src_at, dst_at = self.tensor_at[step.src], self.tensor_at[step.dst]
        return [OPS[step.op], src_at, dst_at, res, *tensors, c, h, w, co, ho, wo, k, stride, pad, int(step.relu)]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """x: (N, 3, 224, 224) float32, C-contiguous -> logits (N, 1000) float32."""
        x = check_batch(x, self.max_batch)
        run_plan(x, self.params, self.plan, self.arena, self.scratch, 0, len(self.plan))
        return self._logits(len(x))

    def layer_steps(self, x: np.ndarray) -> list:
        """The forward pass as (layer name, step) pairs: calling the steps in order returns the logits
        from the last one. The profiler times each step; `__call__` runs them all in one call."""
        x = check_batch(x, self.max_batch)
        steps = []
        for i, step in enumerate(spec.STEPS):
            run = partial(run_plan, x, self.params, self.plan, self.arena, self.scratch, i, i + 1)
            steps.append((step.name, run))
        last_name, last_run = steps[-1]
        steps[-1] = (last_name, lambda: (last_run(), self._logits(len(x)))[1])
        return steps

    def _logits(self, n: int) -> np.ndarray:
        start = self.tensor_at[spec.LOGITS]
        return self.arena[start : start + n * spec.NUM_CLASSES].reshape(n, spec.NUM_CLASSES).copy()


# `make ablate STAGE=04`: the lesson with one of its ideas switched off, each measured against the whole.
ABLATIONS = {
    "buffers a quarter cache line off (not aligned)": {"align": False},
    "every tensor its own place (no reuse)": {"reuse": False},
}
