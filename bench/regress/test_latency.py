"""Per-stage latency regression check: batch-1 latency of every stage on a fixed image, as a ratio to a
calibration timed round by round in the same run, against results/baseline.json; and every speedup a
stage's NOTES.md promises, against its predecessor timed alternately in the same run."""

import os
import statistics
import time

import pytest

from bench import regression
from common import stages

STAGES = stages.available()
ROUNDS = 7
SLOW = {"01"}  # the naive stage: one timed run


def build(info: stages.StageInfo, store):
    return stages.load(info).ResNet50(store)


@pytest.mark.parametrize("info", STAGES, ids=[s.name for s in STAGES])
def test_latency(benchmark, info, store, image, calibration, ratios, latencies, request):
    model = build(info, store)
    model(image)  # compile or load from the cache; warm up
    calibrations = []

    def calibrate_then_run():
        calibrations.append(calibration())
        return (image,), {}

    rounds = 1 if info.key in SLOW else ROUNDS
    benchmark.pedantic(model, setup=calibrate_then_run, rounds=rounds, iterations=1)
    times = list(benchmark.stats.stats.data)
    ratio = statistics.median(t / c for t, c in zip(times, calibrations[-len(times) :], strict=True))
    ratios[info.name] = ratio
    latencies[info.name] = statistics.median(times)
    benchmark.extra_info.update(
        ratio=round(ratio, 4),
        calibration_ms=round(1e3 * statistics.median(calibrations), 4),
        gemm_ms=round(1e3 * statistics.median(calibration.gemm_s[-len(times) :]), 4),
        numba_ms=round(1e3 * statistics.median(calibration.numba_s[-len(times) :]), 4),
    )
    if request.config.getoption("--write-baseline"):
        return
    baseline = request.getfixturevalue("baseline")
    known = {info.name: baseline.ratios[info.name]} if info.name in baseline.ratios else {}
    (finding,) = regression.compare({info.name: ratio}, known, baseline.tolerance)
    print(finding.message)
    if finding.failed:
        pytest.fail(finding.message, pytrace=False)


PROMISES = [(s, regression.read_promise((s.folder / "NOTES.md").read_text(encoding="utf-8"))) for s in STAGES]


@pytest.mark.parametrize(
    ("info", "promise"), [(s, p) for s, p in PROMISES if p], ids=[s.name for s, p in PROMISES if p]
)
def test_promised_speedup(info, promise, store, image):
    """The stage against its predecessor, alternately, in this run: the median of the pairwise speedups."""
    before, after = build(stages.find(promise.predecessor), store), build(info, store)
    if getattr(after, "threads", 1) > 1 and (os.cpu_count() or 1) < 2:
        pytest.skip("a threaded stage cannot be faster on one core")
    before(image)
    after(image)
    speedups = []
    for _ in range(1 if promise.predecessor[:2] in SLOW else ROUNDS):
        t0 = time.perf_counter()
        before(image)
        t1 = time.perf_counter()
        after(image)
        t2 = time.perf_counter()
        speedups.append((t1 - t0) / (t2 - t1))
    finding = regression.check_promise(info.name, promise, statistics.median(speedups))
    print(finding.message)
    if finding.failed:
        pytest.fail(finding.message, pytrace=False)


def test_every_stage_in_the_baseline_was_measured(ratios, request):
    if request.config.getoption("--write-baseline"):
        return
    baseline = request.getfixturevalue("baseline")
    missing = [f for f in regression.compare(ratios, baseline.ratios) if f.status == "missing"]
    if missing:
        pytest.fail("; ".join(f.message for f in missing), pytrace=False)
