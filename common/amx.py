"""A matrix unit: Intel AMX's `tdpbusd`, the multiply of stage 11.

One instruction multiplies a tile of 16 rows x 64 uint8 (16 pixels' 64 input bytes) by a tile of 16 rows x
64 int8 (16 groups of 4 input channels, each for 16 output channels: VNNI's layout) and adds the products
into a tile of 16 x 16 int32 sums: 16,384 multiply-adds, where `vpdpbusd` does 64. The eight tile registers
(tmm0-7, 1 KiB each) are numba-invisible; LLVM reaches them through its `*.internal` AMX intrinsics, which
carry each tile's shape and let LLVM configure the tiles (`ldtilecfg`) itself. Linux hands a process the
tiles' 8 KiB of state only when asked (`arch_prctl(ARCH_REQ_XCOMP_PERM)`, `request()`); without that the
first tile instruction is a SIGILL.

- `available()`: why AMX cannot be used here, or None.
- `tile(pixels, vectors, residual)`: stage 10's tile (common/vnni.py) with its sums made by the matrix unit;
  called exactly as `vnni.tile` is. Its store is vnni's, on the sums stored from the tiles.
- `chains()`: independent `tdpbusd`s on tiles held in registers, for the bench's AMX peak (bench/peak.py).
"""

import ctypes
import platform
from functools import cache

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from common import isa, vnni
from common.llvm_ir import I8, I32, I64, data, digest, load_at, splat

I1, I16 = ir.IntType(1), ir.IntType(16)
PEAK_TILES = 4  # C tiles in `chains()`: 2 A x 2 B, the eight tile registers full
ROWS, ROW_BYTES = 16, 64  # every tile here: 16 rows of 64 bytes (A: pixels x bytes; B: words x 16 x 4; C)
_ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA, _SYS_ARCH_PRCTL = 0x1023, 18, 158


class _Tile(ir.Type):
    """LLVM's `x86_amx`, which llvmlite does not name."""

    def _to_string(self) -> str:
        return "x86_amx"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Tile)

    def __hash__(self) -> int:
        return hash("x86_amx")


TILE = _Tile()


@cache
def available() -> str | None:
    """None where stage 11 can run: numba compiles for a CPU with AMX-INT8 and Linux granted the tiles'
    state to this process. Otherwise the reason, in a few words."""
    if not isa.compiles_for("amx-int8"):
        return f"no AMX-INT8 on {isa.target().describe()}"
    if platform.system() != "Linux" or platform.machine().lower() not in isa.X86:
        return "AMX's tile state is requested from Linux on x86-64 only"
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA) != 0:
        return f"Linux refused AMX's tile state (arch_prctl errno {ctypes.get_errno()})"
    return None


def _require() -> None:
    """Asks Linux for the tiles' state (once per process) before any kernel here can run: code that uses
    them is made only after this."""
    why = available()
    if why is not None:
        raise RuntimeError(f"AMX kernel requested where it cannot run: {why}")


def _declare(builder: ir.IRBuilder, name: str, result: ir.Type, *args: ir.Type):
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(result, list(args)), name)


class _Ops:
    """The four AMX intrinsics a kernel here uses, every tile 16 x 64 bytes."""

    def __init__(self, builder: ir.IRBuilder) -> None:
        p = I8.as_pointer()
        self.builder = builder
        self._load = _declare(builder, "llvm.x86.tileloadd64.internal", TILE, I16, I16, p, I64)
        self._dot = _declare(builder, "llvm.x86.tdpbusd.internal", TILE, I16, I16, I16, TILE, TILE, TILE)
        self._store = _declare(builder, "llvm.x86.tilestored64.internal", ir.VoidType(), I16, I16, p, I64, TILE)
        self._zero = _declare(builder, "llvm.x86.tilezero.internal", TILE, I16, I16)
        self.shape = [ir.Constant(I16, ROWS), ir.Constant(I16, ROW_BYTES)]

    def load(self, at: ir.Value, stride: ir.Value) -> ir.Value:
        return self.builder.call(self._load, [*self.shape, at, stride])

    def dot(self, c: ir.Value, a: ir.Value, b: ir.Value) -> ir.Value:
        """c + a . b: tdpbusd (a's bytes unsigned, b's signed, int32 sums)."""
        return self.builder.call(self._dot, [*self.shape, ir.Constant(I16, ROW_BYTES), c, a, b])

    def store(self, at: ir.Value, stride: ir.Value, tile: ir.Value) -> None:
        self.builder.call(self._store, [*self.shape, at, stride, tile])

    def zero(self) -> ir.Value:
        return self.builder.call(self._zero, self.shape)


A_TILES = 72  # the most A tiles a window of the network has: layer4's 3x3 convs, 3 taps x 1536 bytes / 64


def _pack_window(builder: ir.IRBuilder, x_bytes, starts: list, row, length, runs, total) -> ir.Value:
    """The A tiles of the whole window for these ROWS pixels, in a buffer of the kernel's own (A_TILES KiB on
    its stack), copied only when the pixels are not the ones already there: a conv's items are a block's
    panels one after another (08's order, for all but the convs with the largest weights), and all of them
    read the same A tiles. Tile k's row r is pixel r's bytes [64 k, 64 k + 64) of its window's run (tap,
    run) = divmod(k, runs), by a masked load: a run's last bytes may be fewer, the rest zero."""
    chunk = ir.VectorType(I8, ROW_BYTES)
    starts_v = ir.VectorType(I64, ROWS)
    a_mem = cgutils.alloca_once(builder, ir.ArrayType(chunk, A_TILES * ROWS))
    a_mem.align = 64
    packed_for = cgutils.alloca_once(builder, starts_v)
    with builder.goto_entry_block():  # nothing packed yet, at each call of the kernel
        builder.store(ir.Constant(starts_v, [-1] * ROWS), packed_for)
    wanted = ir.Constant(starts_v, None)
    for r, at in enumerate(starts):
        wanted = builder.insert_element(wanted, at, ir.Constant(I32, r))
    same = builder.icmp_signed("==", wanted, builder.load(packed_for))
    all_same = builder.icmp_unsigned("==", builder.bitcast(same, ir.IntType(ROWS)), ir.Constant(ir.IntType(ROWS), -1))
    masked_load = _declare(builder, "llvm.masked.load.v64i8.p0v64i8", chunk, chunk.as_pointer(), I32,
                           ir.VectorType(I1, ROW_BYTES), chunk)  # fmt: skip
    lane = ir.Constant(ir.VectorType(I64, ROW_BYTES), list(range(ROW_BYTES)))
    zeros = ir.Constant(chunk, [0] * ROW_BYTES)
    before = builder.block
    pack, packed = builder.append_basic_block("amx.pack"), builder.append_basic_block("amx.packed")
    some = builder.icmp_signed(">", total, ir.Constant(I64, 0))
    builder.cbranch(builder.and_(builder.not_(all_same), some), pack, packed)
    builder.position_at_end(pack)
    k = builder.phi(I64)
    tap, run = builder.udiv(k, runs), builder.urem(k, runs)
    first = builder.mul(run, ir.Constant(I64, ROW_BYTES))
    mask = builder.icmp_unsigned("<", lane, splat(builder, builder.sub(length, first), lane.type))
    offset = builder.add(builder.mul(tap, row), first)
    for r in range(ROWS):
        at = builder.bitcast(builder.gep(x_bytes, [builder.add(starts[r], offset)]), chunk.as_pointer())
        slot = builder.add(builder.mul(k, ir.Constant(I64, ROWS)), ir.Constant(I64, r))
        builder.store(builder.call(masked_load, [at, ir.Constant(I32, 1), mask, zeros]),
                      builder.gep(a_mem, [ir.Constant(I32, 0), slot]))  # fmt: skip
    following = builder.add(k, ir.Constant(I64, 1))
    k.add_incoming(ir.Constant(I64, 0), before)
    k.add_incoming(following, builder.block)
    builder.cbranch(builder.icmp_signed("<", following, total), pack, packed)
    builder.position_at_end(packed)
    builder.store(wanted, packed_for)
    return a_mem


@cache
def tile(pixels: int, vectors: int, residual: bool):
    """The int8 micro-kernel on the matrix unit: 16 pixels x `vectors` x 16 output channels (the panel), a
    C tile of sums per 16 channels. Called as `tile(x, at, window, w, panel, bias, scale, quant, y[, res])`,
    every argument as for `vnni.tile` (its docstring), w in the same panels.

    The sum, per 64 bytes of a window's run (16 words of 4 input channels): each pixel's 64 bytes copied
    into a 1 KiB A tile in memory (a masked load: a run's last bytes may be fewer, the rest zero), loaded
    into a tile register; per 16 output channels, the panel's 16 words x 16 channels x 4 bytes loaded
    straight from the panel (16 rows, `vectors` x 64 bytes apart: the layout vpdpbusd reads is AMX's B
    tile) and one `tdpbusd` into that C tile. (A short run's B rows past its end are the next run's
    weights, or whatever follows the panel in the weight pool: they meet A's zero bytes.) Then the C tiles
    are stored, pixel by pixel in rows of the panel's int32 sums, and vnni's store requantizes them."""
    _require()
    assert pixels == ROWS, "an A tile is 16 pixels"
    n = isa.target().vector_floats
    assert n * 4 == ROW_BYTES, "a C tile's row is one vector of 16 int32 sums"
    ints = ir.VectorType(I32, n)

    def codegen(context, builder, signature, args):
        arrays = [data(context, builder, t, v) if isinstance(t, types.Array) else v
                  for t, v in zip(signature.args, args, strict=True)]  # fmt: skip
        xs, ats, win, ws = arrays[:4]
        panel_index = args[4]
        amx = _Ops(builder)
        x_bytes = builder.bitcast(xs, I8.as_pointer())
        taps, row, length = (load_at(builder, win, k) for k in range(3))
        starts = [load_at(builder, ats, r) for r in range(pixels)]
        words = builder.udiv(length, ir.Constant(I64, 4))
        runs = builder.udiv(builder.add(length, ir.Constant(I64, ROW_BYTES - 1)), ir.Constant(I64, ROW_BYTES))
        # A word's 4 bytes for every channel of the panel; as many bytes as a pixel's row of int32 sums.
        word_bytes = ir.Constant(I64, vectors * ROW_BYTES)
        panel_at = builder.mul(builder.mul(panel_index, builder.mul(taps, words)), word_bytes)
        w_bytes = builder.gep(builder.bitcast(ws, I8.as_pointer()), [panel_at])
        c_mem = cgutils.alloca_once(builder, ir.ArrayType(ints, pixels * vectors))
        c_mem.align = 64
        total = builder.mul(taps, runs)  # (tap, run) pairs: the A tiles of the window, ROWS pixels each
        a_mem = _pack_window(builder, x_bytes, starts, row, length, runs, total)
        # One loop over (tap, run) pairs, the C tiles carried in phis: tile registers cannot live in memory.
        before = builder.block
        start = [amx.zero() for _ in range(vectors)]
        loop, done = builder.append_basic_block("amx.sum"), builder.append_basic_block("amx.stored")
        builder.cbranch(builder.icmp_signed(">", total, ir.Constant(I64, 0)), loop, done)
        builder.position_at_end(loop)
        step = builder.phi(I64)
        sums = [builder.phi(TILE) for _ in range(vectors)]
        tap, run = builder.udiv(step, runs), builder.urem(step, runs)
        a_at = builder.bitcast(builder.gep(a_mem, [ir.Constant(I32, 0), builder.mul(step, ir.Constant(I64, ROWS))]),
                               I8.as_pointer())  # fmt: skip
        a = amx.load(a_at, ir.Constant(I64, ROW_BYTES))
        word = builder.add(builder.mul(tap, words), builder.mul(run, ir.Constant(I64, ROWS)))
        new = []
        for j in range(vectors):
            b_at = builder.gep(w_bytes, [builder.add(builder.mul(word, word_bytes), ir.Constant(I64, j * ROW_BYTES))])
            new.append(amx.dot(sums[j], a, amx.load(b_at, word_bytes)))
        following = builder.add(step, ir.Constant(I64, 1))
        builder.cbranch(builder.icmp_signed("<", following, total), loop, done)
        step.add_incoming(ir.Constant(I64, 0), before)
        step.add_incoming(following, builder.block)
        for phi, s, t in zip(sums, start, new, strict=True):
            phi.add_incoming(s, before)
            phi.add_incoming(t, builder.block)
        builder.position_at_end(done)
        final = []
        for j in range(vectors):
            phi = builder.phi(TILE)
            phi.add_incoming(start[j], before)
            phi.add_incoming(new[j], loop)
            final.append(phi)
        c_at = builder.bitcast(c_mem, I8.as_pointer())
        for j in range(vectors):
            amx.store(builder.gep(c_at, [ir.Constant(I64, j * ROW_BYTES)]), word_bytes, final[j])
        accs = [[builder.gep(c_mem, [ir.Constant(I32, 0), ir.Constant(I32, r * vectors + j)]) for j in range(vectors)]
                for r in range(pixels)]  # fmt: skip
        vnni.requantize_store(builder, arrays, panel_index, accs, residual)
        return context.get_dummy_value()

    return vnni.tile_intrinsic(codegen, residual)


@cache
def chains():
    """Four C tiles, each `tdpbusd`-ed with one of two A and two B tiles held in registers, `reps` times: the
    AMX peak's kernel, called as `kernel(scratch, reps)` (scratch: 8 KiB of uint8, the A and B tiles'
    bytes in its first 4 KiB, the C tiles written to the rest, so nothing is optimised away)."""
    _require()

    @intrinsic
    def tdpbusd_chains(typingctx, scratch, reps):
        def codegen(context, builder, signature, args):
            amx = _Ops(builder)
            at = builder.bitcast(data(context, builder, signature.args[0], args[0]), I8.as_pointer())
            stride = ir.Constant(I64, ROW_BYTES)
            kib = [builder.gep(at, [ir.Constant(I64, 1024 * k)]) for k in range(8)]
            a, b = [amx.load(kib[k], stride) for k in (0, 1)], [amx.load(kib[k], stride) for k in (2, 3)]
            start = [amx.zero() for _ in range(PEAK_TILES)]
            before = builder.block
            loop, done = builder.append_basic_block("amx.chains"), builder.append_basic_block("amx.done")
            builder.branch(loop)
            builder.position_at_end(loop)
            step = builder.phi(I64)
            sums = [builder.phi(TILE) for _ in range(PEAK_TILES)]
            new = [amx.dot(sums[k], a[k // 2], b[k % 2]) for k in range(PEAK_TILES)]
            following = builder.add(step, ir.Constant(I64, 1))
            builder.cbranch(builder.icmp_signed("<", following, args[1]), loop, done)
            step.add_incoming(ir.Constant(I64, 0), before)
            step.add_incoming(following, loop)
            for phi, s, t in zip(sums, start, new, strict=True):
                phi.add_incoming(s, before)
                phi.add_incoming(t, loop)
            builder.position_at_end(done)
            for k in range(PEAK_TILES):
                amx.store(kib[4 + k], stride, new[k])
            return context.get_dummy_value()

        return types.void(scratch, types.int64), codegen

    return tdpbusd_chains


def source_digest() -> str:
    return digest(__file__)
