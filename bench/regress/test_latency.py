"""Per-stage latency regression check: batch-1 latency of every stage on a fixed image, as a ratio to a
calibration of the stage's own kind and thread count timed round by round in the same run, against
results/baseline.json; and every speedup a stage's NOTES.md promises, against its predecessor timed
alternately in the same run. Nothing fails on one measurement (bench/regression.py)."""

import statistics
import time

import pytest

from bench import machine, regression
from bench.calibration import Calibration
from common import stages

STAGES = stages.available()
CORES = machine.usable_cores()
ROUNDS = 7
SLOW = {"01"}  # the naive stage: one timed run, two when re-measured
BUSY_RETRIES = 2  # a busy machine is waited for this many times (BUSY_PAUSE_S each) before giving up
BUSY_PAUSE_S = 5.0


def threaded(info: stages.StageInfo) -> bool:
    return stages.threaded(stages.load(info))


def build(info: stages.StageInfo, store, threads: int | None = None):
    """The stage as the bench runs it: a threaded one at `threads` (default: every core). A stage that
    cannot do its idea on this target (10_int8 without VNNI) is skipped, as the bench skips it."""
    skip = getattr(stages.load(info), "SKIP", None)
    if skip:
        pytest.skip(f"{info.name}: {skip}")
    if threaded(info):
        return stages.load(info).ResNet50(store, threads=threads or CORES)
    return stages.load(info).ResNet50(store)


# Every stage at the thread counts the bench uses: a threaded one at 1 thread and on every core.
CASES = [(s, t) for s in STAGES for t in (sorted({1, CORES}) if threaded(s) else [1])]


def case_name(info: stages.StageInfo, threads: int) -> str:
    return f"{info.name}@{threads}" if threaded(info) else info.name


def calibration_for(calibrations: dict, info: stages.StageInfo, model) -> Calibration:
    threads = getattr(model, "threads", None) or 1
    kind = regression.calibration_kind(info.key, threads)
    if (kind, threads) not in calibrations:
        calibrations[kind, threads] = Calibration(kind, threads)
    return calibrations[kind, threads]


def unless_busy(take, threads: int, m: regression.Measurement | None = None):
    """Take a measurement (or use `m`); while it says the machine is busy, wait and take it again; skip the
    test if it stays so."""
    m = m or take()
    for _ in range(BUSY_RETRIES):
        if not m.busy:
            return m
        busy = regression.busy_message(m.efficiencies, threads)
        regression.REPORT.append(f"{busy}; waiting {BUSY_PAUSE_S:.0f} s to measure again")
        time.sleep(BUSY_PAUSE_S)
        m = take()
    if m.busy:
        regression.REPORT.append(regression.busy_message(m.efficiencies, threads))
        pytest.skip(regression.REPORT[-1])
    return m


@pytest.mark.parametrize(("info", "threads"), CASES, ids=[case_name(s, t) for s, t in CASES])
def test_latency(benchmark, info, threads, store, image, calibrations, measured, request):
    model = build(info, store, threads)
    model(image)  # compile or load from the cache; warm up
    name = case_name(info, threads)
    calibration = calibration_for(calibrations, info, model)
    rounds = 1 if info.key in SLOW else ROUNDS

    def take(rounds: int = rounds) -> regression.Measurement:
        return regression.measure(lambda: model(image), calibration, rounds)

    # The first measurement through pytest-benchmark (its table shows the latencies), each round after
    # a calibration; measured again by our own loop when needed.
    readings = []

    def calibrate():
        readings.append(calibration())
        return (image,), {}

    measured[name] = None  # measured, if not judged: a busy machine skips it below
    benchmark.pedantic(model, setup=calibrate, rounds=rounds, iterations=1)
    first = regression.Measurement(calibration.kind, list(benchmark.stats.stats.data), readings[-rounds:])
    first = unless_busy(take, threads, first)
    measured[name] = first
    benchmark.extra_info.update(
        ratio=round(first.ratio, 4), calibration=first.calibration, calibration_ms=round(1e3 * first.calibration_s, 4)
    )
    if request.config.getoption("--write-baseline"):
        return
    baseline = request.getfixturevalue("baseline")
    known = {name: baseline.ratios[name]} if name in baseline.ratios else {}
    (finding,) = regression.compare({name: first.ratio}, known, baseline.tolerance)

    def again() -> regression.Finding:
        m = unless_busy(lambda: take(2 * rounds), threads)
        measured[name] = m
        return regression.compare({name: m.ratio}, known, baseline.tolerance)[0]

    finding = regression.judged(finding, again)
    regression.REPORT.append(finding.message)
    if finding.failed:
        pytest.fail(finding.message, pytrace=False)


PROMISES = [(s, regression.read_promise((s.folder / "NOTES.md").read_text(encoding="utf-8"))) for s in STAGES]


def alternate(before, after, image, rounds: int, calibration: Calibration | None) -> tuple[list[float], list]:
    """Predecessor and stage in turn (with the threads' calibration between, for a threaded stage)."""
    speedups, readings = [], []
    for _ in range(rounds):
        if calibration is not None:
            readings.append(calibration())
        t0 = time.perf_counter()
        before(image)
        t1 = time.perf_counter()
        after(image)
        t2 = time.perf_counter()
        speedups.append((t1 - t0) / (t2 - t1))
    return speedups, readings


@pytest.mark.parametrize(
    ("info", "promise"), [(s, p) for s, p in PROMISES if p], ids=[s.name for s, p in PROMISES if p]
)
def test_promised_speedup(info, promise, store, image, calibrations):
    """The stage against its predecessor, alternately, in this run: the median of the pairwise speedups."""
    before, after = build(stages.find(promise.predecessor), store), build(info, store)
    threads = getattr(after, "threads", None) or 1
    if threads > 1 and regression.calibration_kind(info.key, threads) != "threads":
        pytest.fail("a threaded stage must be calibrated on its threads", pytrace=False)
    calibration = calibration_for(calibrations, info, after) if threads > 1 else None
    before(image)
    after(image)
    rounds = 1 if promise.predecessor[:2] in SLOW else ROUNDS

    def take(rounds: int = rounds) -> regression.Measurement:
        speedups, readings = alternate(before, after, image, rounds, calibration)
        m = regression.Measurement("threads" if calibration else "none", speedups, readings)
        return m

    def check(rounds: int = rounds) -> regression.Finding:
        m = unless_busy(lambda: take(rounds), threads) if calibration else take(rounds)
        return regression.check_promise(info.name, promise, statistics.median(m.latencies))

    finding = regression.judged(check(), lambda: check(2 * rounds))
    regression.REPORT.append(finding.message)
    if finding.failed:
        pytest.fail(finding.message, pytrace=False)


def test_every_stage_in_the_baseline_was_measured(measured, request):
    if request.config.getoption("--write-baseline"):
        return
    baseline = request.getfixturevalue("baseline")
    current = {name: m.ratio if m else 0.0 for name, m in measured.items()}
    missing = [f for f in regression.compare(current, baseline.ratios, baseline.tolerance) if f.status == "missing"]
    if missing:
        pytest.fail("; ".join(f.message for f in missing), pytrace=False)
