"""Stage 04, no allocation: every buffer planned at construction, the forward pass allocates nothing.

One change from 03: memory is planned once. The constructor packs the weight pool into one flat array,
gives every tensor of the forward pass a place in one activation arena (a place is reused as soon as the
tensor in it is dead: ping-pong buffers, sized for `max_batch`), sets aside the conv's scratch buffer,
and writes each step as a row of plain integers (op, offsets, sizes). The forward pass is one compiled
call that walks those rows; the kernels write into the views they are given instead of returning new
arrays. No dict, no string, no allocation on the hot path. The kernels' loops are 03's.

The forward pass walks `spec.STEPS` (conv1, maxpool, 16 bottlenecks, avgpool, fc): each step reads one
named tensor and writes one; a bottleneck's last conv adds the block's input (the residual) before its ReLU.
"""

import math
from functools import partial

import numpy as np
from numba import njit

from common import spec
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


def channels_last(w: np.ndarray) -> np.ndarray:
    """(CO, CI, K, K) as stored -> (CO, K, K, CI), the layout conv2d reads."""
    return np.ascontiguousarray(w.transpose(0, 2, 3, 1))


LINE = 16  # floats in a 64-byte cache line: every buffer and every tensor starts on one


def aligned(n: int) -> int:
    return -(-n // LINE) * LINE


def aligned_zeros(n: int) -> np.ndarray:
    """n float32 zeros starting on a cache line, so 16-float vector loads never straddle two lines."""
    raw = np.zeros(n + LINE, np.float32)
    start = (-raw.ctypes.data % (4 * LINE)) // 4
    return raw[start : start + n]


def pack_weights(weights) -> tuple[np.ndarray, dict[str, int]]:
    """Every tensor, conv weights channels-last, in one flat float32 array; the offset of each by name."""
    arrays = {name: weights.load(name) for name in weights.names()}
    for c in spec.CONVS:
        arrays[c.weight] = channels_last(arrays[c.weight])
    offsets, total = {}, 0
    for name, a in arrays.items():
        offsets[name] = total
        total += aligned(a.size)
    params = aligned_zeros(total)
    for name, a in arrays.items():
        params[offsets[name] : offsets[name] + a.size] = a.reshape(-1)
    return params, offsets


def plan_arena(max_batch: int) -> tuple[dict[str, int], int]:
    """A place in one arena for every tensor of the forward pass, reusing a place once its tensor is dead.

    Tensors are placed in the order they are made. A place is free for step i's output when the last step
    that reads its current tensor comes before i. Each place is as large as the largest tensor it holds.
    """
    sizes = {spec.INPUT: max_batch * aligned(spec.IN_CHANNELS * spec.IMAGE_SIZE**2)}
    last_read = {}
    for i, step in enumerate(spec.STEPS):
        sizes[step.dst] = max_batch * aligned(math.prod(step.shape))
        last_read[step.src] = i
        if step.residual:
            last_read[step.residual] = i
    places: list[list] = []  # [size, tensor in it]
    where: dict[str, int] = {}
    for i, tensor in enumerate(sizes):  # the input, then each step's output in execution order
        free = [j for j, (_, holder) in enumerate(places) if last_read.get(holder, len(spec.STEPS)) < i - 1]
        if free:
            j = max(free, key=lambda j: places[j][0])
            places[j] = [max(places[j][0], sizes[tensor]), tensor]
        else:
            j = len(places)
            places.append([sizes[tensor], tensor])
        where[tensor] = j
    starts = np.cumsum([0] + [size for size, _ in places])
    return {tensor: int(starts[j]) for tensor, j in where.items()}, int(starts[-1])


class ResNet50:
    def __init__(self, weights, max_batch: int = 1) -> None:
        max_batch = check_max_batch(max_batch)
        self.params, weight_at = pack_weights(weights)
        self.tensor_at, arena_size = plan_arena(max_batch)
        self.arena = aligned_zeros(arena_size)
        self.scratch = aligned_zeros(max(c.h_in * c.w_in * c.cin for c in spec.CONVS))
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
