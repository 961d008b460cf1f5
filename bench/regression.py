"""The regression rules, as plain functions (the pytest-benchmark suite in bench/regress/ feeds them).

A stage's figure is its batch-1 latency divided by a calibration timed round by round in the same run,
of the stage's own kind and thread count (bench/calibration.py): that ratio moves far less between runs on
a shared machine than the latency does. It is compared with the ratio committed in results/baseline.json
for the same kind of machine. Separately, every stage whose NOTES.md promises a speedup over its
predecessor is checked against it, both timed alternately in the same run.

A check that cries wolf blocks correct work, so nothing fails on one measurement: a stage over its
tolerance, or short of its promise, is measured again, twice as long, and fails only if that agrees. A
multi-threaded measurement taken while another process held a core is not judged at all ("machine busy").
"""

import json
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.calibration import BUSY_EFFICIENCY, Calibration, busy
from common.errors import ResultsError
from common.files import FileRefused, read_regular, write_atomic
from common.paths import RESULTS_DIR

BASELINE = RESULTS_DIR / "baseline.json"

# How far a stage's ratio moved between `make regress` runs on one machine kind without any change to the
# code (see docs/design.md, "Regression", for the runs): up to 12.9% (06, Zen 4, old calibration) and the
# issue's +37% for 01 against a 1-thread sgemm calibration, which does not track a scalar stage. With each
# stage calibrated by its own kind and a re-measurement before failing, 25% separates noise from a change
# (a real regression, such as fastmath removed from 02, costs 5x).
TOLERANCE = 0.25
# With no baseline for this machine kind, the nearest other machine's is used: ratios to a calibration
# carry over between CPUs only roughly (vector width and cache sizes weigh differently on the stages and on
# the calibration), so only a change that doubles a stage's time fails; the promises still hold exactly.
FOREIGN_TOLERANCE = 1.0
REPORT: list[str] = []  # what `make regress` prints at the end: one line per check, passed or not
SCHEMA = 2  # 2: ratios to a calibration of the stage's own kind and thread count
MAX_BASELINE_BYTES = 4 * 2**20
SCALAR_STAGES = {"01"}  # compiled without fastmath: bound by one scalar add after another


def calibration_kind(stage_key: str, threads: int) -> str:
    """The calibration that is slowed by what slows this stage (bench/calibration.py)."""
    if threads > 1:
        return "threads"
    return "scalar" if stage_key in SCALAR_STAGES else "vector"


@dataclass
class Measurement:
    """Rounds of (calibration, stage) in turn: the stage's figure is the median of latency / calibration."""

    calibration: str
    latencies: list[float] = field(default_factory=list)
    readings: list = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return statistics.median(t / r.seconds for t, r in zip(self.latencies, self.readings, strict=True))

    @property
    def latency_s(self) -> float:
        return statistics.median(self.latencies)

    @property
    def calibration_s(self) -> float:
        return statistics.median(r.seconds for r in self.readings)

    @property
    def efficiencies(self) -> list[float]:
        return [r.efficiency for r in self.readings if r.efficiency is not None]

    @property
    def busy(self) -> bool:
        return busy(self.efficiencies)


def measure(run: Callable[[], object], calibration: Calibration, rounds: int) -> Measurement:
    """`rounds` times: the calibration, then one timed call of `run`."""
    m = Measurement(calibration.kind)
    for _ in range(rounds):
        m.readings.append(calibration())
        t0 = time.perf_counter()
        run()
        m.latencies.append(time.perf_counter() - t0)
    return m


def busy_message(efficiencies: list[float], threads: int) -> str:
    e = statistics.median(efficiencies)
    return (
        f"machine busy: {threads} threads ran the calibration's per-thread work at {e:.0%} of one thread's "
        f"speed (below {BUSY_EFFICIENCY:.0%}: another process holds a core); not judged"
    )


@dataclass(frozen=True)
class Finding:
    stage: str
    status: str  # ok, improved, new, regressed, missing, kept, broken
    message: str

    @property
    def failed(self) -> bool:
        return self.status in ("regressed", "missing", "broken")


def compare(current: dict[str, float], baseline: dict[str, float], tolerance: float = TOLERANCE) -> list[Finding]:
    """Ratios (latency / calibration) of this run against the baseline's, stage by stage."""
    findings = []
    for stage, ratio in current.items():
        if stage not in baseline:
            findings.append(
                Finding(
                    stage, "new", f"{stage}: {ratio:.4g} x calibration, no baseline yet (`make baseline` records one)"
                )
            )
            continue
        base = baseline[stage]
        change = ratio / base - 1
        numbers = (
            f"{ratio:.4g} x calibration against the baseline's {base:.4g} ({change:+.0%}, tolerance {tolerance:.0%})"
        )
        if change > tolerance:
            findings.append(Finding(stage, "regressed", f"{stage} is slower: {numbers}"))
        elif change < -tolerance:
            findings.append(Finding(stage, "improved", f"{stage} is faster: {numbers}; `make baseline` to keep it"))
        else:
            findings.append(Finding(stage, "ok", f"{stage}: {numbers}"))
    for stage in baseline:
        if stage not in current:
            findings.append(Finding(stage, "missing", f"{stage} is in the baseline but was not measured"))
    return findings


@dataclass(frozen=True)
class Promise:
    predecessor: str
    factor: float  # at least this many times faster


PROMISE = re.compile(
    r"\*\*Promise:\*\*\s*(?:at least\s+(\d+(?:\.\d+)?)x\s+)?(?:faster than|as fast as)\s+`?(\d\d_\w+)`?", re.I
)


def read_promise(notes: str) -> Promise | None:
    """'**Promise:** at least 1.5x faster than `04_no_alloc`.' -> Promise('04_no_alloc', 1.5); 'at least
    0.95x as fast as' for a step whose gain is within the machine's noise (it guards against a real loss)."""
    match = PROMISE.search(notes)
    if not match:
        return None
    return Promise(match.group(2), float(match.group(1) or 1.0))


def check_promise(stage: str, promise: Promise, speedup: float) -> Finding:
    """speedup: predecessor's time / this stage's time, measured in the same run."""
    text = f"{stage} is {speedup:.2f}x as fast as {promise.predecessor} (promised: at least {promise.factor:g}x)"
    return Finding(stage, "kept" if speedup >= promise.factor else "broken", text)


def machine_key(cpu: dict) -> str:
    """What makes ratios comparable: the same CPU model and the same number of usable cores."""
    family = f" (family {cpu['family']}, model {cpu['model_number']})" if cpu.get("family") else ""
    return f"{cpu['model']}{family}, {cpu['usable_cpus']} cores"


@dataclass(frozen=True)
class Baseline:
    machine: str
    ratios: dict[str, float]
    tolerance: float
    foreign: bool  # recorded on another kind of machine


def pick_baseline(data: dict, cpu: dict) -> Baseline | None:
    """This machine kind's baseline; else the most similar one (same core count first, then the same CPU
    model name, as recorded with each baseline), with the wider tolerance."""
    machines = data["machines"]
    key = machine_key(cpu)
    if key in machines:
        chosen, tolerance = key, TOLERANCE
    elif machines:

        def likeness(k: str) -> tuple[bool, bool]:
            theirs = machines[k].get("machine", {}).get("cpu", {})
            return theirs.get("usable_cpus") == cpu.get("usable_cpus"), theirs.get("model") == cpu.get("model")

        chosen, tolerance = max(machines, key=likeness), FOREIGN_TOLERANCE
    else:
        return None
    ratios = {stage: v["ratio"] for stage, v in machines[chosen]["stages"].items()}
    return Baseline(chosen, ratios, tolerance, chosen != key)


def load_baseline(path: Path) -> dict:
    if not path.exists():
        return {"schema": SCHEMA, "machines": {}}
    try:
        data = json.loads(read_regular(path, MAX_BASELINE_BYTES).decode("utf-8"))
    except FileRefused as e:
        raise ResultsError(str(e)) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ResultsError(
            f"{path}: not readable JSON ({str(e).splitlines()[0]}); `make baseline` rewrites it"
        ) from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or not isinstance(data.get("machines"), dict):
        schema = data.get("schema") if isinstance(data, dict) else None
        raise ResultsError(f"{path}: baseline schema {schema!r} is not {SCHEMA}; `make baseline` rewrites it")
    return data


def write_baseline(path: Path, key: str, record: dict) -> None:
    """Add or replace this machine kind's entry; other machines' baselines are kept (those of an older
    schema cannot be: their ratios are to another calibration)."""
    try:
        data = load_baseline(path)
    except ResultsError:
        data = {"schema": SCHEMA, "machines": {}}
    data["machines"][key] = {**record, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_atomic(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


def judged(first: Finding, again: Callable[[], Finding]) -> Finding:
    """A failing finding is measured `again` (longer) and fails only if that agrees; a passing one stands."""
    if not first.failed:
        return first
    REPORT.append(f"{first.message}; measuring again, twice as long")
    second = again()
    return Finding(second.stage, second.status, f"{second.message} (first measurement: {first.message})")
