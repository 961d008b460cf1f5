"""Fixed workloads timed next to a stage, so its latency can be read as a ratio that survives a slow phase.

A ratio only cancels the machine's drift if the calibration is slowed by what slows the stage:
- `scalar`: a dependent chain of scalar multiply-adds, no fastmath: what stage 01's loops are bound by
  (the latency of one floating-point add after another), which a vector GEMM does not feel the same way;
- `vector`: numpy's sgemm and a numba fastmath dot product, one thread: what stages 02-05 are bound by;
- `threads`: the same fastmath dot product on each of N threads at once (numba's pool, as the stages use
  it), next to the same work on one thread. A busy second core slows a 2-thread stage and this alike, and
  the pair tells whether the machine is contended: uncontended, N threads take as long as one.
"""

import time
from dataclasses import dataclass, field

import numpy as np
from numba import njit, prange
from threadpoolctl import threadpool_limits

from common import jit_cache
from common.paths import ROOT

jit_cache.install(ROOT)  # these kernels are cached beside this file: checksummed like every stage's

# Below this, N threads ran the per-thread work more than a third slower than one thread did: another
# process holds a core (measured on Zen 5, 2 cores: 0.96-1.0 quiet, 0.24-0.55 with one busy loop beside it).
BUSY_EFFICIENCY = 0.75


@njit(cache=True)
def scalar_chain(a, b, reps):
    """One accumulator, no fastmath: each add waits for the one before, as in stage 01's dot products."""
    total = np.float32(0.0)
    for _ in range(reps):
        for i in range(a.size):
            total += a[i] * b[i]
    return total


@njit(fastmath=True, cache=True)
def vector_dot(a, b, reps):
    """Vectorized dot products over two L2-resident arrays."""
    total = np.float32(0.0)
    for _ in range(reps):
        for i in range(a.size):
            total += a[i] * b[i]
    return total


@njit(fastmath=True, parallel=True, cache=True)
def vector_dot_on_each(a, b, reps, threads):
    """vector_dot's work once on each of `threads` threads, each on its own copy of the data."""
    out = np.zeros(threads, np.float32)
    for t in prange(threads):
        out[t] = vector_dot(a[t], b[t], reps)
    return out.sum()


def _aligned(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    # On a cache line, always: where numpy's allocator happened to put it changed the dot kernel's speed
    # by 1.6x from one process to the next (a 16-float load straddling two lines costs two).
    n = int(np.prod(shape))
    raw = np.empty(n + 16, np.float32)
    start = (-raw.ctypes.data % 64) // 4
    out = raw[start : start + n].reshape(shape)
    out[...] = rng.standard_normal(shape, dtype=np.float32)
    return out


def _times(fn, *args, repeats: int = 3) -> list[float]:
    """Seconds of `repeats` calls of fn(*args)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t0)
    return times


def _best(fn, *args) -> float:
    return min(_times(fn, *args))


def _median(fn, *args) -> float:
    return float(np.median(_times(fn, *args)))


THREADS_REPS = 15_000


@dataclass
class Reading:
    seconds: float  # what a stage's latency is divided by
    efficiency: float | None = None  # `threads`: one thread's time / N threads' time for the same per-thread work


@dataclass
class Calibration:
    """`Calibration(kind, threads)()` times the workload once (each part the best of three)."""

    kind: str  # scalar | vector | threads
    threads: int = 1
    readings: list[Reading] = field(default_factory=list)

    def __post_init__(self) -> None:
        rng = np.random.default_rng(0)
        self.m = rng.standard_normal((512, 512), dtype=np.float32)
        self.v = _aligned(rng, (max(self.threads, 1), 2**15))
        scalar_chain(self.v[0, :64], self.v[0, :64], 1)
        vector_dot(self.v[0], self.v[0], 1)
        if self.kind == "threads":
            from numba import set_num_threads

            set_num_threads(self.threads)
            vector_dot_on_each(self.v, self.v, 1, self.threads)

    def __call__(self) -> Reading:
        if self.kind == "scalar":
            reading = Reading(_best(scalar_chain, self.v[0], self.v[0], 60))
        elif self.kind == "vector":
            with threadpool_limits(limits=1, user_api="blas"):
                gemm = _best(np.matmul, self.m, self.m)
            reading = Reading(float(np.sqrt(gemm * _best(vector_dot, self.v[0], self.v[0], 1000))))
        else:
            from numba import set_num_threads

            set_num_threads(self.threads)
            # ~10 ms each, and the median: a job shorter than the scheduler's time slice, or the best of a
            # few, slips between another process's slices and hides that a core is taken.
            one = _median(vector_dot, self.v[0], self.v[0], THREADS_REPS)
            many = _median(vector_dot_on_each, self.v, self.v, THREADS_REPS, self.threads)
            reading = Reading(many, one / many)
        self.readings.append(reading)
        return reading


def busy(efficiencies: list[float]) -> bool:
    """True when the threads' calibration says another process holds a core (median efficiency)."""
    return bool(efficiencies) and float(np.median(efficiencies)) < BUSY_EFFICIENCY
