"""Stage 08, micro-kernel: each conv is a GEMM computed by an outer-product register tile.

One change from 07: how a conv does its arithmetic. 07 computed 8 output channels at a time as dot
products, each a vector sum ending in a horizontal reduction, each input vector loaded once per 8 FMAs.
08 keeps a tile of 6 output pixels x 64 output channels in registers for the whole sum: per input float,
the panel's 64 weights are loaded once (4 vectors) and each pixel's input is broadcast: 24 vector FMAs,
no horizontal sum. (That is AVX-512's tile; the tile is sized for the registers of the target numba
compiles for, common.isa: AVX2 gets 5 pixels x 16 channels.) The weights are packed at construction in
the order the tile reads them (panels of 64 output channels, taps and input channels major); a batch is
more pixels of the same GEMM; each thread takes an equal share of the (block of pixels, panel) items. The
store is 07's epilogue, on the tile's registers. (And one switch of the harness for batches: several
images run image by image through layer1 and layer2, where the activations are large.)

The forward pass walks `spec.STEPS` (conv1, maxpool, 16 bottlenecks, avgpool, fc): each step reads one
named tensor and writes one; a bottleneck's last conv adds the block's input (the residual) before its ReLU.
"""

import inspect

import numba
import numpy as np
from numba import njit, prange

from common import fma_tile, isa, spec
from common.arena import channels_last, pack_arrays
from common.generated import GeneratedResNet50, activation, arena_view, local, plus, pool_view, split, times
from common.inputs import SHAPE

# The tile for the register file numba compiles for (common.isa): pixels x vectors of output channels,
# accumulators + one panel row + a broadcast within the registers, picked by measurement (NOTES.md).
TILES = {32: (6, 4), 16: (5, 2)}  # vector registers -> (pixels, vectors per panel)
ISA = isa.target()
PIXELS, VECTORS = TILES.get(ISA.registers, TILES[16])  # AVX-512: 6 x 4 zmm in 32; AVX2: 5 x 2 ymm in 16
PANEL = VECTORS * ISA.vector_floats  # output channels in a tile: 64 on AVX-512, 16 on AVX2
# A conv's items are cut into this many runs, and numba deals the runs out to its threads: 60 is an equal
# share for 1 to 6 threads, and the thread count is not written into the code (one compile for any).
PARTS = 60
L2_BYTES = 1 << 20  # per core, on the machines measured (AMD Zen 4 and 5: 1 MiB)


def conv_name(c: spec.Conv) -> str:
    return f"conv_{c.cin}x{c.h_in}x{c.w_in}_to_{c.cout}_k{c.kernel}_s{c.stride}"


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
    """(rows, floats per row) of a channels-last activation with its border."""
    c, h, w = chw(tensor)
    edge = border(tensor)
    return h + 2 * edge, (w + 2 * edge) * c


def epilogue(step: spec.Step) -> str:
    return ("_add" if step.residual else "") + ("_relu" if step.relu else "")


def kernel_name(step: spec.Step) -> str:
    return f"{conv_name(step.conv)}{epilogue(step)}" + (f"_pad{border(step.dst)}" if border(step.dst) else "")


def tile_name(step: spec.Step, stored: int = PANEL, pixels: int = PIXELS) -> str:
    return f"tile_{pixels}x{PANEL}{epilogue(step)}" + (f"_{stored}_channels" if stored < PANEL else "")


def tile_source(step: spec.Step, stored: int = PANEL, pixels: int = PIXELS) -> str:
    """The micro-kernel, a line of the generated module: `pixels` output pixels x one panel of 64 output channels,
    held in pixels x VECTORS vector registers for the whole sum (common/fma_tile.py). Each step of the sum loads
    the panel's 64 weights for one input float once (VECTORS vectors: 4 on AVX-512) and broadcasts each pixel's
    input float: pixels x VECTORS vector FMAs, no horizontal sum. Then 07's epilogue, on the registers: + bias,
    + the residual, ReLU, the first `stored` channels into y. numba has no vector types, so the tile is LLVM IR,
    built once per epilogue and inlined into each conv kernel that calls it as `tile(x, at, window, w, bias, y[,
    res])`: where each pixel's window starts, and its output and its residual go, are in `at`; the window's
    shape (taps, floats between them, floats in each) in `window`."""
    store = f"relu={step.relu}, residual={bool(step.residual)}"
    return f"{tile_name(step, stored, pixels)} = fma_tile.tile({pixels}, {VECTORS}, {stored}, {store})\n"


def tiles_first(c: spec.Conv, order: str = "by size") -> bool:
    """The order of a conv's items. Tile by tile (each block of pixels through every panel) when all the
    conv's weights fit in half of L2: a block's input stays in L1 and each pixel's channels are written
    in one go. Otherwise panel by panel, so one panel's weights stay in L2 while every block passes.
    (`order` "tiles" or "panels" forces one, for `make ablate`.)"""
    if order != "by size":
        return order == "tiles"
    return c.cout * c.kernel * c.kernel * c.cin * 4 <= L2_BYTES // 2


def conv_source(step: spec.Step, layers: list[str], pixels: int = PIXELS, order: str = "by size") -> str:
    """The kernel for every conv step of this shape and epilogue: x and y channels-last as stored
    (n, rows, floats per row), w in panels (CO / 64, K * K * C, 64) with BatchNorm folded in, bias (CO,).

    The conv is a GEMM: (output pixels of the whole batch) x (K * K * C) times (K * K * C) x CO. Its
    items are (block of `pixels` pixels, panel) pairs, cut into one run of consecutive items per thread of
    numba's pool, so the threads' shares differ by one item at most whatever the layer's shape (on fewer threads
    than the pool has, a thread runs several runs)."""
    c = step.conv
    res = ", res" if step.residual else ""
    assert not step.residual or border(step.residual) == 0, "a residual is read without a border"
    panels = -(-c.cout // PANEL)
    rows, row = layout(step.src)
    out_rows, out_row = layout(step.dst)
    shift = border(step.src) - c.pad  # where the kernel's window starts in the stored input
    edge = border(step.dst)
    hw = c.h_out * c.w_out
    oh, ow = f"(q // {c.w_out})", f"(q % {c.w_out})"
    where = [
        f"p = min({plus('first', 'r')}, batch_pixels - 1)  # a short last block repeats (and stores) its last pixel",
        f"img, q = p // {hw}, p % {hw}",
        f"at[0, r] = img * {rows * row} + {times(plus(times(oh, c.stride), shift), row)}"
        f" + {times(plus(times(ow, c.stride), shift), c.cin)}",
        f"at[1, r] = img * {out_rows * out_row} + {times(plus(oh, edge), out_row)}"
        f" + {times(plus(ow, edge), c.cout)}",
        *([f"at[2, r] = p * {c.cout}"] if res else []),
    ]
    block, panel = split("item", panels) if tiles_first(c, order) else split("item", "blocks")[::-1]
    args = f"(xs, at, window, w[{panel}], bias[co : co + {PANEL}], ys[co:]{', rs[co:]' if res else ''})"
    call = [tile_name(step, min(c.cout, PANEL), pixels) + args]
    if c.cout > PANEL and c.cout % PANEL:
        call = [f"if co + {PANEL} <= {c.cout}:", "    " + call[0], "else:  # the last panel is short",
                "    " + tile_name(step, c.cout % PANEL, pixels) + args]  # fmt: skip
    once = tiles_first(c, order) and panels > 1
    body = [
        f"first = {times(block, pixels)}",
        f"co = {times(panel, PANEL)}",
        *(["if co == 0 or item == start:  # a new block: its pixels' places"] if once else []),
        f"{'    ' if once else ''}for r in range({pixels}):",
        *[("        " if once else "    ") + w for w in where],
        *call,
    ]
    out = [
        "@njit(cache=True, fastmath=True, parallel=True)",
        f"def {kernel_name(step)}(x, w, bias, y{res}):",
        f'    """{c.cin}x{c.h_in}x{c.w_in} -> {c.cout}x{c.h_out}x{c.w_out}, {c.kernel}x{c.kernel} conv, '
        f'stride {c.stride}, padding {c.pad}; BatchNorm folded{", + residual" if res else ""}'
        f'{", ReLU" if step.relu else ""}{f", stored with a border of {edge}" if edge else ""}'
        f': {", ".join(layers)}."""',
        f"    batch_pixels = x.shape[0] * {hw}  # the GEMM's rows: a batch is more pixels",
        f"    blocks = (batch_pixels + {pixels - 1}) // {pixels}  # the rows in blocks of {pixels}, one tile's",
        f"    items = {times('blocks', panels)}  # (block, panel) pairs, "
        f"{'tile by tile' if tiles_first(c, order) else 'panel by panel'}",
        f"    parts = min({PARTS}, items)  # runs of consecutive items, shared out among the threads",
        f"    ats = np.empty((parts, 3, {pixels}), np.int64)  # where each pixel's input, output, residual are",
        "    xs, ys = x.reshape(-1), y.reshape(-1)",
        *(["    rs = res.reshape(-1)"] if res else []),
        f"    window = np.array(({c.kernel}, {row}, {c.kernel * c.cin}))  # taps, floats between them, floats in each",
        "    for part in prange(parts):  # numba gives each thread an equal share of the runs",
        "        at = ats[part]",
        "        start = part * items // parts",
        "        for item in range(start, (part + 1) * items // parts):",
        *["            " + b for b in body],
    ]
    return "\n".join(out) + "\n"


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


def maxpool_name(step: spec.Step) -> str:
    """The max pool's kernel, named by its input's shape: maxpool_64x112x112."""
    c, h, w = chw(step.src)
    return f"maxpool_{c}x{h}x{w}"


def maxpool_source(step: spec.Step) -> str:
    """Max pool on the stored layout. Its input is a ReLU output (every value >= 0) with a zero border as
    wide as the pool's padding, so the border can stand for the padding: a zero never beats a real value."""
    k, stride, pad = spec.MAXPOOL
    c, h, w = step.shape
    assert border(step.src) == pad and border(step.dst) == 0
    return "\n".join(
        [
            "@njit(cache=True, parallel=True)",
            f"def {maxpool_name(step)}(x, y):",
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


def forward_source(tensor_at: dict[str, int], weight_at: dict[str, int]) -> str:
    """The forward pass as straight-line code: every tensor a named view at a literal offset (per image;
    `b` is the arena's capacity in images, `n` this call's), then the steps: one kernel call each."""
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
        if step.op == "conv":
            c = step.conv
            views.append(pool_view(c.weight, weight_at[c.weight], panel_shape(c)))
            views.append(pool_view(bias_name(c), weight_at[bias_name(c)], (c.cout,)))
            res = f", {activation(step.residual)}" if step.residual else ""
            steps.append(f"        {kernel_name(step)}({src}, {local(c.weight)}, {local(bias_name(c))}, {dst}{res})")
        elif step.op == "maxpool":
            steps.append(f"        {maxpool_name(step)}({src}, {dst})")
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


def generate(tensor_at: dict[str, int], weight_at: dict[str, int], pixels: int = PIXELS, order: str = "by size") -> str:
    """The whole generated module: the entry, the micro-kernel (one per epilogue), one kernel per distinct
    conv shape and epilogue, the pools, the classifier, the forward pass."""
    kernels: dict[str, list[spec.Step]] = {}
    for step in spec.STEPS:
        if step.conv:
            kernels.setdefault(kernel_name(step), []).append(step)
    pools = [s for s in spec.STEPS if s.op in ("maxpool", "avgpool")]
    tiles = {tile_name(s, n, pixels): (s, n) for s in spec.STEPS if s.conv for n in stored_channels(s.conv)}
    parts = [
        "import numpy as np\nfrom numba import njit, prange\n\nfrom common import fma_tile\n",
        entry_source(),
        f"# The micro-kernel, one per epilogue: common/fma_tile.py as of sha256 {fma_tile.source_digest()}\n"
        + "".join(tile_source(step, stored, pixels) for step, stored in tiles.values()),
        *(conv_source(steps[0], [s.name for s in steps], pixels, order) for steps in kernels.values()),
        *(maxpool_source(s) if s.op == "maxpool" else avgpool_source(s) for s in pools),
        inspect.getsource(fc.py_func),
        forward_source(tensor_at, weight_at),
    ]
    return "\n\n".join(parts)


def fold(w: np.ndarray, gamma, beta, mean, var) -> tuple[np.ndarray, np.ndarray]:
    """BatchNorm after a conv, as the conv's own weights and bias (in float64, then float32):
    bn(conv(x, w)) = gamma * (conv(x, w) - mean) / sqrt(var + eps) + beta = conv(x, w * s) + (beta - mean * s)
    with s = gamma / sqrt(var + eps), one per output channel."""
    s = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + spec.BN_EPS)
    folded = w.astype(np.float64) * s[:, None, None, None]
    bias = beta.astype(np.float64) - mean.astype(np.float64) * s
    return folded.astype(np.float32), bias.astype(np.float32)


def stored_channels(c: spec.Conv) -> list[int]:
    """The channel counts a conv's tiles store: whole panels, and the short last one if there is one."""
    return [PANEL] * (c.cout >= PANEL) + [c.cout % PANEL] * (c.cout % PANEL > 0)


def panel_shape(c: spec.Conv) -> tuple[int, int, int]:
    return -(-c.cout // PANEL), c.kernel * c.kernel * c.cin, PANEL


def panels(w: np.ndarray) -> np.ndarray:
    """(CO, C, K, K) weights as the tile reads them: (panels of 64 output channels, K * K * C, 64), taps and
    input channels in the order of a channels-last window, output channels last; a short last panel is
    filled with zero weights."""
    co = w.shape[0]
    rows = channels_last(w).reshape(co, -1)  # (CO, K * K * C)
    padded = np.zeros((-(-co // PANEL) * PANEL, rows.shape[1]), np.float32)
    padded[:co] = rows
    return np.ascontiguousarray(padded.reshape(-1, PANEL, rows.shape[1]).transpose(0, 2, 1))


# A batch runs image by image through layer1 and layer2 (common.generated): their activations are 1.6-3.2 MB
# per image, and a batch of 8 of them does not stay in L3 (32 MB) from one layer to the next.
WHOLE_BATCH_FROM = "layer3.0.downsample.0"
ABLATIONS = {
    "the whole batch through every step (no image-by-image start)": {"whole_batch_from": None},
    "5 pixels per tile (not 6)": {"pixels": 5},
    "4 pixels per tile": {"pixels": 4},
    "7 pixels per tile (28 accumulators: more than the registers leave)": {"pixels": 7},
    "every conv panel by panel": {"order": "panels"},
    "every conv tile by tile": {"order": "tiles"},
}


class ResNet50(GeneratedResNet50):
    def __init__(
        self, weights, max_batch: int = 1, threads: int | None = None, whole_batch_from: str | None = WHOLE_BATCH_FROM,
        **switches
    ) -> None:
        self.whole_batch_from = whole_batch_from
        self.switches = {"pixels": PIXELS, **switches}
        super().__init__(weights, max_batch, numba.config.NUMBA_NUM_THREADS if threads is None else threads)

    def generate(self, tensor_at: dict[str, int], weight_at: dict[str, int]) -> str:
        return generate(tensor_at, weight_at, **self.switches)

    def pack(self, weights) -> tuple[np.ndarray, dict[str, int]]:
        """Each conv's weights with its BatchNorm folded in, in panels for the tile, and its bias; the
        classifier. The BatchNorm tensors themselves are not needed any more."""
        arrays = {}
        for c in spec.CONVS:
            bn = [weights.load(f"{c.bn}.{f}") for f in ("weight", "bias", "running_mean", "running_var")]
            w, arrays[bias_name(c)] = fold(weights.load(c.weight), *bn)
            arrays[c.weight] = panels(w)
        arrays["fc.weight"], arrays["fc.bias"] = weights.load("fc.weight"), weights.load("fc.bias")
        return pack_arrays(arrays)

    def tensor_floats(self) -> dict[str, int]:
        tensors = [spec.INPUT] + [s.dst for s in spec.STEPS if s.op not in ("avgpool", "fc")]
        return {t: int(np.prod(layout(t))) for t in tensors}

    def private(self) -> set[str]:
        """Tensors stored with a zero border keep a place of their own: no other tensor ever writes there,
        so the border stays zero from construction on."""
        return {t for t, floats in self.tensor_floats().items() if floats > np.prod(chw(t))}

    def in_place(self) -> dict[str, str]:
        """A bottleneck's last conv writes its output over the residual it adds (07's)."""
        return {s.dst: s.residual for s in spec.STEPS if s.residual}

    def scratch_floats(self) -> int:
        return 0  # nothing is copied; a tile's sums live in registers
