"""The latency regression suite (`make regress`), apart from the correctness tests in tests/.

`make baseline` runs it with --write-baseline: it records this machine kind's ratios in
results/baseline.json instead of comparing with them.
"""

import time

import numba
import numpy as np
import pytest
from numba import njit
from threadpoolctl import threadpool_limits

from bench import machine, regression
from common.images import load_image
from common.paths import IMAGES_DIR
from common.weights import WeightStore

IMAGE = IMAGES_DIR / "cat.png"


def pytest_addoption(parser):
    parser.addoption("--write-baseline", action="store_true", help="record results/baseline.json for this machine")


@njit(fastmath=True, cache=True)
def calibration_kernel(a, b, reps):
    """A fixed numba workload: vectorized dot products over two L2-resident arrays."""
    total = np.float32(0.0)
    for _ in range(reps):
        for i in range(a.size):
            total += a[i] * b[i]
    return total


class Calibration:
    """Two fixed workloads timed next to every measurement: a numpy GEMM and a numba kernel (1 thread)."""

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self.m = rng.standard_normal((512, 512), dtype=np.float32)
        # On a cache line, always: where numpy's allocator happens to put it changed this kernel's speed by
        # 1.6x from one process to the next (a 16-float load straddling two lines costs two).
        raw = np.empty(2**15 + 16, np.float32)
        start = (-raw.ctypes.data % 64) // 4
        self.v = raw[start : start + 2**15]
        self.v[:] = rng.standard_normal(2**15, dtype=np.float32)
        calibration_kernel(self.v, self.v, 1)
        self.gemm_s: list[float] = []
        self.numba_s: list[float] = []

    def __call__(self) -> float:
        """Seconds of one calibration: the geometric mean of the two workloads, each the best of three."""
        with threadpool_limits(limits=1, user_api="blas"):
            gemm = min(self._time(np.matmul, self.m, self.m) for _ in range(3))
        kernel = min(self._time(calibration_kernel, self.v, self.v, 1000) for _ in range(3))
        self.gemm_s.append(gemm)
        self.numba_s.append(kernel)
        return float(np.sqrt(gemm * kernel))

    @staticmethod
    def _time(fn, *args) -> float:
        t0 = time.perf_counter()
        fn(*args)
        return time.perf_counter() - t0


@pytest.fixture(scope="session")
def calibration() -> Calibration:
    return Calibration()


@pytest.fixture(scope="session")
def store() -> WeightStore:
    return WeightStore()


@pytest.fixture(scope="session")
def image() -> np.ndarray:
    return load_image(IMAGE)[None]


@pytest.fixture(scope="session")
def machine_kind() -> tuple[str, dict]:
    info = machine.describe(numba.config.NUMBA_NUM_THREADS)
    return regression.machine_key(info["cpu"]), info


@pytest.fixture(scope="session")
def baseline(machine_kind) -> regression.Baseline:
    """What this run is compared with: this machine kind's entry in results/baseline.json, or the nearest."""
    key, info = machine_kind
    chosen = regression.pick_baseline(regression.load_baseline(regression.BASELINE), info["cpu"])
    if chosen is None:
        pytest.fail(f"{regression.BASELINE} holds no baseline; `make baseline` records one", pytrace=False)
    if chosen.foreign:
        print(f"\nno baseline for {key!r}: comparing with {chosen.machine!r} at {chosen.tolerance:.0%} tolerance")
    return chosen


@pytest.fixture(scope="session")
def ratios() -> dict[str, float]:
    """Stage -> median(latency / calibration) of this run, filled in by the latency benchmarks."""
    return {}


@pytest.fixture(scope="session")
def latencies() -> dict[str, float]:
    """Stage -> median batch-1 latency in seconds (for the baseline's readers; the check uses ratios)."""
    return {}


@pytest.fixture(scope="session", autouse=True)
def baseline_writer(request, ratios, latencies, calibration, machine_kind):
    """With --write-baseline: after every benchmark has run and passed, record this machine's ratios."""
    yield
    if not request.config.getoption("--write-baseline") or not ratios:
        return
    if request.session.testsfailed:
        print(f"\nbaseline NOT written: {request.session.testsfailed} test(s) failed")
        return
    key, info = machine_kind
    record = {
        "machine": {"cpu": info["cpu"], "versions": info["versions"], "git_commit": info["git_commit"]},
        "calibration_ms": {
            "gemm_512": round(1e3 * float(np.median(calibration.gemm_s)), 4),
            "numba_dot": round(1e3 * float(np.median(calibration.numba_s)), 4),
        },
        "stages": {
            name: {"ratio": round(r, 4), "latency_ms": round(1e3 * latencies[name], 2)} for name, r in ratios.items()
        },
    }
    regression.write_baseline(regression.BASELINE, key, record)
    print(f"\nbaseline for {key!r} written to {regression.BASELINE}")
