"""Stage 07, fused: each activation is written once, finished, in the layout its reader wants.

One change from 06: nothing is done to an activation after the conv that makes it. BatchNorm is folded
into the conv's weights and a bias at construction; every activation lives channels-last in the arena,
with the zero border its reader's padding needs (in a place of its own, so the border stays zero), so no
conv copies or transposes its input; the conv's store is its epilogue: + bias, + the residual, ReLU,
written straight into the reader's buffer (a bottleneck's last conv writes over the residual it has just
read). Max pool reads and writes the same layout; the image is converted once, at the entry. Each conv is
one parallel region (its blocks of output channels).

The forward pass walks `spec.STEPS` (conv1, maxpool, 16 bottlenecks, avgpool, fc): each step reads one
named tensor and writes one; a bottleneck's last conv adds the block's input (the residual) before its ReLU.
"""

import inspect

import numba
import numpy as np
from numba import njit, prange

from common import isa, spec
from common.arena import channels_last, pack_arrays
from common.generated import GeneratedResNet50, activation, arena_view, local, plus, pool_view, times
from common.inputs import SHAPE

BLOCK = 8  # output channels per pass of a conv kernel: each input vector loaded feeds BLOCK dot products
VECTOR = isa.target().vector_floats  # floats in one vector register of the target (16 on AVX-512, 8 on AVX2)


def conv_name(c: spec.Conv) -> str:
    return f"conv_{c.cin}x{c.h_in}x{c.w_in}_to_{c.cout}_k{c.kernel}_s{c.stride}"


def dot_length(c: spec.Conv, whole_vectors: bool = True) -> int:
    """One dot product: k taps x cin channels, rounded up to whole vectors.

    conv1 has 3 channels: 7 x 3 = 21 floats, one vector and a scalar tail. Padded to 32 with zero
    weights (once, in the pool), it is two vectors and no tail; the 11 extra inputs read are multiplied
    by zero (the image's rows are stored wide enough).
    """
    length = c.kernel * c.cin
    return -(-length // VECTOR) * VECTOR if whole_vectors else length


def chw(tensor: str) -> tuple[int, int, int]:
    """(channels, height, width) of the image or of a step's output."""
    return SHAPE if tensor == spec.INPUT else spec.STEP_BY_NAME[tensor].shape


def readers(tensor: str) -> list[spec.Step]:
    return [step for step in spec.STEPS if step.src == tensor]


def border(tensor: str) -> int:
    """The zero border a tensor is stored with: the padding of the conv or pool that reads it."""
    pads = [r.conv.pad if r.conv else spec.MAXPOOL[2] if r.op == "maxpool" else 0 for r in readers(tensor)]
    return max(pads, default=0)


def layout(tensor: str) -> tuple[int, int]:
    """(rows, floats per row) of a channels-last activation with its border; a row is wide enough for
    the last dot product of every conv that reads it."""
    c, h, w = chw(tensor)
    edge = border(tensor)
    width = (w + 2 * edge) * c
    for r in readers(tensor):
        if r.conv:
            width = max(width, (r.conv.w_out - 1) * r.conv.stride * c + dot_length(r.conv))
    return h + 2 * edge, width


def kernel_name(step: spec.Step, fused: bool = True) -> str:
    c = step.conv
    epilogue = ("_add" if step.residual else "") + ("_relu" if step.relu else "") if fused else "_unfused"
    return f"{conv_name(c)}{epilogue}" + (f"_pad{border(step.dst)}" if border(step.dst) else "")


def channel_loop(step: spec.Step, first: int, last: int, block: int, fold: bool = True, fused: bool = True
                 ) -> list[str]:  # fmt: skip
    """Output channels first..last-1, `block` at a time, each finished in the store: + bias (BatchNorm,
    folded), + the residual, ReLU, into the reader's padded layout. (`make ablate` switches: fold=False
    applies BatchNorm in the store, a multiply per output; fused=False leaves the residual and the ReLU to
    a pass of their own, `finish_source`.)"""
    c = step.conv
    assert not step.residual or border(step.residual) == 0, "a residual is read without a border"
    cin, cout, stride, length = c.cin, c.cout, c.stride, dot_length(c)
    shift = border(step.src) - c.pad  # where the kernel's window starts in the stored input
    edge = border(step.dst)
    blocks = (last - first) // block
    co = "co" if blocks > 1 else str(first)  # the block's first output channel
    kh = "kh" if c.kernel > 1 else "0"
    row = times(plus(times("ow", stride), shift), cin)
    tap = [
        f"xs = x[n, {plus(times('oh', stride), kh, shift)}, {row} : {plus(row, length)}]",
        *[f"w{v} = w[{plus(co, v)}, {kh}]" for v in range(block)],
        f"for j in range({length}):",
        "    xj = xs[j]",
        *[f"    a{v} += w{v}[j] * xj" for v in range(block)],
    ]
    store = []
    for v in range(block):
        value = f"a{v} + bias[{plus(co, v)}]" if fold else f"a{v} * scale[{plus(co, v)}] + bias[{plus(co, v)}]"
        if step.residual and fused:
            value += f" + res[n, oh, {plus(times('ow', cout), co, v)}]"
        if step.relu and fused:
            value = f"max({value}, np.float32(0.0))"
        store.append(f"y[n, {plus('oh', edge)}, {plus(times(plus('ow', edge), cout), co, v)}] = {value}")
    pixel = [
        *[f"a{v} = np.float32(0.0)" for v in range(block)],
        *([f"for kh in range({c.kernel}):", *["    " + t for t in tap]] if c.kernel > 1 else tap),
        *store,
    ]
    body = [
        f"for oh in range({c.h_out}):",
        f"    for ow in range({c.w_out}):",
        *["        " + p for p in pixel],
    ]
    if blocks == 1:
        return ["        " + b for b in body]
    first_channel = f"co = {plus(first, times('b', block))}"
    across = f"        for b in prange({blocks}):  # blocks of output channels, across threads"
    return [across, *["            " + b for b in [first_channel, *body]]]


def conv_source(step: spec.Step, layers: list[str], block: int = BLOCK, fold: bool = True, fused: bool = True) -> str:
    """The kernel for every conv step of this shape and epilogue: x and y channels-last as stored
    (n, rows, floats per row), w (CO, K, K*C padded) with BatchNorm folded in, bias (CO,)."""
    c = step.conv
    res = ", res" if step.residual and fused else ""
    out = [
        "@njit(cache=True, fastmath=True, parallel=True)",
        f"def {kernel_name(step, fused)}(x, w, {'' if fold else 'scale, '}bias, y{res}):",
        f'    """{c.cin}x{c.h_in}x{c.w_in} -> {c.cout}x{c.h_out}x{c.w_out}, {c.kernel}x{c.kernel} conv, '
        f'stride {c.stride}, padding {c.pad}; BatchNorm folded{", + residual" if res else ""}'
        f'{", ReLU" if step.relu else ""}{f", stored with a border of {border(step.dst)}" if border(step.dst) else ""}'
        f': {", ".join(layers)}."""',
        "    for n in range(x.shape[0]):",
    ]
    whole = c.cout - c.cout % block
    if whole:
        out += channel_loop(step, 0, whole, block, fold, fused)
    if whole < c.cout:  # channels left over after the blocks, one at a time
        out += channel_loop(step, whole, c.cout, 1, fold, fused)
    return "\n".join(out) + "\n"


def finish_name(step: spec.Step) -> str:
    c, h, w = step.shape
    return f"finish_{c}x{h}x{w}" + ("_add" if step.residual else "") + ("_relu" if step.relu else "") + (
        f"_pad{border(step.dst)}" if border(step.dst) else "")


def finish_source(step: spec.Step) -> str:
    """For `make ablate` (fused=False): the residual add and the ReLU as a pass of their own over the conv's
    stored output, as 06 did them."""
    c, h, w = step.shape
    edge = border(step.dst)
    value = f"y[n, {plus('i', edge)}, {plus(times(plus('j', edge), c), 'ch')}]"
    if step.residual:
        value += f" + res[n, i, {plus(times('j', c), 'ch')}]"
    if step.relu:
        value = f"max({value}, np.float32(0.0))"
    return "\n".join(
        [
            "@njit(cache=True, fastmath=True, parallel=True)",
            f"def {finish_name(step)}(y{', res' if step.residual else ''}):",
            "    for n in range(y.shape[0]):",
            f"        for i in prange({h}):",
            f"            for j in range({w}):",
            f"                for ch in range({c}):",
            f"                    y[n, {plus('i', edge)}, {plus(times(plus('j', edge), c), 'ch')}] = {value}",
        ]
    ) + "\n"


def pad_copy_name(tensor: str) -> str:
    c, h, w = chw(tensor)
    return f"pad_copy_{c}x{h}x{w}_border{border(tensor)}"


def pad_copy_source(tensor: str) -> str:
    """For `make ablate` (borders=False): what a stage without stored borders does before a padded conv or
    pool reads a tensor, a copy into a buffer with a zero border (06 did it inside every conv): here a copy
    of the whole stored layout into the scratch, border included."""
    rows, row = layout(tensor)
    return "\n".join(
        [
            "@njit(cache=True, parallel=True)",
            f"def {pad_copy_name(tensor)}(x, y):",
            "    for n in range(x.shape[0]):",
            f"        for i in prange({rows}):",
            f"            for j in range({row}):",
            "                y[n, i, j] = x[n, i, j]",
        ]
    ) + "\n"


def entry_source() -> str:
    """The image, NCHW as given, into its stored layout: channels-last with conv1's zero border."""
    c, h, w = SHAPE
    edge = border(spec.INPUT)
    return "\n".join(
        [
            "@njit(cache=True, parallel=True)",
            "def image_to_channels_last(x, y):",
            f'    """The one copy of the forward pass: (n, {c}, {h}, {w}) -> channels-last, zero border {edge}."""',
            "    for n in range(x.shape[0]):",
            f"        for i in prange({h}):  # rows, across threads",
            f"            for j in range({w}):",
            f"                for c in range({c}):",
            f"                    y[n, {plus('i', edge)}, {plus(times(plus('j', edge), c), 'c')}] = x[n, c, i, j]",
        ]
    ) + "\n"


def maxpool_source(step: spec.Step) -> str:
    """Max pool on the stored layout. Its input is a ReLU output (every value >= 0) with a zero border as
    wide as the pool's padding, so the border can stand for the padding: a zero never beats a real value."""
    k, stride, pad = spec.MAXPOOL
    c, h, w = step.shape
    assert border(step.src) == pad and border(step.dst) == 0
    return "\n".join(
        [
            "@njit(cache=True, parallel=True)",
            f"def maxpool_{c}x{h * stride}x{w * stride}(x, y):",
            f'    """{k}x{k} max pool, stride {stride}, padding {pad} (the stored zero border), channels-last."""',
            "    for n in range(x.shape[0]):",
            f"        for oh in prange({h}):  # rows, across threads",
            f"            for ow in range({w}):",
            f"                for ch in range({c}):",
            f"                    best = x[n, {times('oh', stride)}, {plus(times(times('ow', stride), c), 'ch')}]",
            f"                    for kh in range({k}):",
            f"                        for kw in range({k}):",
            f"                            best = max(best, x[n, {plus(times('oh', stride), 'kh')}, "
            f"{plus(times(plus(times('ow', stride), 'kw'), c), 'ch')}])",
            f"                    y[n, oh, {plus(times('ow', c), 'ch')}] = best",
        ]
    ) + "\n"


def avgpool_source(step: spec.Step) -> str:
    c, h, w = spec.STEP_BY_NAME[step.src].shape
    return "\n".join(
        [
            "@njit(cache=True, parallel=True)",
            f"def avgpool_{c}x{h}x{w}(x, y):",
            f'    """Mean over the {h}x{w} pixels of each channel, channels-last in, (n, {c}) out."""',
            "    for n in range(x.shape[0]):",
            f"        for ch in prange({c}):  # channels, across threads",
            "            acc = np.float32(0.0)",
            f"            for i in range({h}):",
            f"                for j in range({w}):",
            f"                    acc += x[n, i, {plus(times('j', c), 'ch')}]",
            f"            y[n, ch] = acc / np.float32({h * w})",
        ]
    ) + "\n"


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


def bias_name(c: spec.Conv) -> str:
    return f"{c.name}.bias"


def scale_name(c: spec.Conv) -> str:
    return f"{c.name}.scale"


def padded_reads() -> list[str]:
    """The tensors a padded conv or the max pool reads: those a stage without stored borders must copy."""
    return sorted({s.src for s in spec.STEPS if (s.conv and s.conv.pad) or s.op == "maxpool"})


def forward_source(tensor_at: dict[str, int], weight_at: dict[str, int], fold: bool = True, fused: bool = True,
                   borders: bool = True) -> str:  # fmt: skip
    """The forward pass as straight-line code: every tensor a named view at a literal offset (per image;
    `b` is the arena's capacity in images, `n` this call's), then the steps: one kernel call each. (With
    `make ablate`'s switches off, more: a padded copy before, a finishing pass after.)"""
    views = ["    # Activations: views of the arena, channels-last with their readers' borders."]
    views += [arena_view(spec.INPUT, tensor_at[spec.INPUT], layout(spec.INPUT))]
    for step in spec.STEPS:
        shape = step.shape if step.op in ("avgpool", "fc") else layout(step.dst)
        views.append(arena_view(step.dst, tensor_at[step.dst], shape))
    views.append("    # Weights: views of the pool (BatchNorm folded into each conv's weights and bias).")
    steps = []
    for i, step in enumerate(spec.STEPS):
        src, dst = activation(step.src), activation(step.dst)
        steps.append(f"    if first <= {i} < last:  # {step.name}")
        if i == 0:
            steps.append(f"        image_to_channels_last(x, {src})")
        if not borders and step.src in padded_reads():  # a copy with a zero border, as without stored ones
            rows, row = layout(step.src)
            steps.append(f"        padded = scratch[: n * {rows * row}].reshape(n, {rows}, {row})")
            steps.append(f"        {pad_copy_name(step.src)}({src}, padded)")
            src = "padded"
        if step.op == "conv":
            c = step.conv
            views.append(pool_view(c.weight, weight_at[c.weight], (c.cout, c.kernel, dot_length(c))))
            views.append(pool_view(bias_name(c), weight_at[bias_name(c)], (c.cout,)))
            scale = ""
            if not fold:
                views.append(pool_view(scale_name(c), weight_at[scale_name(c)], (c.cout,)))
                scale = f"{local(scale_name(c))}, "
            res = f", {activation(step.residual)}" if step.residual and fused else ""
            steps.append(f"        {kernel_name(step, fused)}({src}, {local(c.weight)}, {scale}{local(bias_name(c))}, "
                         f"{dst}{res})")  # fmt: skip
            if not fused and (step.residual or step.relu):
                res = f", {activation(step.residual)}" if step.residual else ""
                steps.append(f"        {finish_name(step)}({dst}{res})")
        elif step.op == "maxpool":
            c, h, w = step.shape
            steps.append(f"        maxpool_{c}x{h * 2}x{w * 2}({src}, {dst})")
        elif step.op == "avgpool":
            c, h, w = spec.STEP_BY_NAME[step.src].shape
            steps.append(f"        avgpool_{c}x{h}x{w}({src}, {dst})")
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


def generate(tensor_at: dict[str, int], weight_at: dict[str, int], block: int = BLOCK, fold: bool = True,
             fused: bool = True, borders: bool = True) -> str:  # fmt: skip
    """The whole generated module: the entry, one kernel per distinct conv shape and epilogue, the pools,
    the classifier, the forward pass (and, with an ablation switch off, what it needs instead)."""
    kernels: dict[str, list[spec.Step]] = {}
    for step in spec.STEPS:
        if step.conv:
            kernels.setdefault(kernel_name(step, fused), []).append(step)
    pools = [s for s in spec.STEPS if s.op in ("maxpool", "avgpool")]
    finishing = {finish_name(s): s for s in spec.STEPS if s.conv and (s.residual or s.relu)} if not fused else {}
    copies = {pad_copy_name(t): t for t in padded_reads()} if not borders else {}
    parts = [
        "import numpy as np\nfrom numba import njit, prange\n",
        entry_source(),
        *(conv_source(steps[0], [s.name for s in steps], block, fold, fused) for steps in kernels.values()),
        *(finish_source(s) for s in finishing.values()),
        *(pad_copy_source(t) for t in copies.values()),
        *(maxpool_source(s) if s.op == "maxpool" else avgpool_source(s) for s in pools),
        inspect.getsource(fc.py_func),
        forward_source(tensor_at, weight_at, fold, fused, borders),
    ]
    return "\n\n".join(parts)


def bn_scale(gamma, var) -> np.ndarray:
    """BatchNorm's multiplier per output channel, s = gamma / sqrt(var + eps), in float64."""
    return gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + spec.BN_EPS)


def fold(w: np.ndarray, gamma, beta, mean, var) -> tuple[np.ndarray, np.ndarray]:
    """BatchNorm after a conv, as the conv's own weights and bias (in float64, then float32):
    bn(conv(x, w)) = gamma * (conv(x, w) - mean) / sqrt(var + eps) + beta = conv(x, w * s) + (beta - mean * s)
    with s = gamma / sqrt(var + eps), one per output channel."""
    s = bn_scale(gamma, var)
    folded = w.astype(np.float64) * s[:, None, None, None]
    bias = beta.astype(np.float64) - mean.astype(np.float64) * s
    return folded.astype(np.float32), bias.astype(np.float32)


# The three ideas of this rung, each switched off in turn by `make ablate STAGE=07` (NOTES.md), and the
# epilogue's consequence: the output written over the residual it has just read.
ABLATIONS = {
    "BatchNorm applied in the store (a multiply per output), not folded into the weights": {"fold": False},
    "residual add and ReLU in a pass of their own (06's), not in the conv's store": {"fused": False},
    "no stored borders: a zero-bordered copy before each padded conv and the max pool": {"borders": False},
    "a bottleneck's output in a place of its own, not over its residual": {"in_place": False},
}


class ResNet50(GeneratedResNet50):
    def __init__(
        self, weights, max_batch: int = 1, threads: int | None = None, in_place: bool = True, **switches
    ) -> None:
        self.over_residual = in_place
        self.switches = {"block": BLOCK, "fold": True, "fused": True, "borders": True, **switches}
        super().__init__(weights, max_batch, numba.config.NUMBA_NUM_THREADS if threads is None else threads)

    def generate(self, tensor_at: dict[str, int], weight_at: dict[str, int]) -> str:
        return generate(tensor_at, weight_at, **self.switches)

    def pack(self, weights) -> tuple[np.ndarray, dict[str, int]]:
        """Each conv's weights with its BatchNorm folded in, as channels-last kernel rows padded to whole
        vectors, and its bias; the classifier. The BatchNorm tensors themselves are not needed any more."""
        arrays = {}
        for c in spec.CONVS:
            bn = [weights.load(f"{c.bn}.{f}") for f in ("weight", "bias", "running_mean", "running_var")]
            w, arrays[bias_name(c)] = fold(weights.load(c.weight), *bn)
            if not self.switches["fold"]:  # BatchNorm as a scale and a shift per channel, applied in the store
                w = weights.load(c.weight)
                arrays[scale_name(c)] = bn_scale(bn[0], bn[3]).astype(np.float32)
            rows = channels_last(w).reshape(c.cout, c.kernel, c.kernel * c.cin)
            padded = np.zeros((c.cout, c.kernel, dot_length(c)), np.float32)
            padded[:, :, : rows.shape[2]] = rows
            arrays[c.weight] = padded
        arrays["fc.weight"], arrays["fc.bias"] = weights.load("fc.weight"), weights.load("fc.bias")
        return pack_arrays(arrays)

    def tensor_floats(self) -> dict[str, int]:
        tensors = [spec.INPUT] + [s.dst for s in spec.STEPS if s.op not in ("avgpool", "fc")]
        return {t: int(np.prod(layout(t))) for t in tensors}

    def private(self) -> set[str]:
        """Tensors stored with a zero border (and the image's wide rows) keep a place of their own: no other
        tensor ever writes there, so what is not the inside stays zero from construction on."""
        return {t for t, floats in self.tensor_floats().items() if floats > np.prod(chw(t))}

    def in_place(self) -> dict[str, str]:
        """A bottleneck's last conv writes its output over the residual it adds, as ONNX Runtime's Sum fusion
        does: its store reads each residual float just before it writes that output float, so the lines it
        writes are already in cache, and no other place is fetched from memory to be written. (Not with the
        residual added in a pass of its own: that pass needs the residual after the conv.)"""
        fused = self.over_residual and self.switches["fused"]
        return {s.dst: s.residual for s in spec.STEPS if s.residual} if fused else {}

    def scratch_floats(self) -> int:
        if not self.switches["borders"]:  # the zero-bordered copies of `make ablate`
            return max(int(np.prod(layout(t))) for t in padded_reads()) * self.max_batch
        return VECTOR  # nothing is copied any more
