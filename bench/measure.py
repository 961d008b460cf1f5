"""Measuring entries (stages and peers) the same way: validate first, then time interleaved, within a budget.

- An entry is built, called once (its compile time is recorded apart) and its answer on the first image
  compared with the judge's (`Judge`: fp32 entries with the fp32 judge, int8 ones with ONNX Runtime int8).
  An entry that is wrong is reported and not timed.
- Batch-1 latency: the entries of one thread count take turns, one image each per round, cycling through
  the sample images. Interleaving spreads this shared machine's slow phases over every entry instead of
  landing on whichever ran at the wrong minute. An entry stops after `max_repeats` images, or once it has
  spent its time budget (it always gets at least one). Every output is checked against the judge.
- Throughput: a batch of `batch` images (the samples, repeated) through a model built for that batch,
  skipped with a reason when one batch would not fit the budget (stage 01).
"""

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from common import quantized
from common.reference import Verdict, compare
from common.timing import timed_call

Model = Callable[[np.ndarray], np.ndarray]


@dataclass
class Entry:
    name: str
    label: str
    kind: str  # "stage" or "peer"
    threads: int
    make: Callable[[int], Model] | None  # max_batch -> model
    cpp_ms: float | None = None  # the C++ rung this stage mirrors: its author's figure, or measured here
    cpp_measured: bool = False
    cpp_rung: str | None = None  # set on a C++ rung's own entry: the stage it mirrors
    precision: str = "fp32"  # "int8": an int8 stage or peer
    unit: str | None = None  # the int8 unit a stage uses ("vnni", "amx"); a peer's: the fastest measured
    # What its logits are held to (Judge): "fp32", "int8" (ONNX Runtime int8's, for the same integer
    # arithmetic), or "agreement" (int8 by another engine's rounding: shape and finite values only).
    judged_by: str = "fp32"
    status: str = "pending"
    message: str = ""
    model: Model | None = None
    build_s: float = 0.0
    first_call_s: float = 0.0
    compile_s: float = 0.0
    verdict: dict = field(default_factory=dict)
    latency_s: list[float] = field(default_factory=list)
    throughput: dict = field(default_factory=dict)
    spent_s: float = 0.0
    logits: dict = field(default_factory=dict)  # image index -> its first logits, for int8 agreement

    @property
    def ok(self) -> bool:
        return self.status in ("pending", "ok")


def _fail(entry: Entry, status: str, error: BaseException | str) -> None:
    entry.status = status
    if isinstance(error, BaseException):
        where = traceback.extract_tb(error.__traceback__)[-1]
        entry.message = (
            f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''} "
            f"({where.filename.rsplit('/', 1)[-1]}:{where.lineno})"
        )
    else:
        entry.message = error
    entry.model = None


@dataclass
class Judge:
    """What entries' logits are checked against, per image: the fp32 judge's (ONNX Runtime on the fp32
    graph, common.reference.compare); for an int8 entry held to ONNX Runtime int8, that engine's logits on
    the int8 model within its tolerance (common.quantized.compare_int8). Another engine's int8 kernels
    round their own way (OpenVINO's logits differ from ONNX Runtime int8's by tens of output steps here),
    so such an entry is held to finite logits of the right shape, and its agreement with fp32 reported."""

    fp32: np.ndarray
    int8: np.ndarray | None = None
    int8_scale: float = 0.0

    def add_int8(self, store, images: np.ndarray) -> None:
        """ONNX Runtime int8's logits for the images (common.quantized; may raise QuantizeError)."""
        judge = quantized.Int8Reference(store, max_batch=len(images))
        self.int8, self.int8_scale = judge(images), judge.scale

    def check(self, entry: Entry, logits: np.ndarray, index) -> Verdict:
        if entry.judged_by == "fp32":
            return compare(logits, self.fp32[index])
        if entry.judged_by == "int8":
            if self.int8 is None:
                return Verdict(False, float("inf"), 0.0, "no int8 judge in this run")
            return quantized.compare_int8(logits, self.int8[index], self.int8_scale)
        want = self.fp32[index]
        logits = np.asarray(logits)
        if logits.shape != want.shape or not np.isfinite(logits).all():
            return Verdict(False, float("inf"), 0.0, f"logits of shape {logits.shape}, or not all finite")
        return Verdict(True, float(np.abs(logits - want).max()), float("inf"), "")

    def agreement(self, entry: Entry) -> dict | None:
        """An int8 entry's top-1 agreement with fp32 on the images it ran, and its largest logit difference."""
        if entry.precision != "int8" or not entry.logits:
            return None
        seen = sorted(entry.logits)
        return quantized.agreement(np.stack([entry.logits[k] for k in seen]), self.fp32[seen]).as_dict()


def prepare(entry: Entry, images: np.ndarray, judge: Judge) -> None:
    """Build, first call, check against the judge. Leaves entry.status 'pending' if it may be timed."""
    if entry.status in ("skipped", "error"):  # said why before anything was built
        return
    if entry.make is None:
        entry.status = "missing"
        return
    try:
        entry.model, entry.build_s, build_compile = timed_call(entry.make, 1)
        out, entry.first_call_s, call_compile = timed_call(entry.model, images[:1])
        # A generated stage compiles in its constructor and says how long (0 when its cache served it).
        entry.compile_s = max(build_compile, getattr(entry.model, "compile_s", 0.0)) + call_compile
        verdict = judge.check(entry, out[0], 0)
        entry.verdict = {"max_abs_diff": verdict.max_abs_diff, "tolerance": verdict.tolerance, "judge": entry.judged_by}
        entry.logits[0] = np.array(out[0])
        if not verdict.ok:
            _fail(entry, "wrong", f"does not match the judge on image 0: {verdict.reason}")
    except Exception as e:
        _fail(entry, "error", e)


@dataclass
class Turns:
    """How entries take turns: `block` timed images per turn, after `warmup` untimed ones and a pause.

    Single-threaded entries alternate image by image. Multi-threaded ones take turns in warm blocks: an
    idle thread pool keeps spinning for a while after its last call (OpenBLAS for about 0.1 s), and the
    next engine's threads would find the cores taken; measured here, ONNX Runtime on 2 threads ran at
    78 ms instead of 39 when it followed numpy call by call.
    """

    block: int = 1
    warmup: int = 0
    pause_s: float = 0.0


def time_latency(
    entries: list[Entry],
    images: np.ndarray,
    judge: Judge,
    budget_s: float,
    max_repeats: int,
    desc: str,
    turns_of: Callable[[Entry], Turns] = lambda entry: Turns(),
) -> None:
    """Interleaved batch-1 timing of the entries that are still ok: one rotation over all of them."""
    active = [e for e in entries if e.ok]
    with tqdm(
        total=len(active) * max_repeats, desc=desc, unit="img", leave=False, dynamic_ncols=True, disable=None
    ) as bar:
        while active:
            for entry in list(active):
                bar.set_postfix_str(entry.name)
                turns = turns_of(entry)
                time.sleep(turns.pause_s)
                try:
                    for j in range(turns.warmup):
                        entry.model(images[j % len(images)][None])
                    for _ in range(turns.block):
                        k = len(entry.latency_s) % len(images)
                        t0 = time.perf_counter()
                        out = entry.model(images[k : k + 1])
                        dt = time.perf_counter() - t0
                        entry.latency_s.append(dt)
                        entry.spent_s += dt
                        bar.update(1)
                        verdict = judge.check(entry, out[0], k)
                        entry.logits.setdefault(k, np.array(out[0]))
                        if not verdict.ok:
                            _fail(entry, "wrong", f"does not match the judge on image {k}: {verdict.reason}")
                        if not entry.ok or len(entry.latency_s) >= max_repeats or entry.spent_s >= budget_s:
                            break
                except Exception as e:
                    _fail(entry, "error", e)
                if not entry.ok or len(entry.latency_s) >= max_repeats or entry.spent_s >= budget_s:
                    active.remove(entry)
                    bar.update(max(max_repeats - len(entry.latency_s), 0))
    for entry in entries:
        if entry.ok:
            entry.status = "ok"


def time_throughput(
    entry: Entry, images: np.ndarray, judge: Judge, batch: int, budget_s: float, repeats: int, pause_s: float = 0.0
) -> None:
    if not entry.ok or not entry.latency_s:
        return
    estimate = float(np.median(entry.latency_s)) * batch
    if estimate > budget_s:
        entry.throughput = {
            "batch": batch,
            "skipped": f"one batch would take about {estimate:.0f} s, over the {budget_s:.0f} s budget",
        }
        return
    time.sleep(pause_s)  # let the previous engine's idle threads stop spinning (see Turns)
    index = np.arange(batch) % len(images)
    x = np.ascontiguousarray(images[index])
    try:
        model = entry.make(batch)
        out = model(x)  # warm up (compiled code comes from the cache filled by the batch-1 model)
        verdict = judge.check(entry, out, index)
        if not verdict.ok:
            _fail(entry, "wrong", f"batch of {batch} does not match the judge: {verdict.reason}")
            return
        samples, spent = [], 0.0
        while len(samples) < repeats and (spent < budget_s or not samples):
            t0 = time.perf_counter()
            model(x)
            dt = time.perf_counter() - t0
            samples.append(dt)
            spent += dt
    except Exception as e:
        _fail(entry, "error", e)
        return
    entry.throughput = {
        "batch": batch,
        "images_per_s": round(batch / float(np.median(samples)), 2),
        "samples_s": [round(s, 5) for s in samples],
    }


def summary(entry: Entry, flops: float, peak_gflops: float, judge: Judge | None = None) -> dict:
    """The entry as it goes into the results file (bench/results.py documents the fields); peak_gflops is
    the peak of the entry's precision at its thread count."""
    out = {
        "name": entry.name,
        "label": entry.label,
        "kind": entry.kind,
        "threads": entry.threads,
        "status": entry.status,
        "message": entry.message,
        "build_s": round(entry.build_s, 3),
        "first_call_s": round(entry.first_call_s, 3),
        "compile_s": round(entry.compile_s, 2),
        "verdict": entry.verdict,
        "cpp_ms": entry.cpp_ms,
        "cpp_measured": entry.cpp_measured,
    }
    if entry.cpp_rung:
        out["cpp_rung"] = entry.cpp_rung
    if entry.precision != "fp32":
        out["precision"] = entry.precision
    if entry.unit:
        out["unit"] = entry.unit
        agreement = judge.agreement(entry) if judge is not None else None
        if agreement:
            out["agreement"] = agreement
    if entry.status == "ok" and entry.latency_s:
        ms = np.array(entry.latency_s) * 1e3
        median = float(np.median(ms))
        out["latency_ms"] = {
            "median": round(median, 2),
            "min": round(float(ms.min()), 2),
            "p90": round(float(np.percentile(ms, 90)), 2),
            "samples": [round(float(v), 2) for v in ms],
        }
        out["throughput"] = entry.throughput or None
        out["gflops"] = round(flops / (median / 1e3) / 1e9, 2)
        out["peak_fraction"] = round(out["gflops"] / peak_gflops, 4)
    return out
