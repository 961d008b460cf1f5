"""`make bench`: every stage and every peer, in one process, on every sample image.

Stages 01-05 run on one thread and are compared with the peers at one thread; stage 06 and later (the
ones whose constructor takes `threads`) run at one thread and on every usable core, each compared with
the peers at the same thread count. The full run ends with a batch sweep (1-16 images). Each
entry is checked against the judge before it is timed. Then the results file, the charts and the README
table. QUICK=1 (--quick) for a pass of a minute or two; STAGES=01,06 (--stages) to pick.
`make cpp CPP_SRC=...` (--cpp) adds the C++ original's rungs, built and run here (bench/cpp.py).
"""

import argparse
import sys
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import numba
import numpy as np
from tqdm import tqdm

from bench import chart, cpp, machine, peak, peers, pure_python, report, results
from bench.calibration import BUSY_EFFICIENCY, Calibration
from bench.measure import Entry, Judge, Turns, prepare, summary, time_latency, time_throughput
from common import files, interrupt, quantized, spec, stages
from common.errors import LadderError
from common.images import load_batch, sample_images
from common.paths import RESULTS_DIR, ROOT
from common.reference import Reference
from common.weights import WeightStore

FULL = {"budget_s": 20.0, "max_repeats": 30, "min_repeats": 3, "batch": 8, "tp_budget_s": 15.0, "tp_repeats": 5}
MULTI_THREAD_TURNS = {"block": 5, "warmup": 1, "pause_s": 0.3}  # see bench/measure.py, Turns
QUICK = {"budget_s": 4.0, "max_repeats": 6, "min_repeats": 1, "batch": 4, "tp_budget_s": 3.0, "tp_repeats": 2}


def say(text: str) -> None:
    tqdm.write(text, file=sys.stderr)


def stage_entries(selected: list[stages.StageInfo], store: WeightStore, cores: int) -> list[Entry]:
    """One entry per stage and thread count: a multi-threaded stage at 1 thread and at every core, so each
    row is compared with the peers at its own thread count."""
    out = []
    for info in selected:
        module = stages.load(info)
        precision = getattr(module, "PRECISION", "fp32")  # 10_int8 is judged by ONNX Runtime int8
        kinds = {"precision": precision, "judged_by": precision, "unit": getattr(module, "UNIT", None)}
        skip = getattr(module, "SKIP", None)  # a stage that cannot do its idea on this target says why
        if skip:
            kinds.update(status="skipped", message=skip)
        if not stages.threaded(module):
            make = partial(lambda max_batch, module: module.ResNet50(store, max_batch=max_batch), module=module)
            out.append(Entry(info.name, info.name, "stage", 1, make, cpp.PUBLISHED_MS.get(info.key), **kinds))
            continue
        for threads in sorted({1, cores}):
            make = partial(
                lambda max_batch, module, threads: module.ResNet50(store, max_batch=max_batch, threads=threads),
                module=module,
                threads=threads,
            )
            published = cpp.PUBLISHED_MS.get(info.key) if threads == cores else None  # it ran on every core
            out.append(Entry(f"{info.name}@{threads}", info.name, "stage", threads, make, published, **kinds))
    return out


def mark_effective(row: dict) -> dict:
    """A stage that multiplies less than direct convolution (Winograd: `EFFECTIVE_RATE = True` in its
    resnet50.py) has its GFLOP/s counted as direct-conv FLOPs / time: an effective rate, marked so, which
    can exceed the FMA peak without breaking it."""
    if row["kind"] == "stage":
        info = stages.find(row["label"])
        row["effective"] = bool(getattr(stages.load(info), "EFFECTIVE_RATE", False))
    return row


SWEEP_BATCHES = (1, 2, 4, 8, 16)


def batch_sweep(
    entries: list[Entry], images: np.ndarray, judge: Judge, cores: int, repeats: int, batches=SWEEP_BATCHES
) -> dict:
    """Images/s against batch size on every core: the fastest stage of each precision, 06 and ONNX Runtime
    (int8 too when an int8 stage ran), each judged at every batch. How cost grows with work: a kernel that
    streams its weights once per batch gains."""
    at_cores = [e for e in entries if e.ok and e.threads == cores and e.latency_s]
    chosen = []
    for precision in ("fp32", "int8"):
        stages_ = [e for e in at_cores if e.kind == "stage" and e.precision == precision]
        if stages_:
            chosen.append(min(stages_, key=lambda e: float(np.median(e.latency_s))))
    int8 = any(e.precision == "int8" for e in chosen)
    peers_ = {f"onnxruntime@{cores}"} | ({f"onnxruntime-int8@{cores}"} if int8 else set())
    chosen += [e for e in at_cores if (e.name.startswith("06_") or e.name in peers_)]
    chosen = list({e.name: e for e in chosen}.values())  # the fastest stage may be 06
    series = {}
    for entry in tqdm(chosen, desc="batch sweep", unit="entry", leave=False, disable=None):
        rates = []
        for batch in batches:
            probe = replace(entry, status="pending", throughput={}, logits={})
            time_throughput(probe, images, judge, batch, 60.0, repeats, MULTI_THREAD_TURNS["pause_s"])
            rates.append(probe.throughput.get("images_per_s") if probe.ok else None)
        series[entry.name] = {"label": entry.label, "images_per_s": rates}
    return {"threads": cores, "batches": list(batches), "series": series}


def cpp_entries(src: str, store: WeightStore, images: list[Path], cores: int, keys: list[str]) -> list[Entry]:
    """The C++ original's rungs, built and run here, as peers ("cpp_2nd_avx2@1")."""
    out = []
    try:
        rungs = cpp.measure(src, store, images, cores, keys)
    except (cpp.CppError, OSError) as e:  # e.g. no room for the export: the stages' results still count
        rungs = [cpp.RungResult(k, cpp.RUNGS[k], cpp.threads(k, cores), "error", f"{e}") for k in keys]
    for r in rungs:
        entry = Entry(f"cpp_{r.folder}@{r.threads}", f"C++ {r.folder}", "peer", r.threads, None, cpp_rung=r.key)
        entry.status, entry.message, entry.verdict = r.status, r.message, r.verdict or {}
        entry.build_s, entry.compile_s = r.build_s, r.startup_s
        entry.latency_s = r.latency_s or []
        out.append(entry)
        say(f"bench: C++ {r.folder}: {r.status}{': ' + r.message if r.message else ''}")
    return out


def use_measured_cpp(entries: list[Entry]) -> None:
    """A stage's C++ column: the rung it mirrors as measured in this run (at the same thread count), in
    place of its author's figure; empty when that rung ran and was wrong or failed (its own row says why)."""
    ran = {(e.cpp_rung, e.threads): e for e in entries if e.cpp_rung}
    for e in entries:
        rung = ran.get((stages.find(e.label).key, e.threads)) if e.kind == "stage" else None
        if rung is None:
            continue
        if rung.ok and rung.latency_s:
            e.cpp_ms, e.cpp_measured = round(float(np.median(rung.latency_s)) * 1e3, 1), True
        else:
            e.cpp_ms = None


def run(stage_keys: str | None, quick: bool, out_dir: Path, readme: Path | None, cpp_src: str | None = None) -> Path:
    knobs = QUICK if quick else FULL
    cores = machine.usable_cores()
    store = WeightStore()
    selected = stages.select(stage_keys)
    cpp_keys = [info.key for info in selected if info.key in cpp.RUNGS]
    if cpp_src is not None:  # before anything slow: a bad path or a missing library is one line now
        cpp.checkout(cpp_src)
        cpp.check_tools()
        if not cpp_keys:
            raise LadderError(f"STAGES={stage_keys}: no stage that a C++ rung mirrors (01-06) is selected")
    paths = sample_images()
    images, used, bad = load_batch(paths)
    for error in bad:
        say(f"skipping {error}")
    if not used:
        raise LadderError("images/: no readable image to benchmark on")
    info = machine.describe(numba.config.NUMBA_NUM_THREADS)
    say(
        f"bench: {info['cpu']['model']}, {cores} cores, {len(used)} images, weights {store.source}"
        f"{' (quick)' if quick else ''}"
    )
    for trap in info["environment_traps"]:
        say(f"bench: environment trap: {trap}")
    judge = Judge(Reference(store, max_batch=len(images))(images))
    contention = Contention(cores)
    contention.check("start")
    say("bench: measuring the machine's peaks (FMAs and int8 dot products in registers) and numpy's sgemm ...")
    limit = peak.measure(cores, repeats=3 if quick else 5)
    say(
        f"bench: FMA peak {limit['gflops_1_thread']} GFLOP/s on 1 thread, {limit['gflops_all_threads']} on {cores}; "
        f"int8 {limit['int8_gops_1_thread']} and {limit['int8_gops_all_threads']} GOP/s; "
        + (f"AMX {limit['amx_gops_1_thread']} and {limit['amx_gops_all_threads']} GOP/s; "
           if "amx_gops_1_thread" in limit else "")
        + f"sgemm {limit['sgemm_gflops_1_thread']} and {limit['sgemm_gflops_all_threads']}"
    )

    entries = stage_entries(selected, store, cores)
    thread_counts = sorted({1, cores})
    for p in peers.peers(store, thread_counts):
        entries.append(Entry(p.name, p.label, "peer", p.threads, p.make, message=p.missing, precision=p.precision,
                             judged_by=p.judged_by))  # fmt: skip
    if any(e.precision == "int8" and e.ok for e in entries):
        say("bench: the int8 judge: ONNX Runtime on the int8 model (common/quantized.py) ...")
        try:
            judge.add_int8(store, images)
        except quantized.QuantizeError as e:  # the fp32 run goes on; every int8 row says why it is empty
            say(f"bench: no int8 rows: {e}")
            for entry in entries:
                if entry.precision == "int8" and entry.ok:
                    entry.status, entry.message = "error", str(e)
    for entry in tqdm(entries, desc="build and check against the judge", unit="entry", leave=False, disable=None):
        prepare(entry, images, judge)
        if entry.status not in ("pending", "missing"):
            say(f"bench: {entry.name}: {entry.status}: {entry.message}")
    for entry in entries:  # the slow stage gets its few images whatever the budget says
        if entry.ok and entry.first_call_s * knobs["min_repeats"] > knobs["budget_s"]:
            say(f"bench: {entry.name} takes {entry.first_call_s:.1f} s per image: {knobs['min_repeats']} image(s) only")
    # One rotation over every entry, whatever its thread count, so a slow phase of the machine falls on all.
    multi = Turns(**MULTI_THREAD_TURNS)
    time_latency(
        entries,
        images,
        judge,
        knobs["budget_s"],
        knobs["max_repeats"],
        "latency",
        lambda e: multi if e.threads > 1 else Turns(),
    )
    for entry in entries:
        if entry.ok and len(entry.latency_s) < knobs["min_repeats"]:
            time_latency([entry], images, judge, 0.0, knobs["min_repeats"], entry.name)
    for entry in tqdm([e for e in entries if e.ok], desc="throughput", unit="entry", leave=False, disable=None):
        pause = MULTI_THREAD_TURNS["pause_s"] if entry.threads > 1 else 0.0
        time_throughput(entry, images, judge, knobs["batch"], knobs["tp_budget_s"], knobs["tp_repeats"], pause)
    sweep = None
    if not quick:
        try:
            sweep = batch_sweep(entries, images, judge, cores, repeats=3)
        except Exception as e:  # an extra chart must not cost the run's results
            say(f"bench: WARNING: the batch sweep failed and is left out ({type(e).__name__}: {e})")
    if cpp_src is not None:
        entries += cpp_entries(cpp_src, store, used, cores, cpp_keys)
        use_measured_cpp(entries)
    say("bench: timing pure Python on a slice of one layer ...")
    extrapolation = pure_python.measure()
    contention.check("end")

    info["numba_threading_layer"] = _threading_layer()
    data = {
        "schema": results.SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": {
            "quick": quick,
            "images": [p.name for p in used],
            "throughput_batch": knobs["batch"],
            "budget_s": knobs["budget_s"],
            "max_repeats": knobs["max_repeats"],
            "thread_counts": thread_counts,
            "weights": store.source,
            "multi_thread_turns": MULTI_THREAD_TURNS,
        },
        "machine": info,
        "peak": limit,
        "flops_per_image": spec.TOTAL_FLOPS,
        "entries": [
            mark_effective(summary(e, spec.TOTAL_FLOPS, peak.peak_of(limit, e.precision, e.threads, e.unit), judge))
            for e in entries
        ],
        "extrapolations": [extrapolation],
        "contention": contention.summary(),
    }
    if sweep:
        data["batch_sweep"] = sweep
    contention.check_limits(limit, data["entries"], emulated=bool((data["machine"].get("isa") or {}).get("emulated")))
    data["contention"] = contention.summary()
    print(report.table(data))
    if contention.busy:
        # Its numbers are kept, as a file of their own, but not published over a quiet run's.
        path = results.save(data, out_dir, latest=False)
        say(
            f"bench: WARNING: {contention.reason}. The figures are not trustworthy: saved to {path} only; "
            f"latest.json, the charts and the README are unchanged. Re-run on a quiet machine."
        )
        return path
    text = report.readme_text(readme, data) if readme is not None else None
    if readme is not None and text is None:
        say(f"bench: {readme} has no results markers; table not written")
    pairs = chart.render(data, out_dir)
    try:
        with files.signals_held():  # results, charts and table change together, or not at all
            path = results.save(data, out_dir)
            chart.publish(pairs)
            if readme is not None and text is not None:
                files.write_atomic(readme, text)
    finally:
        chart.discard(pairs)
    say(f"bench: wrote {path}, {out_dir / 'latest.json'} and the charts in {out_dir}/")
    return path


# A peak on 2 cores under this many times the 1-core peak: a core was taken while it was measured.
PEAK_SCALING = 1.5


class Contention:
    """Is another process holding a core? Checked at the start and the end of the run with the threads'
    calibration (bench/calibration.py): N threads should run their per-thread work as fast as one does.
    Two benches at once published a 2-thread peak of 86-94 GFLOP/s (about 200 alone) without this."""

    def __init__(self, cores: int) -> None:
        self.cores = cores
        self.readings: dict[str, float] = {}
        self.beyond_limits: list[str] = []  # figures no quiet machine can give
        self.calibration = Calibration("threads", cores) if cores > 1 else None

    def check(self, when: str) -> None:
        if self.calibration is None:
            return
        efficiency = float(np.median([self.calibration().efficiency for _ in range(5)]))
        self.readings[when] = round(efficiency, 3)
        if efficiency < BUSY_EFFICIENCY:
            say(
                f"bench: WARNING ({when} of the run): {self.cores} threads ran at {efficiency:.0%} of one thread's "
                "speed: another process is using the cores, and every multi-threaded figure will suffer"
            )

    def check_limits(self, limit: dict, rows: list[dict], emulated: bool = False) -> None:
        """A measured rate above its peak, or a peak on N cores well under N times one core's, means a core
        was taken while the peak was measured: a busy machine, not a result. (1.5x for 2 cores: a quiet
        run measures 1.9-2.0x.) With an emulated target the peaks are the target's, and only the stages are
        compiled for it: the peers run the host's own instructions (AVX-512, VNNI), so their rates are not
        held to those peaks. Nor are the int8 peers' on a CPU with a matrix unit the int8 peak does not
        measure (AMX: OpenVINO int8 ran at 107% of the VNNI peak on a Sapphire Rapids)."""
        one, every = limit["gflops_1_thread"], limit["gflops_all_threads"]
        if self.cores > 1 and every < PEAK_SCALING * one:
            self.beyond_limits.append(f"the FMA peak on {self.cores} threads ({every} GFLOP/s) is under "
                                      f"{PEAK_SCALING}x the 1-thread one ({one})")  # fmt: skip
        for row in rows:
            fraction = row.get("peak_fraction")
            unmeasured = row.get("precision") == "int8" and limit.get("int8_unmeasured")  # what the peak lacks
            if row.get("kind") != "stage" and (emulated or unmeasured):
                continue
            if fraction is not None and fraction > 1.0 and not row.get("effective"):
                peak_name = peak.name_of(limit, row.get("precision", "fp32"), row.get("unit"))
                self.beyond_limits.append(f"{row['name']} ran at {fraction:.0%} of the {peak_name}")

    @property
    def busy(self) -> bool:
        return any(e < BUSY_EFFICIENCY for e in self.readings.values()) or bool(self.beyond_limits)

    @property
    def reason(self) -> str:
        if self.beyond_limits:
            past = "; ".join(self.beyond_limits)
            return f"the machine was busy during the run: it measured past its limits ({past})"
        worst = min(self.readings.values(), default=1.0)
        return f"the machine was busy during the run ({self.cores} threads at {worst:.0%} of one thread's speed)"

    def summary(self) -> dict:
        return {"threads_efficiency": self.readings, "busy": self.busy, "threshold": BUSY_EFFICIENCY,
                "beyond_limits": self.beyond_limits}  # fmt: skip


def _threading_layer() -> str | None:
    try:
        return numba.threading_layer()
    except ValueError:  # no parallel kernel ran in this process
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stages", default=None, help="e.g. 01,06 (default: every stage)")
    parser.add_argument("--quick", action="store_true", help="a short pass: fewer repeats, smaller budgets")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder for the results and charts")
    parser.add_argument("--readme", default=str(ROOT / "README.md"), help="README to update ('' for none)")
    parser.add_argument("--cpp", default=None, metavar="CPP_SRC", help="a checkout of cv_learning_resnet50 to run too")
    args = parser.parse_args(argv)
    np.seterr(all="ignore")
    interrupt.catch_kill()  # nothing half-written
    try:
        run(args.stages, args.quick, args.out, Path(args.readme) if args.readme else None, args.cpp)
    except LadderError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nbench: interrupted; results are written whole or not at all, earlier ones untouched", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    interrupt.leave(main())
