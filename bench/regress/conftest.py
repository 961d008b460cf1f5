"""The latency regression suite (`make regress`), apart from the correctness tests in tests/.

`make baseline` runs it with --write-baseline: it records this machine kind's ratios in
results/baseline.json instead of comparing with them.
"""

import numba
import numpy as np
import pytest

from bench import machine, regression
from bench.calibration import Calibration
from common.images import load_image
from common.paths import IMAGES_DIR
from common.weights import WeightStore

IMAGE = IMAGES_DIR / "cat.png"


def pytest_terminal_summary(terminalreporter):
    """Every check's line (regression.REPORT), whatever pytest's verbosity: the numbers behind a pass too."""
    if regression.REPORT:
        terminalreporter.section("regression check")
        for line in regression.REPORT:
            terminalreporter.write_line(line)


def pytest_addoption(parser):
    parser.addoption("--write-baseline", action="store_true", help="record results/baseline.json for this machine")


@pytest.fixture(scope="session")
def calibrations() -> dict[tuple[str, int], Calibration]:
    """One calibration per (kind, threads), made on first use (see regression.calibration_kind)."""
    return {}


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
        regression.REPORT.append(
            f"no baseline for {key!r}: comparing with {chosen.machine!r} at {chosen.tolerance:.0%} tolerance"
        )
    return chosen


@pytest.fixture(scope="session")
def measured() -> dict[str, regression.Measurement]:
    """Stage -> its measurement in this run, filled in by the latency benchmarks."""
    return {}


@pytest.fixture(scope="session", autouse=True)
def baseline_writer(request, measured, machine_kind):
    """With --write-baseline: after every benchmark has run and passed, record this machine's ratios."""
    yield
    if not request.config.getoption("--write-baseline") or not measured:
        return
    if request.session.testsfailed or None in measured.values():
        regression.REPORT.append("baseline NOT written: a test failed, or the machine was too busy to measure all")
        return
    key, info = machine_kind
    record = {
        "machine": {"cpu": info["cpu"], "versions": info["versions"], "git_commit": info["git_commit"]},
        "stages": {
            name: {
                "ratio": round(m.ratio, 4),
                "latency_ms": round(1e3 * m.latency_s, 2),
                "calibration": m.calibration,
                "calibration_ms": round(1e3 * m.calibration_s, 4),
            }
            for name, m in measured.items()
            if m is not None
        },
    }
    regression.write_baseline(regression.BASELINE, key, record)
    regression.REPORT.append(f"baseline for {key!r} written to {regression.BASELINE}")
