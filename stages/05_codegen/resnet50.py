"""Stage 05, generated code: every layer gets a kernel written for its exact shape.

One change from 04: instead of one generic conv kernel reading sizes from a table, a generator writes
Python source: one conv kernel per distinct layer shape, with channels, sizes, strides and padding as
literals, and a straight-line forward pass with every offset a literal. Knowing the sizes, each kernel
copies its input channels-last with a zero border, so every dot product has the same literal length (no
edge cases, no remainder loop), and it computes 8 output channels at once, so each loaded input vector
feeds 8 FMAs instead of one. The other kernels are 04's, copied into the source. common.generated
compiles the source once, caches it in a private folder, and turns it into a `ResNet50`.

The forward pass walks `spec.STEPS` (conv1, maxpool, 16 bottlenecks, avgpool, fc): each step reads one
named tensor and writes one; a bottleneck's last conv adds the block's input (the residual) before its ReLU.
"""

import inspect

import numpy as np
from numba import njit

from common import isa, spec
from common.arena import channels_last
from common.generated import GeneratedResNet50, activation, arena_view, local, plus, pool_view, times
from common.inputs import SHAPE

BLOCK = 8  # output channels per pass of a conv kernel: each input vector loaded feeds BLOCK dot products
TILE = 16  # input channels copied together: 16 floats fill one cache line of the copy
VECTOR = isa.target().vector_floats  # floats in one vector register of the target (16 on AVX-512, 8 on AVX2)


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


def dot_length(c: spec.Conv, whole_vectors: bool = True) -> int:
    """One dot product: k taps x cin channels, rounded up to whole vectors.

    conv1 has 3 channels: 7 x 3 = 21 floats, one vector and a scalar tail. Padded to 32 with zero
    weights (once, in the pool), it is two vectors and no tail; the 11 extra inputs read are multiplied
    by zero.
    """
    length = c.kernel * c.cin
    return -(-length // VECTOR) * VECTOR if whole_vectors else length


def copy_shape(c: spec.Conv, whole_vectors: bool = True) -> tuple[int, int]:
    """(rows, floats per row) of the channels-last copy, wide enough for the last dot's padding."""
    rows, cols, border, _, step = conv_geometry(c)
    width = max((cols + 2 * border) * c.cin, (c.w_out - 1) * step * c.cin + dot_length(c, whole_vectors))
    return rows + 2 * border, width


def channel_loop(c: spec.Conv, first: int, last: int, block: int, whole_vectors: bool) -> list[str]:
    """Output channels first..last-1, `block` at a time: each input vector loaded feeds `block` FMAs."""
    cin, step, length = c.cin, conv_geometry(c)[4], dot_length(c, whole_vectors)
    blocks = (last - first) // block
    co = "co" if blocks > 1 else str(first)  # the block's first output channel
    kh = "kh" if c.kernel > 1 else "0"
    row = plus(times("ow", step * cin))
    tap = [
        f"xs = xp[{plus(times('oh', step), kh)}, {row} : {plus(row, length)}]",
        *[f"w{v} = w[{plus(co, v)}, {kh}]" for v in range(block)],
        f"for j in range({length}):",
        "    xj = xs[j]",
        *[f"    a{v} += w{v}[j] * xj" for v in range(block)],
    ]
    pixel = [
        *[f"a{v} = np.float32(0.0)" for v in range(block)],
        *([f"for kh in range({c.kernel}):", *["    " + t for t in tap]] if c.kernel > 1 else tap),
        *[f"y[n, {plus(co, v)}, oh, ow] = a{v}" for v in range(block)],
    ]
    body = [
        f"for oh in range({c.h_out}):",
        f"    for ow in range({c.w_out}):",
        *["        " + p for p in pixel],
    ]
    if blocks == 1:
        return ["        " + b for b in body]
    first_channel = f"co = {plus(first, times('b', block))}"
    return [f"        for b in range({blocks}):", *["            " + b for b in [first_channel, *body]]]


def conv_source(c: spec.Conv, layers: list[str], block: int = BLOCK, tile: int = TILE, whole_vectors=True) -> str:
    """The kernel for every conv of c's shape: x (n, C, H, W), w (CO, K, K*C padded), y (n, CO, HO, WO)."""
    cin, cout = c.cin, c.cout
    rows, cols, border, sample, _ = conv_geometry(c)
    height, width = copy_shape(c, whole_vectors)
    out = [
        "@njit(cache=True, fastmath=True)",
        f"def {conv_name(c)}(x, w, y, scratch):",
        f'    """{cin}x{c.h_in}x{c.w_in} -> {cout}x{c.h_out}x{c.w_out}, {c.kernel}x{c.kernel} conv, stride {c.stride}, '
        f'padding {c.pad}: {", ".join(layers)}."""',
        f"    xp = scratch[:{height * width}].reshape({height}, {width})",
    ]
    if border or width > (cols + 2 * border) * cin:
        out.append("    xp[:] = 0  # the border stays zero; every image overwrites the inside")
    tile = tile if cin % tile == 0 else cin  # channels copied together: each 16 fill one cache line of xp
    cb, ch = ("cb" if cin > tile else "0"), ("c" if tile > 1 else "0")
    copy = (
        f"xp[{plus('i', border)}, {plus(times(plus('j', border), cin), cb, ch)}] = "
        f"x[n, {plus(cb, ch)}, {times('i', sample)}, {times('j', sample)}]"
    )
    indent = "            " + ("    " if cin > tile else "")
    columns = [f"{indent}for j in range({cols}):"]
    if tile > 1:
        columns += [f"{indent}    for c in range({tile}):", f"{indent}        {copy}"]
    else:
        columns.append(f"{indent}    {copy}")
    out += ["    for n in range(x.shape[0]):", f"        for i in range({rows}):"]
    out += [f"            for cb in range(0, {cin}, {tile}):", *columns] if cin > tile else columns
    whole = cout - cout % block
    if whole:
        out += channel_loop(c, 0, whole, block, whole_vectors)
    if whole < cout:  # channels left over after the blocks, one at a time
        out += channel_loop(c, whole, cout, 1, whole_vectors)
    return "\n".join(out) + "\n"


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


BN_FIELDS = ("weight", "bias", "running_mean", "running_var")


def forward_source(tensor_at: dict[str, int], weight_at: dict[str, int], whole_vectors: bool = True) -> str:
    """The forward pass as straight-line code: every tensor a named view at a literal offset (per image;
    `b` is the arena's capacity in images, `n` this call's), then the steps."""
    views = ["    # Activations: views of the arena.", arena_view(spec.INPUT, tensor_at[spec.INPUT], SHAPE)]
    views += [arena_view(step.dst, tensor_at[step.dst], step.shape) for step in spec.STEPS]
    views.append("    # Weights: views of the pool.")
    steps = []
    for i, step in enumerate(spec.STEPS):
        src, dst = activation(step.src), activation(step.dst)
        steps.append(f"    if first <= {i} < last:  # {step.name}")
        if i == 0:
            steps.append(f"        {src}[:] = x")
        if step.op == "conv":
            c = step.conv
            views.append(pool_view(c.weight, weight_at[c.weight], (c.cout, c.kernel, dot_length(c, whole_vectors))))
            bn = [f"{c.bn}.{f}" for f in BN_FIELDS]
            views += [pool_view(t, weight_at[t], (c.cout,)) for t in bn]
            steps += [
                f"        {conv_name(c)}({src}, {local(c.weight)}, {dst}, scratch)",
                f"        batchnorm({dst}, {', '.join(map(local, bn))}, BN_EPS)",
            ]
            if step.residual:
                steps.append(f"        add({dst}, {activation(step.residual)})")
            if step.relu:
                steps.append(f"        relu({dst})")
        elif step.op == "maxpool":
            steps.append(f"        maxpool({src}, {', '.join(map(str, spec.MAXPOOL))}, {dst})")
        elif step.op == "avgpool":
            steps.append(f"        avgpool({src}, {dst})")
        else:
            views.append(pool_view("fc.weight", weight_at["fc.weight"], (spec.NUM_CLASSES, spec.FC_IN)))
            views.append(pool_view("fc.bias", weight_at["fc.bias"], (spec.NUM_CLASSES,)))
            steps.append(f"        fc({src}, fc_weight, fc_bias, {dst})")
    head = [
        "@njit(cache=True)",
        "def forward(x, params, arena, scratch, b, first, last):",
        '    """Steps first..last-1 of ResNet-50 on x (n images); the arena holds b images per tensor."""',
        "    n = x.shape[0]",
    ]
    return "\n".join(head + views + steps) + "\n"


def generate(
    tensor_at: dict[str, int], weight_at: dict[str, int], block: int = BLOCK, tile: int = TILE, whole_vectors=True
) -> str:
    """The whole generated module: 04's small kernels, one conv kernel per distinct shape, the forward pass."""
    shapes: dict[str, list[spec.Conv]] = {}
    for c in spec.CONVS:
        shapes.setdefault(conv_name(c), []).append(c)
    parts = [
        "import numpy as np\nfrom numba import njit\n",
        f"BN_EPS = np.float32({spec.BN_EPS!r})\n",
        *(inspect.getsource(k.py_func) for k in (batchnorm, relu, add, maxpool, avgpool, fc)),
        *(conv_source(convs[0], [c.name for c in convs], block, tile, whole_vectors) for convs in shapes.values()),
        forward_source(tensor_at, weight_at, whole_vectors),
    ]
    return "\n\n".join(parts)


class ResNet50(GeneratedResNet50):
    """The keyword arguments switch one idea off at a time, for `make ablate STAGE=05`; the defaults are
    the lesson."""

    def __init__(self, weights, max_batch: int = 1, **switches) -> None:
        self.switches = {"block": BLOCK, "tile": TILE, "whole_vectors": True, **switches}
        super().__init__(weights, max_batch)

    def generate(self, tensor_at: dict[str, int], weight_at: dict[str, int]) -> str:
        return generate(tensor_at, weight_at, **self.switches)

    def conv_weights(self, c: spec.Conv, w: np.ndarray) -> np.ndarray:
        """Channels-last kernel rows (CO, K, K*C), each padded with zeros to whole vectors, once, here."""
        rows = channels_last(w).reshape(c.cout, c.kernel, c.kernel * c.cin)
        padded = np.zeros((c.cout, c.kernel, dot_length(c, self.switches["whole_vectors"])), np.float32)
        padded[:, :, : rows.shape[2]] = rows
        return padded

    def scratch_floats(self) -> int:
        return max(int(np.prod(copy_shape(c, self.switches["whole_vectors"]))) for c in spec.CONVS)


# `make ablate STAGE=05`: the lesson with one of its ideas switched off, each measured against the whole.
ABLATIONS = {
    "1 output channel per pass (not 8)": {"block": 1},
    "copy 1 channel at a time (not tiles of 16)": {"tile": 1},
    "exact dot length (conv1: 21 floats, not 32)": {"whole_vectors": False},
}
