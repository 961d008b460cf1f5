"""The machine's limits, measured in the same run as everything else, at one thread and at all cores.

- The FMA peak: a numba kernel of independent multiply-adds held in vector registers (half the target's
  registers of chains, so no FMA waits for another), one copy per thread, for the ISA numba compiles for;
  its vectors are written out as LLVM IR of the target's width (common/fma_tile.py `chains`), as 08's tile
  is, so that the peak is that of the widest FMA, whatever width LLVM would pick for a loop by itself.
  Nothing that multiplies and adds floats can go faster on this core, so it is "the peak" of the charts
  and tables: no engine shows more than 100%.
- The int8 peak: the same for the int8 stage's multiply-add (common/vnni.py `dot4`: AVX-512 VNNI's
  `vpdpbusd`, 4 byte products per int32 lane, where the target has it), counted as 2 operations per
  multiply-add as FLOPs are; int8 rows are drawn against it.
- The AMX peak, where the CPU has Intel's matrix unit and Linux lets this process use it (common/amx.py):
  four `tdpbusd` chains on tiles in registers; stage 11's rows and the int8 peers are drawn against it.
- numpy's sgemm on 2048x2048 matrices: what a BLAS gets on a real GEMM, drawn as a second line. Tuned
  engines beat it where the BLAS does not know the CPU (OpenBLAS on AMD Zen 5 ran at about half the FMA
  peak here), which is why it is not the limit.
"""

import time

import numpy as np
from numba import njit, prange, set_num_threads
from threadpoolctl import threadpool_limits

from common import amx, fma_tile, isa, vnni

N = 2048
FLOPS = 2 * N**3
# Vectors of accumulators updated per pass, all independent: half the target's vector registers (common.isa),
# enough to keep every FMA unit busy through its latency (AVX-512: 16 zmm of 16 floats; AVX2: 8 ymm of 8;
# more than the registers hold would measure spills, not the peak).
FMA_VECTORS = isa.target().registers // 2
CHAINS = FMA_VECTORS * isa.target().vector_floats  # floats
_fma_chains = fma_tile.chains(FMA_VECTORS)


# The peak kernels are not cached: their code comes from common/fma_tile.py, vnni.py and amx.py, which
# numba's cache (keyed on this file) would not see change; compiling them takes a second.
@njit
def fma_chains(reps, m, c):
    """CHAINS independent chains of `acc = acc * m + c`, reps times: 2 * CHAINS * reps FLOP.

    The vectors are written out in LLVM IR (common/fma_tile.py `chains`); tests/test_peak.py reads the
    assembly: packed FMAs on the target's own registers, no memory access in the loop."""
    return _fma_chains(reps, m, c)


@njit(parallel=True)
def fma_chains_on_each(reps, m, c, threads):
    out = np.zeros(threads, np.float32)
    for t in prange(threads):
        out[t] = fma_chains(reps, m, c)
    return out.sum()


def _fastest(run, repeats: int) -> float:
    """The shortest of `repeats` timed calls of `run()`, in seconds (the caller has warmed it up)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
    return best


def fma_gflops(threads: int, repeats: int = 5, reps: int = 400_000) -> float:
    """The best of `repeats` runs (about 0.1 s each on a fast core)."""
    m, c = np.float32(0.9999), np.float32(0.0001)
    set_num_threads(threads)
    fma_chains_on_each(10, m, c, threads)  # compile or load, start the pool
    best = _fastest(lambda: fma_chains_on_each(reps, m, c, threads), repeats)
    return 2 * CHAINS * reps * threads / best / 1e9


DOT4_CHAINS = FMA_VECTORS  # vectors of int32 accumulators, as many as the FMA peak's
_dot4_chains = vnni.chains(DOT4_CHAINS)


@njit
def dot4_chains(reps):
    """DOT4_CHAINS independent chains of 4-byte dot products into int32 lanes: 8 * lanes * DOT4_CHAINS * reps
    operations (4 multiply-adds per lane, 2 operations each)."""
    return _dot4_chains(reps)


@njit(parallel=True)
def dot4_chains_on_each(reps, threads):
    out = np.zeros(threads, np.int64)
    for t in prange(threads):
        out[t] = dot4_chains(reps)
    return out.sum()


def int8_gops(threads: int, repeats: int = 5, reps: int = 2_000_000) -> float:
    set_num_threads(threads)
    dot4_chains_on_each(10, threads)
    best = _fastest(lambda: dot4_chains_on_each(reps, threads), repeats)
    return 8 * vnni.lanes() * DOT4_CHAINS * reps * threads / best / 1e9


_tdpbusd_chains = amx.chains() if amx.available() is None else None


@njit
def tdpbusd_chains(scratch, reps):
    _tdpbusd_chains(scratch, reps)


@njit(parallel=True)
def tdpbusd_chains_on_each(scratch, reps, threads):
    for t in prange(threads):
        tdpbusd_chains(scratch[t], reps)


def amx_gops(threads: int, repeats: int = 5, reps: int = 200_000) -> float:
    """AMX's int8 peak: 4 independent tdpbusd chains on tiles in registers (16 x 16 x 64 multiply-adds each),
    per thread; call only where `amx.available()` is None."""
    set_num_threads(threads)
    scratch = np.ones((threads, 8192), np.uint8)
    tdpbusd_chains_on_each(scratch, 10, threads)
    best = _fastest(lambda: tdpbusd_chains_on_each(scratch, reps, threads), repeats)
    return 2 * amx.ROWS * amx.ROWS * amx.ROW_BYTES * amx.PEAK_TILES * reps * threads / best / 1e9


def gemm_gflops(threads: int, repeats: int = 5, n: int = N) -> float:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), np.float32)
    with threadpool_limits(limits=threads, user_api="blas"):
        np.matmul(a, b, out=out)  # warm up: page in, pick kernels, start threads
        best = _fastest(lambda: np.matmul(a, b, out=out), repeats)
    return 2 * n**3 / best / 1e9


def _int8_unit(limit: dict, unit: str | None) -> str:
    """The int8 peak a row is drawn against: its stage's unit ("vnni" for 10, "amx" for 11), or for a
    peer the fastest the machine has and the bench measured (an engine may use it). Where AMX was not
    measured (no AMX: 11 is a skipped row there) every int8 row is drawn against the VNNI peak."""
    measured = "amx_gops_1_thread" in limit
    return "amx" if measured and unit in ("amx", None) else "vnni"


def peak_of(limit: dict, precision: str, threads: int, unit: str | None = None) -> float:
    """The limit a row of this precision ("fp32" or "int8") at this thread count is drawn against, from
    `measure`'s results (more than one thread: the all-cores figure)."""
    every = threads > 1
    if precision == "int8":
        key = "amx_gops" if _int8_unit(limit, unit) == "amx" else "int8_gops"
        return limit[f"{key}_all_threads" if every else f"{key}_1_thread"]
    return limit["gflops_all_threads" if every else "gflops_1_thread"]


def name_of(limit: dict, precision: str, unit: str | None = None) -> str:
    if precision != "int8":
        return "FMA peak"
    return "AMX peak" if _int8_unit(limit, unit) == "amx" else "int8 peak"


def measure(cores: int, repeats: int = 5) -> dict:
    fma_one = fma_gflops(1, repeats)
    fma_all = fma_gflops(cores, repeats) if cores > 1 else fma_one
    int8_one = int8_gops(1, repeats)
    int8_all = int8_gops(cores, repeats) if cores > 1 else int8_one
    matrix = {}
    if amx.available() is None:
        one = amx_gops(1, repeats)
        matrix = {
            "amx_method": f"numba kernel of 4 independent chains of AMX tdpbusd per thread, best of {repeats}",
            "amx_gops_1_thread": round(one, 1),
            "amx_gops_all_threads": round(amx_gops(cores, repeats) if cores > 1 else one, 1),
        }
    gemm_one = gemm_gflops(1, repeats)
    gemm_all = gemm_gflops(cores, repeats) if cores > 1 else gemm_one
    return {
        "method": f"numba kernel of {CHAINS} independent FMA chains per thread, best of {repeats}",
        "isa": isa.target().name,
        "gflops_1_thread": round(fma_one, 1),
        "gflops_all_threads": round(fma_all, 1),
        "threads_all": cores,
        "int8_method": f"numba kernel of {DOT4_CHAINS} independent chains of {vnni.describe()} per thread, "
        f"best of {repeats}",
        "int8_gops_1_thread": round(int8_one, 1),
        "int8_gops_all_threads": round(int8_all, 1),
        **matrix,
        # A faster unit than the peaks measured, which an engine may use (AMX where this process may not).
        "int8_unmeasured": "AMX" if "amx-int8" in isa.host_matrix_units() and not matrix else None,
        "sgemm_method": f"numpy sgemm {N}x{N}x{N}, best of {repeats}",
        "sgemm_gflops_1_thread": round(gemm_one, 1),
        "sgemm_gflops_all_threads": round(gemm_all, 1),
    }
