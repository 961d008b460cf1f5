"""Stage 11, AMX: a matrix unit, 16,384 multiply-adds per instruction.

One change from 10: the instruction that makes the sums. Intel's AMX (Sapphire Rapids and later) has eight
tile registers of 16 rows x 64 bytes and `tdpbusd`, which multiplies a tile of 16 pixels x 64 uint8 input
bytes by a tile of 16 groups of 4 input channels x 16 output channels of int8 weights and adds the
products into a tile of 16 x 16 int32 sums: 256 times what one `vpdpbusd` does. So the tile grows to 16
pixels (an A tile's rows) by the same panel of 64 output channels (four C tiles), and common/amx.py `tile`
replaces common/vnni.py's: per 64 bytes of a window's run, the 16 pixels' bytes copied into an A tile,
the panel's weights loaded as B tiles straight from 10's panels (VNNI's byte order is AMX's B layout),
four `tdpbusd`. Everything else is 10's: the quantization, the layout, the requantizing store (vnni's,
on the sums stored from the tiles), the pools, the classifier, ONNX Runtime int8 as the exact judge.

The forward pass walks `spec.STEPS` (conv1, maxpool, 16 bottlenecks, avgpool, fc): each step reads one
named tensor and writes one; a bottleneck's last conv adds the block's input (the residual) before its ReLU.
"""

from dataclasses import dataclass

import numba
import numpy as np

from common import amx, isa, quantized, spec, vnni
from common.arena import pack_arrays
from common.generated import GeneratedResNet50, ShapesOnly, activation, arena_view, local, plus, pool_view, split, times
from common.inputs import SHAPE

# The tile: an A tile's 16 pixels x a panel of 64 output channels (4 C tiles of 16), as 10's panel.
ISA = isa.target()
PIXELS, VECTORS = amx.ROWS, 4
PANEL = VECTORS * amx.ROWS  # output channels in a tile: a C tile's row is 16 int32 sums
GROUP = 4  # input channels per 32-bit lane: tdpbusd, as vpdpbusd, multiplies 4 bytes by 4 bytes
PARTS = 60  # 08's: each conv's items in 60 runs, dealt out to the threads
L2_BYTES = 1 << 20  # per core, on the machines measured (AMD Zen 4 and 5: 1 MiB; Sapphire Rapids 2 MiB)
PRECISION = "int8"  # the bench judges this stage against ONNX Runtime int8 (common.quantized)
UNIT = "amx"  # its rows are drawn against the AMX peak
# No fallback: without AMX this stage cannot run (the bench lists it as skipped, saying why; `make test`
# skips its tests); 10 is the int8 stage there.
SKIP = None if amx.available() is None else f"needs Intel AMX for its tile: {amx.available()}"


def conv_name(c: spec.Conv) -> str:
    return f"conv_{c.cin}x{c.h_in}x{c.w_in}_to_{c.cout}_k{c.kernel}_s{c.stride}"


def chw(tensor: str) -> tuple[int, int, int]:
    """(channels, height, width) of the image or of a step's output, as stored: the image's 3 channels as 4,
    so that every window is whole 4-byte groups (the fourth's weights are zero)."""
    return (GROUP, *SHAPE[1:]) if tensor == spec.INPUT else spec.STEP_BY_NAME[tensor].shape


def readers(tensor: str) -> list[spec.Step]:
    return [step for step in spec.STEPS if step.src == tensor]


def border(tensor: str) -> int:
    """The border a tensor is stored with: the padding of the conv or pool that reads it. It holds the
    tensor's zero point (a real 0): the image's is filled on every call, the others' are 0 and stay so."""
    pads = [r.conv.pad if r.conv else spec.MAXPOOL[2] if r.op == "maxpool" else 0 for r in readers(tensor)]
    return max(pads, default=0)


def layout(tensor: str) -> tuple[int, int]:
    """(rows, bytes per row) of a channels-last activation with its border."""
    c, h, w = chw(tensor)
    edge = border(tensor)
    return h + 2 * edge, (w + 2 * edge) * c


def epilogue(step: spec.Step) -> str:
    return "_add" if step.residual else ""


def kernel_name(step: spec.Step) -> str:
    return f"{conv_name(step.conv)}{epilogue(step)}" + (f"_pad{border(step.dst)}" if border(step.dst) else "")


def tile_name(step: spec.Step, pixels: int = PIXELS) -> str:
    return f"tile_{pixels}x{PANEL}{epilogue(step)}"


def tile_source(step: spec.Step, pixels: int = PIXELS) -> str:
    """The micro-kernel: 16 output pixels x one panel of 64 output channels, its sums int32 and its store the
    requantization (common/amx.py `tile`: per 64 input bytes, the pixels' bytes as an A tile, 4 B tiles of
    the panel's weights, 4 `tdpbusd`; then vnni's store, per 16 channels, + bias, x scale,
    clamp, round, + zero point, and for a residual ONNX Runtime's QLinearAdd, on the registers)."""
    return f"{tile_name(step, pixels)} = amx.tile({pixels}, {VECTORS}, residual={bool(step.residual)})\n"


def tiles_first(c: spec.Conv, order: str = "by size") -> bool:
    """08's order of a conv's items, for int8 weights (a quarter of the bytes: more convs go tile by tile)."""
    if order != "by size":
        return order == "tiles"
    return c.cout * c.kernel * c.kernel * stored_cin(c) <= L2_BYTES // 2


def stored_cin(c: spec.Conv) -> int:
    return -(-c.cin // GROUP) * GROUP


def conv_source(step: spec.Step, layers: list[str], pixels: int = PIXELS, order: str = "by size") -> str:
    """08's kernel for every conv step of this shape and epilogue, on bytes: x and y channels-last as stored
    (n, rows, bytes per row), w in panels (CO / 64, K * K * C / 4, 64, 4), bias (CO,) int32, scale (CO,)
    and quant (6,) float32."""
    c = step.conv
    assert c.cout % PANEL == 0, "every ResNet-50 conv has whole panels"
    assert c.kernel * -(-c.kernel * stored_cin(c) // 64) <= amx.A_TILES, "the tile's A buffer holds the window"
    res = ", res" if step.residual else ""
    assert not step.residual or border(step.residual) == 0, "a residual is read without a border"
    panels = c.cout // PANEL
    cin = stored_cin(c)
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
        f" + {times(plus(times(ow, c.stride), shift), cin)}",
        f"at[1, r] = img * {out_rows * out_row} + {times(plus(oh, edge), out_row)}"
        f" + {times(plus(ow, edge), c.cout)}",
        *([f"at[2, r] = p * {c.cout}"] if res else []),
    ]
    block, panel = split("item", panels) if tiles_first(c, order) else split("item", "blocks")[::-1]
    body = [
        f"block, panel = {block}, {panel}",
        "if block != placed:  # the pixels' places, once per block (its panels follow one another)",
        f"    first = {times('block', pixels)}",
        f"    for r in range({pixels}):",
        *["        " + w for w in where],
        "    placed = block",
        f"{tile_name(step, pixels)}(xs, at, window, w, panel, bias, scale, quant, ys{', rs' if res else ''})",
    ]
    out = [
        "@njit(cache=True, parallel=True)",
        f"def {kernel_name(step)}(x, w, bias, scale, quant, y{res}):",
        f'    """{c.cin}x{c.h_in}x{c.w_in} -> {c.cout}x{c.h_out}x{c.w_out}, {c.kernel}x{c.kernel} conv, '
        f'stride {c.stride}, padding {c.pad}, int8{", + residual" if res else ""}'
        f'{f", stored with a border of {edge}" if edge else ""}: {", ".join(layers)}."""',
        f"    batch_pixels = x.shape[0] * {hw}  # the GEMM's rows: a batch is more pixels",
        f"    blocks = (batch_pixels + {pixels - 1}) // {pixels}  # the rows in blocks of {pixels}, one tile's",
        f"    items = {times('blocks', panels)}  # (block, panel) pairs, "
        f"{'tile by tile' if tiles_first(c, order) else 'panel by panel'}",
        f"    parts = min({PARTS}, items)  # runs of consecutive items, shared out among the threads",
        f"    ats = np.empty((parts, 3, {pixels}), np.int64)  # where each pixel's input, output, residual are",
        "    xs, ys = x.reshape(-1), y.reshape(-1)",
        *(["    rs = res.reshape(-1)"] if res else []),
        f"    window = np.array(({c.kernel}, {row}, {c.kernel * cin}))  # taps, bytes between them, bytes in each",
        "    for part in prange(parts):  # numba gives each thread an equal share of the runs",
        "        at, placed = ats[part], -1",
        "        for item in range(part * items // parts, (part + 1) * items // parts):",
        *["            " + b for b in body],
    ]
    return "\n".join(out) + "\n"


def entry_source() -> str:
    """The image, NCHW float32 as given, quantized as ONNX Runtime's QuantizeLinear does (divide by the
    scale, clamp, round to nearest even, add the zero point) into its stored layout: channels-last, 4
    channels, conv1's border holding the zero point. quant = (scale, -zero point, 255 - zero point, zero point)."""
    c, h, w = SHAPE
    edge = border(spec.INPUT)
    size = h + 2 * edge
    return "\n".join(
        [
            "@njit(cache=True, parallel=True)",
            "def quantize_image(x, quant, y):",
            f'    """(n, {c}, {h}, {w}) float32 -> uint8 channels-last, {GROUP} channels, border {edge} of the '
            'zero point."""',
            "    zero = np.uint8(quant[3])",
            "    for n in range(x.shape[0]):",
            f"        for i in prange({size}):  # rows, across threads",
            f"            for j in range({size * GROUP}):",
            "                y[n, i, j] = zero",
            f"            if {edge} <= i < {h + edge}:",
            f"                for jj in range({w}):",
            f"                    for ch in range({c}):",
            f"                        v = x[n, ch, i - {edge}, jj] / quant[0]",
            "                        v = np.rint(min(max(v, quant[1]), quant[2])) + quant[3]",
            f"                        y[n, i, {plus(times(plus('jj', edge), GROUP), 'ch')}] = np.uint8(v)",
        ]
    ) + "\n"


def maxpool_name(step: spec.Step) -> str:
    """The max pool's kernel, named by its input's shape: maxpool_64x112x112."""
    c, h, w = chw(step.src)
    return f"maxpool_{c}x{h}x{w}"


def maxpool_source(step: spec.Step) -> str:
    """08's max pool, on bytes: the max of quantized values is the quantized max (same scale and zero point),
    and the input is a ReLU output stored with a border of 0, its zero point."""
    k, stride, pad = spec.MAXPOOL
    c, h, w = step.shape
    assert border(step.src) == pad and border(step.dst) == 0
    return "\n".join(
        [
            "@njit(cache=True, parallel=True)",
            f"def {maxpool_name(step)}(x, y):",
            f'    """{k}x{k} max pool, stride {stride}, padding {pad} (the stored border), channels-last bytes."""',
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
    """ONNX Runtime's QLinearGlobalAveragePool: the int32 sum less the zero point per pixel, times
    scale_in / (scale_out * pixels), rounded, + the output's zero point. quant = (that scale, zero point in,
    zero point out). The sums run along the stored rows (channels innermost: vector adds of bytes widened to
    int32); the images go to the threads."""
    c, h, w = spec.STEP_BY_NAME[step.src].shape
    return "\n".join(
        [
            "@njit(cache=True, parallel=True)",
            f"def avgpool_{c}x{h}x{w}(x, quant, y):",
            f'    """Mean over the {h}x{w} pixels of each channel, channels-last bytes in, (n, {c}) bytes out."""',
            f"    bias = -np.int32(quant[1]) * {h * w}",
            "    for n in prange(x.shape[0]):  # images, across threads",
            f"        acc = np.full({c}, bias, np.int32)",
            f"        for i in range({h}):",
            f"            for j in range({w}):",
            f"                row = x[n, i, {times('j', c)} : {plus(times('j', c), c)}]",
            f"                for ch in range({c}):",
            "                    acc[ch] += np.int32(row[ch])",
            f"        for ch in range({c}):",
            "            v = np.rint(np.float32(acc[ch]) * quant[0]) + quant[2]",
            "            y[n, ch] = np.uint8(min(max(v, np.float32(0.0)), np.float32(255.0)))",
        ]
    ) + "\n"


FC_OUT = -(-spec.NUM_CLASSES // PANEL) * PANEL  # the classifier's outputs in whole panels (1000 -> 1024)


def fc_source(pixels: int = PIXELS) -> str:
    """The classifier on the conv tile: a 1x1 conv of one pixel per image (its 2048 bytes) to 1000 channels
    padded to whole panels, requantized in the tile's store as ONNX Runtime's QGemm is, then its
    DequantizeLinear: logits = (q - zy) x the logits' scale, which is exactly v x scale for the
    clamped, rounded v that QGemm's requantization makes. (A loop of byte products per output channel
    took 0.8 ms an image on one Sapphire Rapids thread, `make profile STAGE=11`: numba vectorizes it with
    32-bit multiplies.)"""
    return "\n".join(
        [
            "@njit(cache=True, parallel=True)",
            "def fc(x, w, bias, scale, quant, q, y):",
            f'    """(n, {spec.FC_IN}) bytes -> (n, {spec.NUM_CLASSES}) logits, through q: (n, {FC_OUT}) bytes. '
            'quant = (-zy, 255 - zy, zy, the logits\' scale)."""',
            "    n = x.shape[0]",
            "    xs, qs = x.reshape(-1), q.reshape(-1)",
            f"    window = np.array((1, 0, {spec.FC_IN}))  # one tap: the pixel's {spec.FC_IN} bytes",
            f"    blocks = (n + {pixels - 1}) // {pixels}",
            f"    for panel in prange({FC_OUT // PANEL}):",
            f"        at = np.empty((3, {pixels}), np.int64)",
            "        for block in range(blocks):",
            f"            for r in range({pixels}):",
            f"                p = min({plus(times('block', pixels), 'r')}, n - 1)  # a short block repeats its last",
            f"                at[0, r] = p * {spec.FC_IN}",
            f"                at[1, r] = p * {FC_OUT}",
            "                at[2, r] = 0",
            f"            tile_{pixels}x{PANEL}(xs, at, window, w, panel, bias, scale, quant, qs)",
            "    for i in range(n):",
            f"        for o in range({spec.NUM_CLASSES}):",
            "            y[i, o] = (np.float32(q[i, o]) - quant[2]) * quant[3]",
        ]
    ) + "\n"


def forward_source(tensor_at: dict[str, int], weight_at: dict[str, int]) -> str:
    """The forward pass as straight-line code: every tensor a named view at a literal offset (per image;
    `b` is the arena's capacity in images, `n` this call's), then the steps: one kernel call each."""
    views = ["    # Activations: bytes in the arena, channels-last with their readers' borders; the logits float32."]
    views += [arena_view(spec.INPUT, tensor_at[spec.INPUT], layout(spec.INPUT), "uint8")]
    for step in spec.STEPS:
        if step.op == "fc":
            views.append(arena_view(step.dst, tensor_at[step.dst], step.shape))
        else:
            shape = step.shape if step.op == "avgpool" else layout(step.dst)
            views.append(arena_view(step.dst, tensor_at[step.dst], shape, "uint8"))
    views.append("    # Weights and quantization: views of the pool (int8 weights, int32 biases, float32 scales).")
    views.append(pool_view(INPUT_Q, weight_at[INPUT_Q], (4,)))
    steps = []
    for i, step in enumerate(spec.STEPS):
        src, dst = activation(step.src), activation(step.dst)
        steps.append(f"    if first <= {i} < last:  # {step.name}")
        if i == 0:
            steps.append(f"        quantize_image(x, {local(INPUT_Q)}, {src})")
        if step.op == "conv":
            c = step.conv
            names = parameter_names(step)
            views.append(pool_view(names[0], weight_at[names[0]], panel_shape(c), "int8"))
            views.append(pool_view(names[1], weight_at[names[1]], (c.cout,), "int32"))
            views.append(pool_view(names[2], weight_at[names[2]], (c.cout,)))
            views.append(pool_view(names[3], weight_at[names[3]], (6,)))
            res = f", {activation(step.residual)}" if step.residual else ""
            steps.append(f"        {kernel_name(step)}({src}, {', '.join(map(local, names))}, {dst}{res})")
        elif step.op == "maxpool":
            steps.append(f"        {maxpool_name(step)}({src}, {dst})")
        elif step.op == "avgpool":
            c, h, w = spec.STEP_BY_NAME[step.src].shape
            views.append(pool_view(AVGPOOL_Q, weight_at[AVGPOOL_Q], (3,)))
            steps.append(f"        avgpool_{c}x{h}x{w}({src}, {local(AVGPOOL_Q)}, {dst})")
        else:
            names = parameter_names(step)
            views.append(pool_view(names[0], weight_at[names[0]], (FC_OUT // PANEL, spec.FC_IN // GROUP, PANEL, GROUP),
                                   "int8"))  # fmt: skip
            views.append(pool_view(names[1], weight_at[names[1]], (FC_OUT,), "int32"))
            views.append(pool_view(names[2], weight_at[names[2]], (FC_OUT,)))
            views.append(pool_view(names[3], weight_at[names[3]], (4,)))
            views.append(f"    fc_bytes = scratch[: n * {FC_OUT // 4}].view(np.uint8).reshape(n, {FC_OUT})")
            steps.append(f"        fc({src}, {', '.join(map(local, names))}, fc_bytes, {dst})")
    head = [
        "@njit(cache=True)",
        "def forward(x, params, arena, scratch, b, first, last):",
        '    """Steps first..last-1 of ResNet-50 on x (n images); the arena holds b images per tensor."""',
        "    n = x.shape[0]",
    ]
    return "\n".join(head + views + steps) + "\n"


def generate(tensor_at: dict[str, int], weight_at: dict[str, int], pixels: int = PIXELS, order: str = "by size") -> str:
    """The whole generated module: the int8 sums (common/amx.py), the entry, the tile (one per epilogue),
    one kernel per distinct conv shape and epilogue, the pools, the classifier, the forward pass."""
    kernels: dict[str, list[spec.Step]] = {}
    for step in spec.STEPS:
        if step.conv:
            kernels.setdefault(kernel_name(step), []).append(step)
    pools = [s for s in spec.STEPS if s.op in ("maxpool", "avgpool")]
    tiles = {tile_name(s, pixels): s for s in spec.STEPS if s.conv}
    parts = [
        "import numpy as np\nfrom numba import njit, prange\n\nfrom common import amx\n\n"
        f"# The tiles: AMX's tdpbusd, common/amx.py as of sha256 {amx.source_digest()}, its store common/vnni.py's"
        f" as of {vnni.source_digest()}\n"
        + "".join(tile_source(step, pixels) for step in tiles.values()),
        entry_source(),
        *(conv_source(steps[0], [s.name for s in steps], pixels, order) for steps in kernels.values()),
        *(maxpool_source(s) if s.op == "maxpool" else avgpool_source(s) for s in pools),
        fc_source(pixels),
        forward_source(tensor_at, weight_at),
    ]
    return "\n\n".join(parts)


INPUT_Q = "input.q"
AVGPOOL_Q = "avgpool.q"


def parameter_names(step: spec.Step) -> tuple[str, str, str, str]:
    """A conv's (or the classifier's) tensors in the pool: int8 weights, int32 bias, float32 scales, q."""
    base = step.conv.name if step.conv else "fc"
    return f"{base}.weight", f"{base}.bias", f"{base}.scale", f"{base}.q"


def panel_shape(c: spec.Conv) -> tuple[int, int, int, int]:
    return c.cout // PANEL, c.kernel * c.kernel * stored_cin(c) // GROUP, PANEL, GROUP


def panels(w: np.ndarray) -> np.ndarray:
    """(CO, C, K, K) int8 weights as the tile reads them: (CO / 64, K * K * C / 4, 64, 4), for each 4 input
    channels of a channels-last window (taps and channels in the window's order), the 64 output channels'
    4 bytes; C padded to a multiple of 4 with zero weights (the stem's 3)."""
    co, ci, k, _ = w.shape
    cin = -(-ci // GROUP) * GROUP
    padded = np.zeros((co, k, k, cin), np.int8)
    padded[..., :ci] = w.transpose(0, 2, 3, 1)
    rows = padded.reshape(co // PANEL, PANEL, -1, GROUP)  # (panels, 64, K*K*C/4, 4)
    return np.ascontiguousarray(rows.transpose(0, 2, 1, 3))


@dataclass(frozen=True)
class Requantize:
    """A conv's integer parameters as the tile uses them, from the int8 model's (common.quantized)."""

    bias: np.ndarray  # int32: the model's bias, less the input's zero point times each channel's weight sum
    scale: np.ndarray  # float32: input scale x weight scale / output scale, in ONNX Runtime's order
    quant: np.ndarray  # float32 (6,): the clamp, the zero point, and the residual add's constants


def requantize(layer: quantized.Layer) -> Requantize:
    f32 = np.float32
    (xs, xz), (ys, yz) = layer.x, layer.y
    sums = layer.weight.reshape(len(layer.weight), -1).astype(np.int64).sum(axis=1)
    bias = (layer.bias.astype(np.int64) - xz * sums).astype(np.int32)
    scale = (f32(xs) * layer.weight_scale.astype(f32) / f32(ys)).astype(f32)
    quant = np.zeros(6, f32)
    quant[:3] = -yz, 255 - yz, yz
    if layer.residual is not None:
        quant[3:] = add_constants(layer.y, layer.residual, layer.out)
    return Requantize(bias, scale, quant)


def add_constants(a: tuple[float, int], b: tuple[float, int], c: tuple[float, int]) -> tuple[float, float, float]:
    """ONNX Runtime's QLinearAdd of a and b into c, in the form its AVX2 kernel computes (and the one its
    output matched bit for bit here, where a direct (sa * (a - za) + sb * (b - zb)) / sc did not):
    c = rint(a * sa / sc + (b * sb / sc + zc - (sa / sc * za + sb / sc * zb))), each step in float32.
    Returns the two ratios and the constant."""
    f32 = np.float32
    (sa, za), (sb, zb), (sc, zc) = a, b, c
    ratio_a, ratio_b = f32(f32(sa) / f32(sc)), f32(f32(sb) / f32(sc))
    constant = f32(f32(zc) - f32(f32(ratio_a * f32(za)) + f32(ratio_b * f32(zb))))
    return ratio_a, ratio_b, constant


# A batch runs image by image through layer1 and layer2 (common.generated): 08's switch, the same here.
WHOLE_BATCH_FROM = "layer3.0.downsample.0"
ABLATIONS = {
    "the whole batch through every step (no image-by-image start)": {"whole_batch_from": None},
    "every conv panel by panel": {"order": "panels"},
    "every conv tile by tile": {"order": "tiles"},
}


class ResNet50(GeneratedResNet50):
    unavailable = SKIP
    def __init__(
        self, weights, max_batch: int = 1, threads: int | None = None, whole_batch_from: str | None = WHOLE_BATCH_FROM,
        **switches
    ) -> None:
        self.whole_batch_from = whole_batch_from
        self.switches = {"pixels": PIXELS, **switches}
        # The int8 model ONNX Runtime's quantizer makes for these weights (cached); none for `make codegen`,
        # whose stand-in store has shapes only (the generated source depends on shapes alone).
        self.model = None if isinstance(weights, ShapesOnly) else quantized.int8_model(weights)
        super().__init__(weights, max_batch, numba.config.NUMBA_NUM_THREADS if threads is None else threads)

    def generate(self, tensor_at: dict[str, int], weight_at: dict[str, int]) -> str:
        return generate(tensor_at, weight_at, **self.switches)

    def pack(self, weights) -> tuple[np.ndarray, dict[str, int]]:
        """The int8 model's weights in panels, its biases and scales as the tile uses them, the constants of
        the entry, the pools and the classifier: as bytes in one float32 pool (views by type in the code)."""
        layers = quantized.layers(self.model) if self.model is not None else placeholder_layers()
        f32 = np.float32
        arrays = {}
        for step in spec.STEPS:
            if step.conv or step.op == "fc":
                layer, names = layers[step.name], parameter_names(step)
                r = requantize(layer)
                arrays[names[0]] = panels(layer.weight if step.conv else fc_padded(layer.weight))
                pad = (lambda a: a) if step.conv else fc_padded
                arrays[names[1]], arrays[names[2]] = pad(r.bias), pad(r.scale)
                arrays[names[3]] = r.quant if step.conv else np.append(r.quant[:3], f32(layer.out[0]))
        scale, zero = layers[spec.INPUT].out
        arrays[INPUT_Q] = np.array([scale, -zero, 255 - zero, zero], f32)
        pool = layers[spec.STEPS[-2].name]
        (ins, inz), (outs, outz) = pool.x, pool.out
        _, h, w = spec.STEP_BY_NAME[spec.STEPS[-2].src].shape
        arrays[AVGPOOL_Q] = np.array([f32(ins) / (f32(outs) * f32(h * w)), inz, outz], f32)
        return pack_arrays({name: as_floats(a) for name, a in arrays.items()})

    def tensor_floats(self) -> dict[str, int]:
        """Each activation's bytes as floats (the arena counts floats): a quarter of 08's."""
        tensors = [spec.INPUT] + [s.dst for s in spec.STEPS if s.op not in ("avgpool", "fc")]
        out = {t: int(np.prod(layout(t))) // 4 for t in tensors}
        out[spec.STEPS[-2].dst] = spec.FC_IN // 4
        return out

    def private(self) -> set[str]:
        """Tensors stored with a border keep a place of their own, as in 07 and 08."""
        return {t for t in self.tensor_floats() if border(t)}

    def in_place(self) -> dict[str, str]:
        """A bottleneck's last conv writes its output over the residual it adds (07's)."""
        return {s.dst: s.residual for s in spec.STEPS if s.residual}

    def scratch_floats(self) -> int:
        return self.max_batch * FC_OUT // 4  # the classifier's bytes

    def _judge(self, logits: np.ndarray) -> str | None:
        """The int8 judge: ONNX Runtime on the same int8 model (common.quantized)."""
        from common.selfcheck import probe

        judge = quantized.Int8Reference(self._weights, model=self.model)
        verdict = quantized.compare_int8(logits, judge(probe()), judge.scale)
        why = f"its logits for the check input disagree with ONNX Runtime int8's ({verdict.reason})"
        return None if verdict.ok else why


def placeholder_layers() -> dict[str, quantized.Layer]:
    """Zeros in the int8 model's shapes: what `make codegen` packs (the source needs the offsets only)."""
    one = (1.0, 0)
    out = {spec.INPUT: quantized.Layer(None, one, one)}
    for step in spec.STEPS:
        if step.conv or step.op == "fc":
            shape = (step.conv.cout, step.conv.cin, step.conv.kernel, step.conv.kernel) if step.conv else (
                spec.NUM_CLASSES, spec.FC_IN)
            co = shape[0]
            out[step.name] = quantized.Layer(one, one, one, np.zeros(shape, np.int8), np.ones(co, np.float32),
                                             np.zeros(co, np.int32), one if step.residual else None)
        else:
            out[step.name] = quantized.Layer(one, one, one)
    return out


def fc_padded(a: np.ndarray) -> np.ndarray:
    """The classifier's weights (as a 1x1 conv's, (CO, C, 1, 1)), bias or scale with its 1000 output
    channels padded with zeros to whole panels."""
    out = np.zeros((FC_OUT, *a.shape[1:]), a.dtype)
    out[: len(a)] = a
    return out.reshape(FC_OUT, -1, 1, 1) if a.ndim == 2 else out


def as_floats(a: np.ndarray) -> np.ndarray:
    """An array's bytes as float32s, for the pool (its size a multiple of 4 bytes, as every one here is)."""
    a = np.ascontiguousarray(a).reshape(-1)
    assert a.nbytes % 4 == 0, a.dtype
    return a.view(np.float32)
