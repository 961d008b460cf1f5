"""Winograd's tile transforms as vector code: out = M d M^T on a vector of channels at once.

Stage 09's transforms are sums of an input tile's values times small constants, the same for every channel,
so they vectorise across channels: one vector of `lanes` channels per value. numba's code for them stays
scalar (LLVM's loop vectorizer will not prove that the 36 loads and 36 stores of a tile do not overlap), so
they are written here as LLVM IR, as common/vnni.py writes stage 10's tile: a numba intrinsic, built once
per matrix and epilogue, and called from the generated code as

    kernel(src, ats, t, dst, ch)                         the input transform (V = B^T d B)
    kernel(src, ats, t, dst, ch, bias[, res])            the output transform (Y = A^T m A), + bias
                                                          [+ residual] [, ReLU]

src, dst, res  float32, flat
ats            int64 (tiles, 3, points x points): ats[t, 0, k] is where input value k of tile t starts in
               src (k = row x points + column), ats[t, 1, k] where output value k goes in dst (negative:
               outside the layer, not stored), ats[t, 2, k] where its residual is in res
ch             the first of the `lanes` channels this call computes (added to every place above)
bias           float32, one per channel: bias[ch:] is added to every output value
"""

from functools import cache

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from common.llvm_ir import I64, data, digest, lanes


def _combination(builder: ir.IRBuilder, row: tuple, values: list, vector: ir.VectorType) -> ir.Value:
    """sum(k * value) over the row's nonzero coefficients, as the scalar code writes it."""
    total = None
    for k, value in zip(row, values, strict=True):
        if not k:
            continue
        term = value if abs(k) == 1 else builder.fmul(value, ir.Constant(vector, [float(abs(k))] * vector.count))
        if total is None:
            total = builder.fsub(ir.Constant(vector, [0.0] * vector.count), term) if k < 0 else term
        else:
            total = builder.fsub(total, term) if k < 0 else builder.fadd(total, term)
    return total if total is not None else ir.Constant(vector, [0.0] * vector.count)


@cache
def transform(matrix: tuple, bias: bool = False, residual: bool = False, relu: bool = False):
    """The intrinsic computing out = M d M^T for a tile d of points x points values (M: rows x points, its
    entries integers), each value a vector of channels; with `bias`, the output transform's epilogue."""
    n = lanes()
    vector = ir.VectorType(ir.FloatType(), n)
    rows, points = len(matrix), len(matrix[0])
    width = points * points  # a tile's entries in ats

    def codegen(context, builder, signature, args):
        src, ats, dst = (data(context, builder, signature.args[i], args[i]) for i in (0, 1, 3))
        t, ch = args[2], args[4]
        base = builder.mul(t, ir.Constant(I64, 3 * width))

        def place(kind: int, k: int) -> ir.Value:
            return builder.load(builder.gep(ats, [builder.add(base, ir.Constant(I64, kind * width + k))]))

        def at(pointer: ir.Value, offset: ir.Value) -> ir.Value:
            return builder.bitcast(builder.gep(pointer, [builder.add(offset, ch)]), vector.as_pointer())

        d = [[builder.load(at(src, place(0, i * points + j)), align=4) for j in range(points)]
             for i in range(points)]  # fmt: skip
        e = [[_combination(builder, matrix[a], [d[i][j] for i in range(points)], vector) for j in range(points)]
             for a in range(rows)]  # fmt: skip
        out = [[_combination(builder, matrix[b], e[a], vector) for b in range(rows)] for a in range(rows)]
        if bias:
            b_data = data(context, builder, signature.args[5], args[5])
            bias_v = builder.load(builder.bitcast(builder.gep(b_data, [ch]), vector.as_pointer()), align=4)
            res_data = data(context, builder, signature.args[6], args[6]) if residual else None
            zero = ir.Constant(vector, [0.0] * n)
            for a in range(rows):
                for b in range(rows):
                    k = a * rows + b
                    where = place(1, k)
                    inside = builder.icmp_signed(">=", where, ir.Constant(I64, 0))
                    with builder.if_then(inside):
                        v = builder.fadd(out[a][b], bias_v)
                        if residual:
                            v = builder.fadd(v, builder.load(at(res_data, place(2, k)), align=4))
                        if relu:
                            v = builder.select(builder.fcmp_ordered(">", v, zero), v, zero)
                        builder.store(v, at(dst, where), align=4)
        else:
            for a in range(rows):
                for b in range(rows):
                    builder.store(out[a][b], at(dst, place(1, a * rows + b)), align=4)
        return context.get_dummy_value()

    if residual:

        @intrinsic
        def winograd_out_add(typingctx, src, ats, t, dst, ch, bias, res):
            return types.void(src, ats, types.int64, dst, types.int64, bias, res), codegen

        return winograd_out_add
    if bias:

        @intrinsic
        def winograd_out(typingctx, src, ats, t, dst, ch, bias):
            return types.void(src, ats, types.int64, dst, types.int64, bias), codegen

        return winograd_out

    @intrinsic
    def winograd_in(typingctx, src, ats, t, dst, ch):
        return types.void(src, ats, types.int64, dst, types.int64), codegen

    return winograd_in


def source_digest() -> str:
    return digest(__file__)
