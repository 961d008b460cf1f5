"""What the kernels written as LLVM IR share (common/fma_tile.py, vnni.py, winograd_ir.py).

numba has no vector types, so the few kernels that need vectors it will not make by itself are numba
intrinsics: LLVM IR built with llvmlite and inlined into the numba function that calls them.
"""

import hashlib
from pathlib import Path

from llvmlite import ir

from common import isa

I8, I32, I64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)


def lanes() -> int:
    """32-bit lanes per vector register on the target numba compiles for (common.isa): floats or int32 sums,
    16 with AVX-512, 8 with AVX2, 4 on NEON and SSE."""
    return isa.target().vector_floats


def data(context, builder: ir.IRBuilder, typ, value) -> ir.Value:
    """The pointer to a numba array's first element."""
    return context.make_array(typ)(context, builder, value).data


def load_at(builder: ir.IRBuilder, pointer: ir.Value, k: int | ir.Value, align: int | None = None) -> ir.Value:
    """pointer[k]."""
    index = ir.Constant(I64, k) if isinstance(k, int) else k
    return builder.load(builder.gep(pointer, [index]), align=align)


def splat(builder: ir.IRBuilder, scalar: ir.Value, vector: ir.VectorType) -> ir.Value:
    """The scalar in every lane of the vector (a broadcast)."""
    one = builder.insert_element(ir.Constant(vector, None), scalar, ir.Constant(I32, 0))
    zeros = ir.Constant(ir.VectorType(I32, vector.count), [0] * vector.count)
    return builder.shuffle_vector(one, ir.Constant(vector, None), zeros)


def digest(file: str) -> str:
    """The sha256 of a module of IR kernels and of this file: generated code that uses the module names it,
    so numba's cache (keyed on the generated source) never serves code built from another version of them."""
    return hashlib.sha256(Path(file).read_bytes() + Path(__file__).read_bytes()).hexdigest()[:16]
