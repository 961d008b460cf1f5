"""Four uint8 x int8 products summed into each int32 lane of a vector: the multiply of the int8 stage (10).

AVX-512 VNNI's `vpdpbusd` does it in one instruction: in each 32-bit lane, 4 unsigned bytes of one register
times the 4 signed bytes of another, summed and added to the lane's int32, for 16 lanes (64 multiply-adds,
4x an fp32 FMA's 16 in the same register). numba has no vector types, so the kernels that use it are
written as numba intrinsics: LLVM IR built with llvmlite and inlined into the numba function that calls
them. On a target without VNNI (numba compiles for the machine, or for `NUMBA_CPU_NAME`, common.isa) the
same sum is written as plain IR (widen, multiply, add the four products) that LLVM lowers with what the
target has: slower, never wrong, never an instruction the CPU lacks.

- `dot4(builder, acc, a, b, name)`: acc + the 4-byte dot products, as IR (`name`: the target's VNNI
  intrinsic from `instruction()`, or None for the plain IR).
- `tile(pixels, vectors, residual)`: the int8 micro-kernel, 08's outer-product tile with `dot4` for
  the FMA and a requantizing store.
- `chains(count)`: `count` independent `dot4` chains in registers, for the bench's int8 peak
  (bench/peak.py).
"""

from functools import cache, partial

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from common import isa
from common.llvm_ir import I8, I32, I64, data, digest, load_at, splat
from common.llvm_ir import lanes as lanes  # int32 lanes per vector (bench/peak.py and the tests read it here)


def instruction(target: isa.Target | None = None) -> str | None:
    """The LLVM intrinsic that is `vpdpbusd` for the target's vectors, or None (the plain-IR path)."""
    target = target or isa.target()
    if target.vector_floats == 16 and target.vnni:
        return "llvm.x86.avx512.vpdpbusd.512"
    if target.vector_floats == 8 and (target.avx_vnni or target.vnni):  # AVX-VNNI, or AVX-512 VNNI + VL
        return "llvm.x86.avx512.vpdpbusd.256"
    return None


def describe(target: isa.Target | None = None) -> str:
    name = instruction(target)
    return "vpdpbusd (VNNI)" if name else "widen, multiply and add (no VNNI on this target)"


def dot4(builder: ir.IRBuilder, acc: ir.Value, a: ir.Value, b: ir.Value, name: str | None) -> ir.Value:
    """acc (<n x i32>) + in each lane the sum of 4 products of a's bytes (unsigned) and b's (signed)."""
    vector = acc.type
    if name:
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vector, [vector] * 3), name)
        return builder.call(fn, [acc, a, b])
    n = vector.count
    bytes_ = ir.VectorType(I8, 4 * n)
    wide = ir.VectorType(I32, 4 * n)
    # u8 x s8 fits in 16 bits; four of them in 32: exact, as vpdpbusd is (no saturation).
    unsigned, signed = builder.zext(builder.bitcast(a, bytes_), wide), builder.sext(builder.bitcast(b, bytes_), wide)
    products = builder.mul(unsigned, signed)
    total = acc
    for k in range(4):
        picked = ir.Constant(ir.VectorType(I32, n), [4 * i + k for i in range(n)])
        total = builder.add(total, builder.shuffle_vector(products, ir.Constant(wide, None), picked))
    return total


@cache
def tile(pixels: int, vectors: int, residual: bool):
    """The int8 micro-kernel: 08's tile of `pixels` output pixels x `vectors` vectors of output channels,
    its sums int32 in registers, then the requantizing store on those registers. A numba intrinsic, called
    as `tile(x, at, window, w, panel, bias, scale, quant, y[, res])`:

    x       uint8, the stored input, flat; at[0, r] is where pixel r's window starts in it (bytes)
    window  (taps, row, length): `taps` runs of `length` bytes (a multiple of 4), `row` bytes apart
    w       int8, every panel: per panel, for each 4 bytes of the window, `vectors` vectors of output
            channels x 4 bytes; `panel` says which (its channels start at panel x vectors x lanes)
    bias    int32, scale float32: every output channel's (bias with the input's zero point folded in)
    quant   float32: (-zy, 255 - zy, zy), and with a residual `add_constants`' three
    y, res  uint8, flat: pixel r's channels go to y[at[1, r] + first channel:], its residual is at
            res[at[2, r] + first channel:]
    (Whole arrays and an index rather than slices: numba counts references to every array it slices.)

    The sum: per 4 input bytes, the panel's vectors loaded once, each pixel's 4 bytes broadcast to every
    lane, pixels x vectors `dot4`s into accumulators that stay in registers (allocas LLVM promotes). The
    store, per vector of 16 channels, in ONNX Runtime's order and precision (QLinearConv's requantization,
    and QLinearAdd's for a residual):
        v = rint(clamp(float(sum + bias) * scale, -zy, 255 - zy)) + zy
        v = clamp(rint(fma(v, ra, fma(r, rb, constant))), 0, 255)          with a residual r
    then 16 bytes written at once."""
    target = isa.target()
    name, n = instruction(target), target.vector_floats
    ints = ir.VectorType(I32, n)

    def codegen(context, builder, signature, args):
        arrays = [data(context, builder, t, v) if isinstance(t, types.Array) else v
                  for t, v in zip(signature.args, args, strict=True)]  # fmt: skip
        xs, ats, win, ws = arrays[:4]
        panel_index = args[4]
        accs = [[cgutils.alloca_once_value(builder, ir.Constant(ints, None)) for _ in range(vectors)]
                for _ in range(pixels)]  # fmt: skip
        x_bytes = builder.bitcast(xs, I8.as_pointer())
        w_vectors = builder.bitcast(ws, ints.as_pointer())
        taps, row, length = (load_at(builder, win, k) for k in range(3))
        starts = [load_at(builder, ats, r) for r in range(pixels)]
        words = builder.udiv(length, ir.Constant(I64, 4))
        # The panel's place: its weights (in vectors) and its first output channel.
        w_vectors = builder.gep(w_vectors, [builder.mul(builder.mul(panel_index, builder.mul(taps, words)),
                                                        ir.Constant(I64, vectors))])  # fmt: skip
        with cgutils.for_range(builder, taps) as tap_loop:
            tap = tap_loop.index
            offset = builder.mul(tap, row)
            first_word = builder.mul(tap, words)
            with cgutils.for_range(builder, words) as word_loop:
                i = word_loop.index
                k = builder.mul(builder.add(first_word, i), ir.Constant(I64, vectors))
                weights = [builder.load(builder.gep(w_vectors, [builder.add(k, ir.Constant(I64, j))]), align=4)
                           for j in range(vectors)]  # fmt: skip
                byte = builder.add(offset, builder.mul(i, ir.Constant(I64, 4)))
                for r in range(pixels):
                    at = builder.gep(x_bytes, [builder.add(starts[r], byte)])
                    a = splat(builder, builder.load(builder.bitcast(at, I32.as_pointer()), align=1), ints)
                    for j in range(vectors):
                        builder.store(dot4(builder, builder.load(accs[r][j]), a, weights[j], name), accs[r][j])
        requantize_store(builder, arrays, args[4], accs, residual)
        return context.get_dummy_value()

    return tile_intrinsic(codegen, residual)


def tile_intrinsic(codegen, residual: bool):
    """The int8 tile's intrinsic around its `codegen` (vnni's here, AMX's in common/amx.py): called as
    `tile(x, at, window, w, panel, bias, scale, quant, y[, res])`, `panel` an int64."""
    if residual:

        @intrinsic
        def int8_tile_add(typingctx, x, at, window, w, panel, bias, scale, quant, y, res):
            return types.void(x, at, window, w, types.int64, bias, scale, quant, y, res), codegen

        return int8_tile_add

    @intrinsic
    def int8_tile(typingctx, x, at, window, w, panel, bias, scale, quant, y):
        return types.void(x, at, window, w, types.int64, bias, scale, quant, y), codegen

    return int8_tile


def requantize_store(builder: ir.IRBuilder, arrays: list, panel_index: ir.Value, accs: list, residual: bool) -> None:
    """The tile's store (QLinearConv's requantization, QLinearAdd's with a residual) on sums already made:
    accs[r][j] points at pixel r's vector j of int32 sums (registers for `tile`, a tile's memory for AMX's,
    common/amx.py). `arrays` are the tile's arguments' data pointers, as `tile` is called."""
    pixels, vectors = len(accs), len(accs[0])
    n = accs[0][0].type.pointee.count
    ints, floats, bytes_ = ir.VectorType(I32, n), ir.VectorType(ir.FloatType(), n), ir.VectorType(I8, n)
    ats, biases, scales, quant, ys = arrays[1], arrays[5], arrays[6], arrays[7], arrays[8]
    first_channel = builder.mul(panel_index, ir.Constant(I64, vectors * n))
    q = [splat(builder, load_at(builder, quant, k), floats) for k in range(6 if residual else 3)]
    low, high, zero = q[:3]
    floor, ceiling = ir.Constant(floats, [0.0] * n), ir.Constant(floats, [255.0] * n)
    declare = partial(cgutils.get_or_insert_function, builder.module)
    rint = declare(ir.FunctionType(floats, [floats]), f"llvm.rint.v{n}f32")
    fma_ = declare(ir.FunctionType(floats, [floats] * 3), f"llvm.fma.v{n}f32")
    bias_v = builder.bitcast(builder.gep(biases, [first_channel]), ints.as_pointer())
    scale_v = builder.bitcast(builder.gep(scales, [first_channel]), floats.as_pointer())
    y_bytes = builder.gep(builder.bitcast(ys, I8.as_pointer()), [first_channel])
    r_bytes = builder.gep(builder.bitcast(arrays[9], I8.as_pointer()), [first_channel]) if residual else None
    channel = [
        (load_at(builder, bias_v, j, align=4), load_at(builder, scale_v, j, align=4)) for j in range(vectors)
    ]  # each vector of channels' bias and scale, loaded once
    # Every pixel's residual before the first store: y is the residual's place (the output is written over
    # it), and a short last tile repeats its last pixel, whose residual must be read before either copy
    # is written.
    others = [[None] * vectors for _ in range(pixels)]
    for r in range(pixels if residual else 0):
        res_at = load_at(builder, ats, 2 * pixels + r)
        for j in range(vectors):
            at = builder.gep(r_bytes, [builder.add(res_at, ir.Constant(I64, j * n))])
            others[r][j] = builder.load(builder.bitcast(at, bytes_.as_pointer()), align=1)
    for r in range(pixels):
        out_at = load_at(builder, ats, pixels + r)
        for j in range(vectors):
            bias, scale = channel[j]
            v = builder.fmul(builder.sitofp(builder.add(builder.load(accs[r][j]), bias), floats), scale)
            v = _clamp(builder, v, low, high)
            v = builder.fadd(builder.call(rint, [v]), zero)
            lane = ir.Constant(I64, j * n)
            if residual:
                other = builder.uitofp(others[r][j], floats)
                v = builder.call(fma_, [v, q[3], builder.call(fma_, [other, q[4], q[5]])])
                v = _clamp(builder, builder.call(rint, [v]), floor, ceiling)
            out = builder.trunc(builder.fptoui(v, ints), bytes_)
            at = builder.gep(y_bytes, [builder.add(out_at, lane)])
            builder.store(out, builder.bitcast(at, bytes_.as_pointer()), align=1)


def _clamp(builder: ir.IRBuilder, v: ir.Value, low: ir.Value, high: ir.Value) -> ir.Value:
    """max then min, as x86's maxps and minps (ONNX Runtime's order)."""
    v = builder.select(builder.fcmp_ordered(">", v, low), v, low)
    return builder.select(builder.fcmp_ordered("<", v, high), v, high)


@cache
def chains(count: int):
    """`count` independent dot4 chains on vectors held in registers: the int8 peak's kernel, an intrinsic
    called as `kernel(reps)` -> int64 (the sum of the lanes, so nothing is optimised away)."""
    target = isa.target()
    name, n = instruction(target), target.vector_floats
    vector = ir.VectorType(I32, n)

    @intrinsic
    def dot4_chains(typingctx, reps):
        def codegen(context, builder, signature, args):
            accs = [cgutils.alloca_once_value(builder, ir.Constant(vector, [j] * n)) for j in range(count)]
            a = ir.Constant(vector, [0x01020304] * n)
            with cgutils.for_range(builder, args[0]):
                for acc in accs:  # the accumulator is its own second operand: nothing for LLVM to hoist
                    value = builder.load(acc)
                    builder.store(dot4(builder, value, a, value, name), acc)
            total = builder.load(accs[0])
            for acc in accs[1:]:
                total = builder.add(total, builder.load(acc))
            lanes_ = [builder.extract_element(total, ir.Constant(I32, i)) for i in range(n)]
            out = lanes_[0]
            for lane in lanes_[1:]:
                out = builder.add(out, lane)
            return builder.sext(out, I64)

        return types.int64(reps), codegen

    return dot4_chains


def source_digest() -> str:
    return digest(__file__)
