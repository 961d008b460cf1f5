"""The regression rules, as plain functions (the pytest-benchmark suite in bench/regress/ feeds them).

A stage's figure is its batch-1 latency divided by a calibration timed in the same run: that ratio moves
far less between runs on a shared machine than the latency does. It is compared with the ratio committed
in results/baseline.json for the same kind of machine. Separately, every stage whose NOTES.md promises a
speedup over its predecessor is checked against it, both timed in the same run.
"""

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

from bench.results import write_atomic
from common.errors import ResultsError
from common.paths import RESULTS_DIR

BASELINE = RESULTS_DIR / "baseline.json"

# Run-to-run noise of a stage's ratio measured on this machine kind (AMD EPYC Zen 4, 2 cores), five
# `make regress` runs in a row: spread (max/min - 1) of 01 3.5%, 02 7.3%, 03 4.2%, 04 2.3%, 05 1.8%,
# and 15.5% for 06, whose second thread shares its core with whatever else the VM runs; the largest
# departure from the baseline was 12.9% (06), the others at most 4.1%. A change must cost more than 20%
# to fail the check.
TOLERANCE = 0.20
# With no baseline for this machine kind, the nearest other machine's is used: ratios to a calibration
# carry over between CPUs only roughly (vector width and cache sizes weigh differently on the stages and on
# the calibration), so only a change that doubles a stage's time fails; the promises still hold exactly.
FOREIGN_TOLERANCE = 1.0
SCHEMA = 1


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


PROMISE = re.compile(r"\*\*Promise:\*\*\s*(?:at least\s+(\d+(?:\.\d+)?)x\s+)?faster than\s+`?(\d\d_\w+)`?", re.I)


def read_promise(notes: str) -> Promise | None:
    """'**Promise:** at least 1.5x faster than `04_no_alloc`.' -> Promise('04_no_alloc', 1.5)."""
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
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ResultsError(
            f"{path}: not readable JSON ({str(e).splitlines()[0]}); `make baseline` rewrites it"
        ) from None
    if data.get("schema") != SCHEMA or not isinstance(data.get("machines"), dict):
        raise ResultsError(
            f"{path}: baseline schema {data.get('schema')!r} is not {SCHEMA}; `make baseline` rewrites it"
        )
    return data


def write_baseline(path: Path, key: str, record: dict) -> None:
    """Add or replace this machine kind's entry; other machines' baselines are kept."""
    data = load_baseline(path)
    data["machines"][key] = {**record, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_atomic(path, json.dumps(data, indent=1, sort_keys=True) + "\n")
