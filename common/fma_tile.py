"""The fp32 micro-kernel of stages 08 and 09: an outer-product tile of sums held in vector registers; and
the bench's FMA peak kernel, `chains(count)`, written the same way.

`tile(pixels, vectors, stored, relu, residual)` is a numba intrinsic (LLVM IR, common/llvm_ir.py), called
from the generated conv kernels as

    tile(x, at, window, w, bias, y[, res])

x       float32, the stored input, flat; at[0, r] is where pixel r's window starts in it
window  (taps, row, length): `taps` runs of `length` floats (a kernel row's taps x input channels,
        contiguous channels-last), `row` floats apart
w       the panel: (taps x length, vectors x lanes) float32, the weights in the order the tile reads them
bias    float32, the panel's output channels' biases
y, res  float32, flat, from the panel's first channel: pixel r's channels go to y[at[1, r]:], its
        residual is res[at[2, r]:]

The sum: per input float, the panel's `vectors` vectors of weights loaded once, each pixel's float
broadcast to every lane, pixels x vectors multiply-adds into accumulators that stay in registers. Then
the store on those registers: + bias [+ residual] [ReLU], the first `stored` channels into y. Every
pixel's residual is read before the first store: y is the residual's place (the output is written over
it), and a short last tile repeats its last pixel, whose residual must be read before either copy is
written.

The multiply-add is an fmul and an fadd that LLVM may contract (`contract`): one FMA instruction where
the target has one, a multiply and an add where it has not. The sum runs in the order the scalar code of
earlier stages wrote it: tap by tap, float by float.
"""

from functools import cache

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from common.llvm_ir import I64, data, digest, lanes, load_at, splat

CONTRACT = ("contract",)



@cache
def tile(pixels: int, vectors: int, stored: int, relu: bool, residual: bool):
    """The intrinsic: `pixels` output pixels x `vectors` vectors of output channels (the panel), the first
    `stored` of its channels stored (fewer than the panel only in a conv's short last panel)."""
    n = lanes()
    floats = ir.VectorType(ir.FloatType(), n)

    def codegen(context, builder, signature, args):
        arrays = [data(context, builder, t, v) for t, v in zip(signature.args, args, strict=True)]
        xs, ats, win, ws, biases, ys = arrays[:6]
        rs = arrays[6] if residual else None
        accs = [[cgutils.alloca_once_value(builder, ir.Constant(floats, None)) for _ in range(vectors)]
                for _ in range(pixels)]  # fmt: skip  (zeroed here, at each call; LLVM keeps them in registers)
        taps, row_floats, length = (load_at(builder, win, k) for k in range(3))
        starts = [load_at(builder, ats, r) for r in range(pixels)]
        w_vectors = builder.bitcast(ws, floats.as_pointer())
        with cgutils.for_range(builder, taps) as tap_loop:
            tap = tap_loop.index
            offset = builder.mul(tap, row_floats)
            first_row = builder.mul(tap, length)
            with cgutils.for_range(builder, length) as float_loop:
                i = float_loop.index
                k = builder.mul(builder.add(first_row, i), ir.Constant(I64, vectors))
                weights = [load_at(builder, w_vectors, builder.add(k, ir.Constant(I64, j)), align=4)
                           for j in range(vectors)]  # fmt: skip
                for r in range(pixels):
                    p = splat(builder, load_at(builder, xs, builder.add(starts[r], builder.add(offset, i))), floats)
                    for j in range(vectors):
                        product = builder.fmul(p, weights[j], flags=CONTRACT)
                        builder.store(builder.fadd(builder.load(accs[r][j]), product, flags=CONTRACT), accs[r][j])
        # The store.
        whole = stored // n  # vectors stored whole; a short last panel's remainder lane by lane
        bias = [_load(builder, biases, j, n, stored, floats) for j in range(vectors)]
        others = [[None] * vectors for _ in range(pixels)]
        for r in range(pixels if residual else 0):
            base = builder.gep(rs, [load_at(builder, ats, 2 * pixels + r)])
            others[r] = [_load(builder, base, j, n, stored, floats) for j in range(vectors)]
        zero = ir.Constant(floats, [0.0] * n)
        for r in range(pixels):
            base = builder.gep(ys, [load_at(builder, ats, pixels + r)])
            for j in range(min(vectors, -(-stored // n))):
                v = builder.fadd(builder.load(accs[r][j]), bias[j])
                if residual:
                    v = builder.fadd(v, others[r][j])
                if relu:
                    v = builder.select(builder.fcmp_ordered(">", v, zero), v, zero)
                if j < whole:
                    at = builder.gep(base, [ir.Constant(I64, j * n)])
                    builder.store(v, builder.bitcast(at, floats.as_pointer()), align=4)
                else:
                    for lane in range(stored - j * n):
                        at = builder.gep(base, [ir.Constant(I64, j * n + lane)])
                        builder.store(builder.extract_element(v, ir.Constant(I64, lane)), at)
        return context.get_dummy_value()

    if residual:

        @intrinsic
        def fma_tile_add(typingctx, x, at, window, w, bias, y, res):
            return types.void(x, at, window, w, bias, y, res), codegen

        return fma_tile_add

    @intrinsic
    def fma_tile(typingctx, x, at, window, w, bias, y):
        return types.void(x, at, window, w, bias, y), codegen

    return fma_tile


def _load(builder: ir.IRBuilder, base: ir.Value, j: int, n: int, stored: int, floats: ir.VectorType) -> ir.Value:
    """Vector j of a row of `stored` floats at base: a whole vector, or the remainder lane by lane (the
    rest of the lanes zero: nothing past the row is read)."""
    if (j + 1) * n <= stored:
        return builder.load(builder.bitcast(builder.gep(base, [ir.Constant(I64, j * n)]), floats.as_pointer()), align=4)
    v = ir.Constant(floats, [0.0] * n)
    for lane in range(max(0, stored - j * n)):
        v = builder.insert_element(v, load_at(builder, base, j * n + lane), ir.Constant(I64, lane))
    return v


@cache
def chains(count: int):
    """`count` vectors of independent `acc = acc * m + c` chains held in registers: the FMA peak's kernel, an
    intrinsic called as `kernel(reps, m, c)` -> float32 (the sum of the lanes, so nothing is optimised away).

    Vectors of the target's width written out, not left to LLVM's loop vectorizer: on Intel's AVX-512 cores
    LLVM prefers 256-bit vectors for loops it vectorizes itself (its `prefer-256-bit` tuning), which measured
    half the peak of the zmm FMAs that 08's tile runs."""
    n = lanes()
    floats = ir.VectorType(ir.FloatType(), n)

    @intrinsic
    def fma_chains(typingctx, reps, m, c):
        def codegen(context, builder, signature, args):
            count_, m_, c_ = args
            ms, cs = splat(builder, m_, floats), splat(builder, c_, floats)
            accs = [cgutils.alloca_once_value(builder, ir.Constant(floats, [float(v * n + i) for i in range(n)]))
                    for v in range(count)]  # fmt: skip  (lane i of vector v starts at v * n + i)
            with cgutils.for_range(builder, count_):
                for acc in accs:
                    product = builder.fmul(builder.load(acc), ms, flags=CONTRACT)
                    builder.store(builder.fadd(product, cs, flags=CONTRACT), acc)
            total = builder.load(accs[0])
            for acc in accs[1:]:
                total = builder.fadd(total, builder.load(acc))
            out = builder.extract_element(total, ir.Constant(I64, 0))
            for i in range(1, n):
                out = builder.fadd(out, builder.extract_element(total, ir.Constant(I64, i)))
            return out

        return types.float32(types.int64, types.float32, types.float32), codegen

    return fma_chains


def source_digest() -> str:
    return digest(__file__)
