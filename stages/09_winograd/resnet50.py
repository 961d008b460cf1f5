"""Stage 09, Winograd: the 3x3 stride-1 convs with fewer multiplications.

One change from 08: the 13 3x3 convs of stride 1 (36.8% of ResNet-50's FLOPs) use Winograd's minimal
filtering (Lavin and Gray, 2016): F(4x4, 3x3) for the 11 in layer1-3, where a 4x4 block of outputs of one
(input, output) channel pair needs 36 multiplications instead of 144, and F(2x2, 3x3) for layer4's two
7x7 ones, 16 instead of 36. In the transformed domain a 3x3 conv over an input tile is an elementwise
product, and summed over the input channels it is 36 (16) independent GEMMs, which 08's micro-kernel
computes. Per such conv: the input tiles are transformed (V = B^T d B), the GEMMs multiply them with the
weights transformed at construction (U = G g G^T), and the output transform (Y = A^T m A) is fused with
08's epilogue: + bias, + residual, ReLU, into the reader's buffer. The transforms are the same small
integer sums for every channel, so they run on vectors of channels (common/winograd_ir.py: numba leaves
them scalar). Every other conv is 08's.

The forward pass walks `spec.STEPS` (conv1, maxpool, 16 bottlenecks, avgpool, fc): each step reads one
named tensor and writes one; a bottleneck's last conv adds the block's input (the residual) before its ReLU.
"""

import dataclasses
import inspect

import numba
import numpy as np
from numba import njit, prange

from common import fma_tile, isa, spec, winograd_ir
from common.arena import channels_last, pack_arrays
from common.generated import GeneratedResNet50, activation, arena_view, local, plus, pool_view, split, times
from common.inputs import SHAPE

# The tile for the register file numba compiles for (common.isa): pixels x vectors of output channels,
# accumulators + one panel row + a broadcast within the registers, picked by measurement (NOTES.md).
TILES = {32: (6, 4), 16: (5, 2)}  # vector registers -> (pixels, vectors per panel)
ISA = isa.target()
PIXELS, VECTORS = TILES.get(ISA.registers, TILES[16])  # AVX-512: 6 x 4 zmm in 32; AVX2: 5 x 2 ymm in 16
PANEL = VECTORS * ISA.vector_floats  # output channels in a tile: 64 on AVX-512, 16 on AVX2
LANES = winograd_ir.lanes()  # channels per vector in the transforms' vector code: its own width
# A conv's items are cut into this many runs, and numba deals the runs out to its threads: 60 is an equal
# share for 1 to 6 threads, and the thread count is not written into the code (one compile for any).
PARTS = 60
L2_BYTES = 1 << 20  # per core, on the machines measured (AMD Zen 4 and 5: 1 MiB)


@dataclasses.dataclass(frozen=True)
class Winograd:
    """Winograd's minimal filtering F(out x out, 3x3): Y = A^T [(G g G^T) * (B^T d B)] A for an input tile d of
    `points` x `points` (out + 2), a 3x3 filter g and an output tile Y of out x out."""

    out: int  # outputs per tile side
    bt: list  # B^T, points x points
    g: list  # G, points x 3
    at: list  # A^T, out x points

    @property
    def points(self) -> int:
        """Inputs per tile side, and the points of the transformed domain per side: out + 3 - 1."""
        return self.out + 2


# F(4x4, 3x3) (Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks", 2016), interpolation points
# 0, 1, -1, 2, -2 and infinity: 36 multiplications for 16 outputs instead of 144 (NOTES.md derives them).
F4 = Winograd(
    4,
    bt=[[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0],
        [0, 4, 0, -5, 0, 1]],
    g=[[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
       [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]],
    at=[[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
)  # fmt: skip
# F(2x2, 3x3), points 0, 1, -1 and infinity: 16 multiplications for 4 outputs instead of 36. ncnn's choice for
# small outputs: on layer4's 7x7, 4x4 tiles of 2 waste less than 2x2 tiles of 4, and the transformed weights are
# 16 matrices of 512 x 512 (17 MB), not 36 (38 MB).
F2 = Winograd(
    2,
    bt=[[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
    g=[[1, 0, 0], [1 / 2, 1 / 2, 1 / 2], [1 / 2, -1 / 2, 1 / 2], [0, 0, 1]],
    at=[[1, 1, 1, 0], [0, 1, -1, -1]],
)
FORMS = (F4, F2)  # the forms a conv may take, the first that fits
SIZES = (4, 2)  # the output tile sizes used (the `winograd` switch: `make ablate` leaves 2, or both, out)
SCRATCH_BYTES = 4 << 20  # a Winograd conv's transformed tiles and sums per pass (L2 is 1 MiB, L3 32)
EFFECTIVE_RATE = True  # the bench counts direct-conv FLOPs over time: a rate that can pass the FMA peak


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
    """(rows, floats per row) of a channels-last activation with its border; read by a Winograd conv, with
    zero rows and columns beyond it up to whole tiles (56 -> 14 tiles of 4 reads 58 rows, 14 -> 4 tiles of 4
    reads 18, 7 -> 4 tiles of 2 reads 10), so no tile is ever cut at the edge."""
    c, h, w = chw(tensor)
    edge = border(tensor)
    rows, cols = h + 2 * edge, w + 2 * edge
    for r in readers(tensor):
        f = r.conv and winograd_form(r.conv)
        if f:
            rows = max(rows, tiles_across(r.conv.h_out, f) * f.out + 2 * edge)
            cols = max(cols, tiles_across(r.conv.w_out, f) * f.out + 2 * edge)
    return rows, cols * c


def winograd_form(c: spec.Conv, sizes: tuple[int, ...] = SIZES) -> Winograd | None:
    """The Winograd form a conv takes, or None (direct): 3x3 convs of stride 1 only; F(4x4) where it makes at
    least 4x4 tiles per image (layer1-3's 11 convs), F(2x2) on layer4's two 7x7 convs. (F(4x4) on 7x7 makes
    2x2 tiles per image and its transformed weights, 36 x 512 x 512 floats, 38 MB, would serve 4 tiles: the
    GEMMs wait on memory, NOTES.md.)"""
    fits = (f for f in FORMS if f is F2 or tiles_across(c.h_out, f) >= 4)
    return next((f for f in fits if f.out in sizes), None) if c.kernel == 3 and c.stride == 1 else None


def tiles_across(outputs: int, f: Winograd) -> int:
    return -(-outputs // f.out)


def epilogue(step: spec.Step | None) -> str:
    """What a store does besides the bias, as a name's end ('_add_relu'); None: the sums as they are (the
    Winograd GEMMs' store, '')."""
    return ("_add" if step and step.residual else "") + ("_relu" if step and step.relu else "")


def store_suffix(step: spec.Step) -> str:
    """What a conv's store does, as a name's end: '_add_relu_pad1'."""
    return epilogue(step) + (f"_pad{border(step.dst)}" if border(step.dst) else "")


def kernel_name(step: spec.Step) -> str:
    return f"{conv_name(step.conv)}{store_suffix(step)}"


def tile_name(step: spec.Step | None, stored: int = PANEL, pixels: int = PIXELS) -> str:
    return f"tile_{pixels}x{PANEL}{epilogue(step)}" + (f"_{stored}_channels" if stored < PANEL else "")


def tile_source(step: spec.Step | None, stored: int = PANEL, pixels: int = PIXELS) -> str:
    """The micro-kernel, a line of the generated module: `pixels` output pixels x one panel of 64 output channels,
    held in pixels x VECTORS vector registers for the whole sum (common/fma_tile.py). Each step of the sum loads
    the panel's 64 weights for one input float once (VECTORS vectors: 4 on AVX-512) and broadcasts each pixel's
    input float: pixels x VECTORS vector FMAs, no horizontal sum. Then 07's epilogue, on the registers: + bias,
    + the residual, ReLU, the first `stored` channels into y (step None: the sums as they are, for the Winograd
    GEMMs, with a zero bias). numba has no vector types, so the tile is LLVM IR, built once per epilogue and
    inlined into each kernel that calls it as `tile(x, at, window, w, bias, y[, res])`: where each pixel's
    window starts, and its output and its residual go, are in `at`; the window's shape (taps, floats between
    them, floats in each) in `window`."""
    store = f"relu={bool(step and step.relu)}, residual={bool(step and step.residual)}"
    return f"{tile_name(step, stored, pixels)} = fma_tile.tile({pixels}, {VECTORS}, {stored}, {store})\n"


def tiles_first(c: spec.Conv, order: str = "by size", weights: int | None = None) -> bool:
    """The order of a conv's items. Tile by tile (each block of pixels through every panel) when all the
    conv's weights fit in half of L2: a block's input stays in L1 and each pixel's channels are written
    in one go. Otherwise panel by panel, so one panel's weights stay in L2 while every block passes.
    (`order` "tiles" or "panels" forces one, for `make ablate`.)"""
    if order != "by size":
        return order == "tiles"
    return (c.cout * c.kernel * c.kernel * c.cin * 4 if weights is None else weights) <= L2_BYTES // 2


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


NUMBERS = {2: "TWO", 4: "FOUR", 5: "FIVE", 8: "EIGHT"}  # float32 constants in the generated module


def combination(coefficients: list[int], names: list[str]) -> str:
    """sum(k * name), written as a person would: 'd0_1 - d2_1 + FOUR * d4_1' (FOUR is np.float32(4): a
    Python 4 would make numba compute in float64)."""
    out = ""
    for k, name in zip(coefficients, names, strict=True):
        if k:
            term = name if abs(k) == 1 else f"{NUMBERS[abs(k)]} * {name}"
            out += (" - " if k < 0 else " + ") + term if out else ("-" if k < 0 else "") + term
    return out


def transform(m: list[list[int]], given: str, between: str, out: str) -> list[str]:
    """Lines computing out = m @ given @ m^T, one element each, through `between` = m @ given (given is a
    square grid of named locals, given0_0 ..., as wide as m)."""
    size, points = len(m), len(m[0])  # the output side, the input side
    lines = [f"{between}{i}_{j} = {combination(m[i], [f'{given}{k}_{j}' for k in range(points)])}"
             for i in range(size) for j in range(points)]  # fmt: skip
    lines += [f"{out}{i}_{j} = {combination(m[j], [f'{between}{i}_{k}' for k in range(points)])}"
              for i in range(size) for j in range(size)]  # fmt: skip
    return lines


def tile_corner(c: spec.Conv, t: str) -> list[str]:
    """img, and the first output row and column of tile t of a batch."""
    f = winograd_form(c)
    per_image, across = winograd_shapes(c)[0], tiles_across(c.w_out, f)
    return [f"img, q = {t} // {per_image}, {t} % {per_image}",
            f"oh, ow = q // {across} * {f.out}, q % {across} * {f.out}"]  # fmt: skip


def winograd_shapes(c: spec.Conv) -> tuple[int, int]:
    """(tiles per image, output channels rounded up to whole panels) of a Winograd conv."""
    f = winograd_form(c)
    return tiles_across(c.h_out, f) * tiles_across(c.w_out, f), -(-c.cout // PANEL) * PANEL


def winograd_in_source(step: spec.Step) -> str:
    """The input transform: each 6x6 (F(2x2): 4x4) tile d of each channel (the tiles overlap by 2) to
    V = B^T d B, into v (tiles, 36, C): for each of the 36 (16) points, a (tiles x C) matrix, the left side of
    one GEMM, its rows 36 * C floats apart. (Stored point-major, (36, tiles, C), the 36 streams a tile
    writes are 16 KB apart in layer3 and fall into the same sets of L1: the transform ran 10x slower.)"""
    c = step.conv
    f, shift = winograd_form(c), border(step.src) - c.pad
    per_image, _ = winograd_shapes(c)
    rows, row = layout(step.src)
    whole = vectors_of(c.cin)
    # Whole vectors of channels with common/winograd_ir.py's vector code, from the places of the tile's
    # values in x and in v; the channels left over (none in ResNet-50), one at a time as numba code, the
    # tile's rows and its v as slices so that every index is a literal plus ch (no negative-index check).
    start = times(plus("ow", shift), c.cin)
    points = range(f.points)
    places = [
        f"for i in range({f.points}):",
        f"    for j in range({f.points}):",
        f"        ats[t, 0, i * {f.points} + j] = img * {rows * row} + {times(plus('oh', 'i', shift), row)}"
        f" + {times(plus('ow', 'j', shift), c.cin)}",
        f"        ats[t, 1, i * {f.points} + j] = (t * {f.points**2} + i * {f.points} + j) * {c.cin}",
        f"for ch in range(0, {whole}, {LANES}):  # {LANES} channels at a time",
        f"    {transform_name(f, 'in')}(xs, ats, t, scratch, ch)",
    ]
    left = [f"row{i} = x[img, {plus('oh', i + shift)}, {start} : {start} + {f.points * c.cin}]" for i in points]
    left += ["vt = v[t]", f"for ch in range({whole}, {c.cin}):  # the channels left over"]
    body = [f"d{i}_{j} = row{i}[{plus(j * c.cin, 'ch')}]" for i in points for j in points]
    body += transform(f.bt, "d", "e", "v")
    body += [f"vt[{i * f.points + j}, ch] = v{i}_{j}" for i in points for j in points]
    left += ["    " + line for line in body]
    return "\n".join(
        [
            "@njit(cache=True, fastmath=True, parallel=True)",
            f"def {winograd_name('in', step)}(x, scratch):",
            f'    """{c.cin}x{c.h_in}x{c.w_in}, stored with a border of {border(step.src)}: '
            f'tiles of {f.points}x{f.points} to V = B^T d B."""',
            f"    tiles = x.shape[0] * {per_image}",
            *([f"    v = scratch[: {f.points**2} * tiles * {c.cin}].reshape(tiles, {f.points**2}, {c.cin})"]
              if whole < c.cin else []),
            *(["    xs = x.reshape(-1)",
               f"    ats = np.empty((tiles, 3, {f.points**2}), np.int64)"
               "  # where each value of a tile is, in x and in v"] if whole else []),
            "    for t in prange(tiles):  # tiles, across threads",
            *["        " + line for line in tile_corner(c, "t")],
            *["        " + line for line in places if whole],
            *["        " + line for line in left if whole < c.cin],
        ]
    ) + "\n"


def winograd_gemm_source(step: spec.Step, pixels: int = PIXELS, order: str = "by size") -> str:
    """The 36 GEMMs (F(2x2): 16), on 08's micro-kernel: for each point e, m[:, e] (tiles x CO) = v[:, e] (tiles x C) @
    u[e] (C x CO). The GEMM's rows are Winograd tiles, in blocks of `pixels` for the micro-kernel (a register
    tile of `pixels` rows x one panel of output channels); a row's window is one run of C floats."""
    c = step.conv
    per_image, padded = winograd_shapes(c)
    panels = padded // PANEL
    weights = c.cin * padded * 4  # bytes of one point's u
    block, panel = split("g", panels) if tiles_first(c, order, weights) else split("g", "blocks")[::-1]
    points = winograd_form(c).points ** 2
    return "\n".join(
        [
            "@njit(cache=True, fastmath=True, parallel=True)",
            f"def {winograd_name('gemm', step)}(u, scratch, n):",
            f'    """{points} GEMMs of (n * {per_image} tiles x {c.cin}) @ ({c.cin} x {c.cout}) '
            'on the micro-kernel."""',
            f"    tiles = n * {per_image}",
            f"    v = scratch[: {points} * tiles * {c.cin}]",
            f"    m = scratch[{points} * tiles * {c.cin} : {points} * tiles * {c.cin + padded}]",
            f"    blocks = (tiles + {pixels - 1}) // {pixels}  # the rows in blocks of {pixels}, one register tile's",
            f"    items = {points} * {times('blocks', panels)}  # point by point, then "
            f"{'tile by tile' if tiles_first(c, order, weights) else 'panel by panel'}",
            f"    parts = min({PARTS}, items)  # runs of consecutive items, shared out among the threads",
            f"    ats = np.empty((parts, 3, {pixels}), np.int64)  # where each tile's input and sums are",
            f"    window = np.array((1, 0, {c.cin}))  # one run of C floats",
            f"    zero = np.zeros({PANEL}, np.float32)  # the bias comes after the output transform",
            "    for part in prange(parts):  # numba gives each thread an equal share of the runs",
            "        at = ats[part]",
            "        for item in range(part * items // parts, (part + 1) * items // parts):",
            f"            e, g = {', '.join(split('item', times('blocks', panels)))}",
            f"            first = {times(block, pixels)}",
            f"            co = {times(panel, PANEL)}",
            f"            for r in range({pixels}):",
            "                t = min(first + r, tiles - 1)  # a short last block repeats its last tile",
            f"                at[0, r] = (t * {points} + e) * {c.cin}",
            f"                at[1, r] = (t * {points} + e) * {padded} + co",
            f"            {tile_name(None, PANEL, pixels)}(v, at, window, u[e, {panel}], zero, m)",
        ]
    ) + "\n"


def winograd_out_source(step: spec.Step) -> str:
    """The output transform fused with 08's epilogue: Y = A^T m A for each tile and output channel, + bias,
    + residual, ReLU, into the reader's buffer; the outputs of an edge tile beyond the layer are not
    stored (13x13 is 4x4 tiles of 4, the last 1 wide)."""
    c = step.conv
    f, (per_image, padded) = winograd_form(c), winograd_shapes(c)
    edge = border(step.dst)
    points = f.points**2
    head = [f"m{i}_{j} = mt[{i * f.points + j}, co]" for i in range(f.points) for j in range(f.points)]
    head += transform(f.at, "m", "s", "y")

    def stores(guarded: bool) -> list[str]:
        lines = []
        for i in range(f.out):
            for j in range(f.out):
                value = f"y{i}_{j} + bias[co]"
                if step.residual:
                    value += f" + res[img, {plus('oh', i)}, {times(plus('ow', j), c.cout)} + co]"
                if step.relu:
                    value = f"max({value}, np.float32(0.0))"
                store = f"out[img, {plus('oh', i + edge)}, {times(plus('ow', j + edge), c.cout)} + co] = {value}"
                lines += [f"if {i} < rows and {j} < cols:", "    " + store] if guarded else [store]
        return lines

    res = ", res" if step.residual else ""
    whole = vectors_of(c.cout)
    out_rows, out_row = layout(step.dst)
    places = [
        f"for i in range({f.points**2}):",
        f"    ats[t, 0, i] = start + (t * {f.points**2} + i) * {padded}",
        f"for a in range({f.out}):",
        f"    for b in range({f.out}):",
        "        inside = a < rows and b < cols  # an edge tile's outputs beyond the layer are not stored",
        f"        ats[t, 1, a * {f.out} + b] = img * {out_rows * out_row} + {times(plus('oh', 'a', edge), out_row)}"
        f" + {times(plus('ow', 'b', edge), c.cout)} if inside else -1",
        *([f"        ats[t, 2, a * {f.out} + b] = img * {c.h_out * c.w_out * c.cout}"
           f" + {times(plus('oh', 'a'), c.w_out * c.cout)} + {times(plus('ow', 'b'), c.cout)}"] if res else []),
        f"for co in range(0, {whole}, {LANES}):  # {LANES} channels at a time",
        f"    {transform_name(f, 'out', step)}(scratch, ats, t, outs, co, bias{', ress' if res else ''})",
    ]  # fmt: skip
    over = f"for co in range({whole}, {c.cout}):  # the channels left over"
    full = [over, *["    " + h for h in head + stores(False)]]
    cut = [over, *["    " + h for h in head + stores(True)]]
    left = [
        "mt = m[t]",
        f"if rows == {f.out} and cols == {f.out}:",
        *["    " + line for line in full],
        "else:  # a tile at the bottom or right edge",
        *["    " + line for line in cut],
    ]
    return "\n".join(
        [
            "@njit(cache=True, fastmath=True, parallel=True)",
            f"def {winograd_name('out', step)}(scratch, bias, out{res}, n):",
            f'    """{points} x (tiles x {c.cout}) to {c.cout}x{c.h_out}x{c.w_out}: Y = A^T m A, + bias'
            f'{", + residual" if res else ""}{", ReLU" if step.relu else ""}'
            f'{f", stored with a border of {edge}" if edge else ""}."""',
            f"    tiles = n * {per_image}",
            f"    start = {points} * tiles * {c.cin}  # after v",
            *([f"    m = scratch[start : start + {points} * tiles * {padded}].reshape(tiles, {points}, {padded})"]
              if whole < c.cout else []),
            *(["    outs = out.reshape(-1)"] if whole else []),
            *(["    ress = res.reshape(-1)"] if res and whole else []),
            *([f"    ats = np.empty((tiles, 3, {points}), np.int64)"
               "  # where each value of a tile is, in m, out and res"] if whole else []),
            "    for t in prange(tiles):  # tiles, across threads",
            *["        " + line for line in tile_corner(c, "t")],
            f"        rows, cols = min({f.out}, {c.h_out} - oh), min({f.out}, {c.w_out} - ow)",
            *["        " + line for line in places if whole],
            *["        " + line for line in left if whole < c.cout],
        ]
    ) + "\n"


def vectors_of(channels: int) -> int:
    """The channels that make whole vectors: the transforms' vector code takes them, numba code the rest."""
    return channels // LANES * LANES


def transform_name(f: Winograd, part: str, step: spec.Step | None = None) -> str:
    """The vector code of a form's input transform ('in'), or its output transform with a store's epilogue."""
    return f"transform_in_{f.out}" if part == "in" else f"transform_out_{f.out}{epilogue(step)}"


def transform_source(f: Winograd, part: str, step: spec.Step | None = None) -> str:
    """A line of the generated module: the vector code of one transform, built by common/winograd_ir.py."""
    if part == "in":
        return f"{transform_name(f, part)} = winograd_ir.transform({tuple(map(tuple, f.bt))})\n"
    res, relu = bool(step.residual), bool(step.relu)
    return (f"{transform_name(f, part, step)} = winograd_ir.transform({tuple(map(tuple, f.at))}, bias=True, "
            f"residual={res}, relu={relu})\n")  # fmt: skip


def chunk(c: spec.Conv) -> int:
    """Images per pass of a Winograd conv: as many as keep v and m within SCRATCH_BYTES, so a batch does
    not stream them through memory (layer1: 3.6 MB per image, one at a time; layer3: 1.2 MB, three), while
    the transformed weights still serve several images where they are large."""
    return max(1, SCRATCH_BYTES // (floats_per_image(c) * 4))


def floats_per_image(c: spec.Conv) -> int:
    """Floats of a Winograd conv's scratch per image: the transformed tiles v and the GEMMs' sums m."""
    per_image, padded = winograd_shapes(c)
    return winograd_form(c).points ** 2 * per_image * (c.cin + padded)


def winograd_name(part: str, step: spec.Step) -> str:
    c = step.conv
    if part == "in":
        return f"winograd_in_{c.cin}x{c.h_in}x{c.w_in}"
    if part == "gemm":
        return f"winograd_gemm_{c.cin}_to_{c.cout}_{winograd_shapes(c)[0]}_tiles"
    return f"winograd_out_{c.cout}x{c.h_out}x{c.w_out}{store_suffix(step)}"


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


def forward_source(tensor_at: dict[str, int], weight_at: dict[str, int], winograd: tuple[int, ...] = SIZES) -> str:
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
        if step.op == "conv" and winograd_form(step.conv, winograd):
            c = step.conv
            views.append(pool_view(c.weight, weight_at[c.weight], panel_shape(c, True)))
            views.append(pool_view(bias_name(c), weight_at[bias_name(c)], (c.cout,)))
            res = f", {activation(step.residual)}[i:j]" if step.residual else ""
            steps.append(f"        for i in range(0, n, {chunk(c)}):  # images whose v and m fit in L2 and L3")
            steps.append(f"            j = min(i + {chunk(c)}, n)")
            steps.append(f"            {winograd_name('in', step)}({src}[i:j], scratch)")
            steps.append(f"            {winograd_name('gemm', step)}({local(c.weight)}, scratch, j - i)")
            bias = local(bias_name(c))
            steps.append(f"            {winograd_name('out', step)}(scratch, {bias}, {dst}[i:j]{res}, j - i)")
        elif step.op == "conv":
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


def generate(
    tensor_at: dict[str, int], weight_at: dict[str, int], pixels: int = PIXELS, order: str = "by size",
    winograd: tuple[int, ...] = SIZES
) -> str:
    """The whole generated module: the entry, the micro-kernel, one kernel per distinct conv shape and
    epilogue (three for a Winograd conv: input transform, GEMMs, output transform), the pools, the
    classifier, the forward pass."""
    kernels: dict[str, list[spec.Step]] = {}
    transforms: dict[str, str] = {}
    vector_code: dict[str, str] = {}
    for step in spec.STEPS:
        if step.conv and winograd_form(step.conv, winograd):
            f = winograd_form(step.conv)
            vector_code.setdefault(transform_name(f, "in"), transform_source(f, "in"))
            vector_code.setdefault(transform_name(f, "out", step), transform_source(f, "out", step))
            transforms.setdefault(winograd_name("in", step), winograd_in_source(step))
            transforms.setdefault(winograd_name("gemm", step), winograd_gemm_source(step, pixels, order))
            transforms.setdefault(winograd_name("out", step), winograd_out_source(step))
        elif step.conv:
            kernels.setdefault(kernel_name(step), []).append(step)
    pools = [s for s in spec.STEPS if s.op in ("maxpool", "avgpool")]
    tiles = {tile_name(s, n, pixels): (s, n) for s, *_ in kernels.values() for n in stored_channels(s.conv)}
    if transforms:  # the GEMMs' sums, stored as they are
        tiles[tile_name(None, PANEL, pixels)] = (None, PANEL)
    parts = [
        "import numpy as np\nfrom numba import njit, prange\n\nfrom common import fma_tile, winograd_ir\n\n"
        f"{', '.join(NUMBERS.values())} = {', '.join(f'np.float32({k})' for k in NUMBERS)}\n"
        f"# The transforms' vector code: common/winograd_ir.py as of sha256 {winograd_ir.source_digest()}\n"
        + "".join(vector_code.values()),
        entry_source(),
        f"# The micro-kernel, one per epilogue: common/fma_tile.py as of sha256 {fma_tile.source_digest()}\n"
        + "".join(tile_source(step, stored, pixels) for step, stored in tiles.values()),
        *(conv_source(steps[0], [s.name for s in steps], pixels, order) for steps in kernels.values()),
        *transforms.values(),
        *(maxpool_source(s) if s.op == "maxpool" else avgpool_source(s) for s in pools),
        inspect.getsource(fc.py_func),
        forward_source(tensor_at, weight_at, winograd),
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


def panel_shape(c: spec.Conv, winograd: bool = False) -> tuple[int, ...]:
    if winograd:
        return winograd_form(c).points ** 2, -(-c.cout // PANEL), c.cin, PANEL
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


def winograd_panels(w: np.ndarray, f: Winograd) -> np.ndarray:
    """(CO, C, 3, 3) weights transformed, U = G g G^T for every channel pair (in float64), as the 36 (F(2x2):
    16) GEMMs read them: (points, panels of 64 output channels, C, 64); a short last panel filled with zeros."""
    co, ci = w.shape[:2]
    g = np.asarray(f.g, np.float64)
    u = np.einsum("ak,oikl,bl->aboi", g, w.astype(np.float64), g).reshape(f.points**2, co, ci)
    padded = np.zeros((f.points**2, -(-co // PANEL) * PANEL, ci))
    padded[:, :co] = u
    return np.ascontiguousarray(padded.reshape(f.points**2, -1, PANEL, ci).transpose(0, 1, 3, 2), np.float32)


# A batch runs image by image through layer1 and layer2 (common.generated): their activations are 1.6-3.2 MB
# per image, and a batch of 8 of them does not stay in L3 (32 MB) from one layer to the next.
WHOLE_BATCH_FROM = "layer3.0.downsample.0"
ABLATIONS = {
    "every 3x3 conv direct, as in 08 (no Winograd)": {"winograd": ()},
    "layer4's two 7x7 convs direct (F(4x4) alone, no F(2x2))": {"winograd": (4,)},
}


class ResNet50(GeneratedResNet50):
    def __init__(
        self, weights, max_batch: int = 1, threads: int | None = None, whole_batch_from: str | None = WHOLE_BATCH_FROM,
        **switches
    ) -> None:
        self.whole_batch_from = whole_batch_from
        self.switches = {"pixels": PIXELS, "winograd": SIZES, **switches}
        super().__init__(weights, max_batch, numba.config.NUMBA_NUM_THREADS if threads is None else threads)

    def generate(self, tensor_at: dict[str, int], weight_at: dict[str, int]) -> str:
        return generate(tensor_at, weight_at, **self.switches)

    def pack(self, weights) -> tuple[np.ndarray, dict[str, int]]:
        """Each conv's weights with its BatchNorm folded in, in panels for the tile (a Winograd conv's
        transformed first), and its bias; the classifier. The BatchNorm tensors themselves are not needed any more."""
        arrays = {}
        for c in spec.CONVS:
            bn = [weights.load(f"{c.bn}.{f}") for f in ("weight", "bias", "running_mean", "running_var")]
            w, arrays[bias_name(c)] = fold(weights.load(c.weight), *bn)
            f = winograd_form(c, self.switches["winograd"])
            arrays[c.weight] = winograd_panels(w, f) if f else panels(w)
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
        """The Winograd convs' transformed tiles v and the GEMMs' sums m, for the largest conv and batch."""
        convs = [c for c in spec.CONVS if winograd_form(c, self.switches["winograd"])]
        return max((floats_per_image(c) * min(chunk(c), self.max_batch) for c in convs), default=0)
