"""Stage 06, threads: each conv's output channels split across the cores.

One change from 05: the generated conv kernels run their loop over blocks of output channels with numba's
`prange` (`parallel=True`), so each thread computes its own share of the output channels; every block
reads the same channels-last input copy and writes its own output planes. The thread count is the
constructor's `threads` (default: all of numba's threads, NUMBA_NUM_THREADS, i.e. every core). Any
channel count works: blocks are handed out whole, and the leftover channels get a loop of their own.

The forward pass walks `spec.STEPS` (conv1, maxpool, 16 bottlenecks, avgpool, fc): each step reads one
named tensor and writes one; a bottleneck's last conv adds the block's input (the residual) before its ReLU.
"""

import hashlib
import importlib.util
import inspect
import math
import os
import sys
from functools import partial

import numba
import numpy as np
from numba import njit, prange

from common import jit_cache, spec
from common.inputs import SHAPE, check_batch, check_max_batch, check_threads
from common.paths import cache_dir

BN_EPS = np.float32(spec.BN_EPS)


V = 8  # output channels per pass of a conv kernel: each input vector loaded feeds V dot products


def conv_name(c: spec.Conv) -> str:
    return f"conv_{c.cin}x{c.h_in}x{c.w_in}_to_{c.cout}_k{c.kernel}_s{c.stride}"


def conv_geometry(c: spec.Conv) -> tuple[int, int, int, int, int]:
    """(rows, cols, border, sample, step) of the kernel's channels-last copy of its input.

    A 1x1 conv samples its input at its stride while copying and then runs at stride 1; a larger kernel
    copies every pixel into a zero border of its padding and moves over the copy at its stride.
    """
    if c.kernel == 1:
        return c.h_out, c.w_out, 0, c.stride, 1
    return c.h_in, c.w_in, c.pad, 1, c.stride


def dot_length(c: spec.Conv) -> tuple[int, int]:
    """(length, padded length) of one dot product: k taps x cin channels, rounded up to whole vectors.

    conv1 has 3 channels: 7 x 3 = 21 floats, one vector and a scalar tail. Padded to 32 with zero
    weights, it is two vectors and no tail; the 11 extra inputs read are multiplied by zero.
    """
    length = c.kernel * c.cin
    return length, -(-length // 16) * 16


def copy_shape(c: spec.Conv) -> tuple[int, int]:
    """(rows, floats per row) of the channels-last copy, wide enough for the last dot's padding."""
    rows, cols, border, _, step = conv_geometry(c)
    _, padded = dot_length(c)
    width = max((cols + 2 * border) * c.cin, (c.w_out - 1) * step * c.cin + padded)
    return rows + 2 * border, width


def scratch_size(c: spec.Conv) -> int:
    rows, width = copy_shape(c)
    length, padded = dot_length(c)
    return rows * width + (c.cout * c.kernel * padded if padded != length else 0)


def channel_loop(c: spec.Conv, first: int, last: int, block: int) -> list[str]:
    """Output channels first..last-1, `block` at a time: each input vector loaded feeds `block` FMAs."""
    k, cin = c.kernel, c.cin
    step = conv_geometry(c)[4]
    padded = dot_length(c)[1]
    return [
        f"        for b in prange({(last - first) // block}):  # blocks of output channels, across threads",
        f"            co = {first} + b * {block}",
        f"            for oh in range({c.h_out}):",
        f"                for ow in range({c.w_out}):",
        *[f"                    a{v} = np.float32(0.0)" for v in range(block)],
        f"                    for kh in range({k}):",
        f"                        xs = xp[oh * {step} + kh, ow * {step * cin} : ow * {step * cin} + {padded}]",
        *[f"                        w{v} = w[co + {v}, kh]" for v in range(block)],
        f"                        for j in range({padded}):",
        "                            v = xs[j]",
        *[f"                            a{v} += w{v}[j] * v" for v in range(block)],
        *[f"                    y[n, co + {v}, oh, ow] = a{v}" for v in range(block)],
    ]


def conv_source(c: spec.Conv, layers: list[str]) -> str:
    """The kernel for every conv of c's shape: x (n, C, H, W), w (CO, K, K*C), y (n, CO, HO, WO)."""
    k, cin, cout = c.kernel, c.cin, c.cout
    rows, cols, border, sample, _ = conv_geometry(c)
    height, width = copy_shape(c)
    length, padded = dot_length(c)  # one kernel row: k taps x cin channels, contiguous in the copy and in w
    out = [
        "@njit(cache=True, fastmath=True, parallel=True)",
        f"def {conv_name(c)}(x, w, y, scratch):",
        f'    """{cin}x{c.h_in}x{c.w_in} -> {cout}x{c.h_out}x{c.w_out}, {k}x{k} conv, stride {c.stride}, '
        f'padding {c.pad}: {", ".join(layers)}."""',
        f"    xp = scratch[: {height * width}].reshape({height}, {width})",
    ]
    if padded != length:
        out += [
            f"    wp = scratch[{height * width} : {height * width + cout * k * padded}].reshape({cout}, {k}, {padded})",
            "    wp[:] = 0  # each kernel row padded with zero weights to a whole number of vectors",
            f"    wp[:, :, :{length}] = w",
            "    w = wp",
        ]
    if border or width > (cols + 2 * border) * cin:
        out.append("    xp[:] = 0  # the border stays zero; every image overwrites the inside")
    tile = 16 if cin % 16 == 0 else cin  # channels copied together: each 16 fill one cache line of xp
    out += [
        "    for n in range(x.shape[0]):",
        f"        for i in prange({rows}):  # rows of the copy, across threads",
        f"            for cb in range(0, {cin}, {tile}):",
        f"                for j in range({cols}):",
        f"                    for c in range({tile}):",
        f"                        xp[i + {border}, (j + {border}) * {cin} + cb + c] = "
        f"x[n, cb + c, i * {sample}, j * {sample}]",
    ]
    whole = cout - cout % V
    if whole:
        out += channel_loop(c, 0, whole, V)
    if whole < cout:  # channels left over after the blocks of V, one at a time
        out += channel_loop(c, whole, cout, 1)
    return "\n".join(out) + "\n"


@njit(cache=True, parallel=True)
def batchnorm(y, gamma, beta, mean, var, eps):
    """In place. One array read and written: the compiler needs no check that two arrays overlap."""
    n_img, c, h, wd = y.shape
    for n in range(n_img):
        for ch in prange(c):
            scale = gamma[ch] / np.sqrt(var[ch] + eps)  # once per channel, so the inner loop is a multiply-add
            shift = beta[ch] - mean[ch] * scale
            for i in range(h):
                for j in range(wd):
                    y[n, ch, i, j] = y[n, ch, i, j] * scale + shift


@njit(cache=True, parallel=True)
def relu(y):
    flat_y = y.reshape(-1)
    for i in prange(flat_y.size):
        flat_y[i] = max(flat_y[i], np.float32(0.0))


@njit(cache=True, parallel=True)
def add(y, b):
    """y += b, in place."""
    flat_y, flat_b = y.reshape(-1), b.reshape(-1)
    for i in prange(flat_y.size):
        flat_y[i] = flat_y[i] + flat_b[i]


@njit(cache=True, parallel=True)
def maxpool(x, k, stride, pad, y):
    n_img, c, h, wd = x.shape
    _, _, ho, wo = y.shape
    for n in range(n_img):
        for ch in prange(c):
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


@njit(cache=True, parallel=True)
def avgpool(x, y):
    n_img, c, h, wd = x.shape
    for n in range(n_img):
        for ch in prange(c):
            acc = np.float32(0.0)
            for i in range(h):
                for j in range(wd):
                    acc += x[n, ch, i, j]
            y[n, ch] = acc / np.float32(h * wd)


@njit(cache=True, fastmath=True, parallel=True)
def fc(x, w, b, y):
    n_img, cin = x.shape
    cout = w.shape[0]
    for n in range(n_img):
        for o in prange(cout):
            acc = np.float32(0.0)
            for i in range(cin):
                acc += x[n, i] * w[o, i]
            y[n, o] = acc + b[o]


def forward_source(tensor_at: dict[str, int], weight_at: dict[str, int]) -> str:
    """The forward pass as straight-line code; offsets are per image, `b` is the arena's capacity in images."""

    def view(tensor: str, shape: tuple[int, ...]) -> str:
        at, size = tensor_at[tensor], math.prod(shape)
        return f"arena[b * {at} : b * {at} + n * {size}].reshape(n, {', '.join(map(str, shape))})"

    def pool(name: str, shape: tuple[int, ...]) -> str:
        at = weight_at[name]
        text = f"params[{at} : {at + math.prod(shape)}]"
        return text if len(shape) == 1 else f"{text}.reshape({', '.join(map(str, shape))})"

    out = [
        "@njit(cache=True)",
        "def forward(x, params, arena, scratch, b, first, last):",
        '    """Steps first..last-1 of ResNet-50 on x (n images); the arena holds b images per tensor."""',
        "    n = x.shape[0]",
    ]
    for i, step in enumerate(spec.STEPS):
        src_shape = spec.STEP_BY_NAME[step.src].shape if step.src != spec.INPUT else SHAPE
        out.append(f"    if first <= {i} < last:  # {step.name}")
        if i == 0:
            out.append(f"        {view(spec.INPUT, SHAPE)}[:] = x")
        src, dst = view(step.src, src_shape), view(step.dst, step.shape)
        if step.op == "conv":
            c = step.conv
            bn = [pool(f"{c.bn}.{f}", (c.cout,)) for f in ("weight", "bias", "running_mean", "running_var")]
            out += [
                f"        dst = {dst}",
                f"        {conv_name(c)}({src}, {pool(c.weight, (c.cout, c.kernel, c.kernel * c.cin))}, dst, scratch)",
                f"        batchnorm(dst, {', '.join(bn)}, BN_EPS)",
            ]
            if step.residual:
                out.append(f"        add(dst, {view(step.residual, step.shape)})")
            if step.relu:
                out.append("        relu(dst)")
        elif step.op == "maxpool":
            out.append(f"        maxpool({src}, {', '.join(map(str, spec.MAXPOOL))}, {dst})")
        elif step.op == "avgpool":
            out.append(f"        avgpool({src}, {dst})")
        else:
            weight, bias = pool("fc.weight", (spec.NUM_CLASSES, spec.FC_IN)), pool("fc.bias", (spec.NUM_CLASSES,))
            out.append(f"        fc({src}, {weight}, {bias}, {dst})")
    return "\n".join(out) + "\n"


def generate(tensor_at: dict[str, int], weight_at: dict[str, int]) -> str:
    """The whole generated module: 04's small kernels, one conv kernel per distinct shape, the forward pass."""
    shapes: dict[str, list[spec.Conv]] = {}
    for c in spec.CONVS:
        shapes.setdefault(conv_name(c), []).append(c)
    parts = [
        "# Generated by stages/06_threads/resnet50.py: ResNet-50 with every size a literal. Edit the generator.",
        "import numpy as np\nfrom numba import njit, prange\n",
        f"BN_EPS = np.float32({spec.BN_EPS!r})\n",
        *(inspect.getsource(k.py_func) for k in (batchnorm, relu, add, maxpool, avgpool, fc)),
        *(conv_source(convs[0], [c.name for c in convs]) for convs in shapes.values()),
        forward_source(tensor_at, weight_at),
    ]
    return "\n\n".join(parts)


def load_generated(source: str):
    """Import the generated source from the private cache, writing it there first if it is not already.

    The folder is named by a hash of the source, numba's and Python's versions; the file is compared with
    the source, so a truncated, edited or corrupt copy is rewritten (numba then recompiles it, as its own
    cache follows the file's timestamp). numba keeps the machine code in __pycache__ next to the file,
    checksummed by common.jit_cache.
    """
    key = hashlib.sha256(f"{source}{numba.__version__}{sys.version}".encode()).hexdigest()[:20]
    folder = cache_dir("codegen", f"06_threads-{key}")
    path = folder / "resnet50_generated.py"
    if not path.is_file() or path.read_bytes() != source.encode():
        tmp = folder / f".resnet50_generated.{os.getpid()}.tmp"
        tmp.write_text(source, encoding="utf-8")
        os.replace(tmp, path)  # atomic: another process sees the old file or the new one, never half
    jit_cache.install(folder)
    name = f"resnet50_generated_06_{key}"
    if name not in sys.modules:
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name]


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
    def __init__(self, weights, max_batch: int = 1, threads: int | None = None) -> None:
        max_batch = check_max_batch(max_batch)
        available = numba.config.NUMBA_NUM_THREADS
        self.threads = available if threads is None else check_threads(threads, available)
        self.params, weight_at = pack_weights(weights)
        self.tensor_at, arena_size = plan_arena(max_batch)
        self.arena = aligned_zeros(arena_size)
        self.scratch = aligned_zeros(max(scratch_size(c) for c in spec.CONVS))
        per_image = {tensor: at // max_batch for tensor, at in self.tensor_at.items()}
        self.source = generate(per_image, weight_at)
        self.forward = load_generated(self.source).forward
        self.max_batch = max_batch

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """x: (N, 3, 224, 224) float32, C-contiguous -> logits (N, 1000) float32."""
        x = check_batch(x, self.max_batch)
        numba.set_num_threads(self.threads)
        self.forward(x, self.params, self.arena, self.scratch, self.max_batch, 0, len(spec.STEPS))
        return self._logits(len(x))

    def layer_steps(self, x: np.ndarray) -> list:
        """The forward pass as (layer name, step) pairs: calling the steps in order returns the logits
        from the last one. The profiler times each step; `__call__` runs them all in one call."""
        x = check_batch(x, self.max_batch)
        numba.set_num_threads(self.threads)
        steps = []
        for i, step in enumerate(spec.STEPS):
            run = partial(self.forward, x, self.params, self.arena, self.scratch, self.max_batch, i, i + 1)
            steps.append((step.name, run))
        last_name, last_run = steps[-1]
        steps[-1] = (last_name, lambda: (last_run(), self._logits(len(x)))[1])
        return steps

    def _logits(self, n: int) -> np.ndarray:
        start = self.tensor_at[spec.LOGITS]
        return self.arena[start : start + n * spec.NUM_CLASSES].reshape(n, spec.NUM_CLASSES).copy()
