"""Benchmark results as data: the schema, and writing them so that nothing is ever lost or half-written.

A results file is one JSON object:

    schema        int, 2: this layout (2: the peak is the FMA peak, sgemm beside it); another is refused
    created       ISO time the run finished
    settings      {"quick", "images": [file names], "throughput_batch", "budget_s", "max_repeats", "thread_counts"}
    machine       bench/machine.py's description: CPU, flags, cores, BLAS, versions, git commit, environment_traps
    peak          {"method", "gflops_1_thread", "gflops_all_threads", "threads_all"}: the measured FMA peak;
                  {"sgemm_method", "sgemm_gflops_1_thread", "sgemm_gflops_all_threads"}: numpy's sgemm;
                  {"int8_method", "int8_gops_1_thread", "int8_gops_all_threads"}: the int8 multiply-add peak
                  (4-byte dot products in registers, 2 operations per multiply-add; absent in older files)
    contention    {"threads_efficiency": {"start", "end"}, "busy", "threshold"}: was another process on a core
    flops_per_image   the spec's FLOP count (2 x MACs of the convs and the classifier)
    entries       one per stage or peer at one thread count, in the order run:
        name          "01_naive", "06_threads@2" (a threaded stage, at each thread count), "onnxruntime@1", ...
        label         what charts call it ("01_naive", "ONNX Runtime")
        kind          "stage" or "peer"
        threads       threads it ran with
        status        "ok", "wrong" (did not match the judge: not timed), "error", "missing" (not installed),
                      "skipped" (a stage that cannot do its idea on this target: message says what it needs)
        precision     "int8" for the int8 stage and engines (absent: fp32)
        message       why, when status is not "ok"
        build_s, first_call_s, compile_s    construction, first call (run part) and numba compile time
        verdict       {"max_abs_diff", "tolerance", "judge"} of the check against the judge: "fp32", "int8"
                      (ONNX Runtime int8, common/quantized.py) or "agreement" (another engine's int8: none)
        agreement     int8 entries: {"top1_agree", "images", "max_abs_diff_fp32"} against the fp32 judge
        latency_ms    {"median", "min", "p90", "samples"} batch-1, over the sample images in turn
        throughput    {"batch", "images_per_s", "samples_s"} or {"batch", "skipped": reason}
        gflops        flops_per_image / median latency (for int8: operations, counted as FLOPs are)
        peak_fraction gflops / the peak of its precision (FMA or int8) at the same thread count
        effective     (stages) true when gflops is an effective rate: direct-conv FLOPs / time of a stage
                      that multiplies less (Winograd); marked so in tables and charts
        cpp_ms        stages 01-06: the latency of the C++ original's rung that the stage mirrors, at the same
                      thread count: measured in this run when `cpp_measured`, else its author's published
                      figure (another machine)
        cpp_measured  true when cpp_ms was measured in this run (`make cpp`)
        cpp_rung      on the C++ original's own entries ("cpp_1st_origin@1", kind "peer"): the stage it
                      mirrors ("01"); their verdict is {"top1_matches", "images", "max_top1_logit_diff"}
    extrapolations    [{"name", "what", "mflops", "latency_s", ...}]: lines that were not run end to end
    batch_sweep   (full runs) {"threads", "batches", "series": {entry name: {"label", "images_per_s"}}}

`save` writes `results/<time>-<pid>.json` (never overwriting an earlier file) and then replaces
`results/latest.json`, each through a temporary file and an atomic rename: an interrupted run leaves the
earlier results as they were and no partial JSON.
"""

import json
import math
import os
import time
from pathlib import Path

from common.errors import ResultsError
from common.files import FileRefused, read_regular, write_atomic

SCHEMA = 2
REQUIRED = ("schema", "created", "settings", "machine", "peak", "flops_per_image", "entries")


MAX_RESULTS_BYTES = 64 * 2**20  # a full run writes about 30 KB


# What a chart can draw: no latency of a week, no rate past an exaflop, no label longer than a line.
MOST = 1e12
MOST_LABEL = 200


def _finite(value: object, positive: bool = True) -> bool:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return ok and (value > 0 if positive else value >= 0) and value < MOST


def _need(ok: bool, origin: object, what: str) -> None:
    if not ok:
        raise ResultsError(f"{origin}: {what}")


def validate(results: object, origin: object = "results") -> dict:
    """Every field the table and the charts read, checked, so a damaged or hand-edited file is one line
    naming what is wrong instead of a traceback (or a NaN) halfway through drawing."""
    _need(isinstance(results, dict), origin, "not a JSON object")
    assert isinstance(results, dict)
    if results.get("schema") != SCHEMA:
        raise ResultsError(
            f"{origin}: results schema {results.get('schema')!r} is not {SCHEMA}, the one this code reads; "
            "re-run `make bench` (or check out the commit that wrote it)"
        )
    missing = [k for k in REQUIRED if k not in results]
    _need(not missing, origin, f"results lack {', '.join(missing)}")
    _need(isinstance(results["created"], str), origin, "'created' is not a date")
    settings, machine, peak = results["settings"], results["machine"], results["peak"]
    _need(isinstance(settings, dict) and isinstance(settings.get("images"), list), origin, "settings lack images")
    cpu = machine.get("cpu") if isinstance(machine, dict) else None
    _need(
        isinstance(cpu, dict)
        and isinstance(cpu.get("model"), str)
        and isinstance(cpu.get("usable_cpus"), int)
        and isinstance(cpu.get("flags"), list),
        origin,
        "machine.cpu lacks model, usable_cpus or flags",
    )
    _need(isinstance(machine.get("git_commit"), str), origin, "machine lacks git_commit")
    _need(isinstance(peak, dict), origin, "peak is not an object")
    for key in ("gflops_1_thread", "gflops_all_threads", "sgemm_gflops_1_thread", "sgemm_gflops_all_threads"):
        _need(_finite(peak.get(key)), origin, f"peak.{key} is not a positive number")
    _need(isinstance(peak.get("threads_all"), int) and peak["threads_all"] >= 1, origin, "peak.threads_all")
    _need(_finite(results["flops_per_image"]), origin, "flops_per_image is not a positive number")
    entries = results["entries"]
    _need(isinstance(entries, list) and entries, origin, "results hold no entries")
    for i, entry in enumerate(entries):
        _need(isinstance(entry, dict), origin, f"entry {i} is not an object")
        for key in ("name", "label", "kind", "threads", "status"):
            _need(key in entry, origin, f"entry {i} lacks {key!r}")
        _need(isinstance(entry["name"], str) and isinstance(entry["label"], str), origin, f"entry {i}: name/label")
        where = f"entry {entry['name'][:MOST_LABEL]!r}"
        _need(max(len(entry["name"]), len(entry["label"])) <= MOST_LABEL, origin,
              f"{where}: a name or label longer than {MOST_LABEL} characters")  # fmt: skip
        _need(entry["kind"] in ("stage", "peer"), origin, f"{where}: kind {entry['kind']!r}")
        _need(isinstance(entry["threads"], int) and entry["threads"] >= 1, origin, f"{where}: threads")
        _need(entry["threads"] in (1, peak["threads_all"]), origin, f"{where}: no peak for {entry['threads']} threads")
        _need(entry.get("precision", "fp32") in ("fp32", "int8"), origin, f"{where}: precision")
        if entry.get("precision") == "int8" and entry["status"] == "ok":
            for key in ("int8_gops_1_thread", "int8_gops_all_threads"):
                _need(_finite(peak.get(key)), origin, f"peak.{key} is not a positive number (an int8 entry needs it)")
        if entry["status"] != "ok":
            continue
        latency = entry.get("latency_ms")
        _need(isinstance(latency, dict), origin, f"{where}: no latency_ms")
        for key in ("median", "min", "p90"):
            _need(_finite(latency.get(key)), origin, f"{where}: latency_ms.{key} is not a number in (0, {MOST:g})")
        for key in ("gflops", "peak_fraction"):
            _need(_finite(entry.get(key), positive=False), origin, f"{where}: {key} is not a number")
        throughput = entry.get("throughput")
        _need(throughput is None or isinstance(throughput, dict), origin, f"{where}: throughput")
        if throughput and "images_per_s" in throughput:
            _need(_finite(throughput["images_per_s"]), origin, f"{where}: throughput.images_per_s")
        _need(entry.get("cpp_ms") is None or _finite(entry["cpp_ms"]), origin, f"{where}: cpp_ms")
        _need(isinstance(entry.get("cpp_measured", False), bool), origin, f"{where}: cpp_measured")
    _need(any(e["status"] == "ok" for e in entries), origin, "no entry was timed (every status is not 'ok')")
    sweep = results.get("batch_sweep")
    if sweep is not None:
        _need(isinstance(sweep, dict) and isinstance(sweep.get("batches"), list), origin, "batch_sweep.batches")
        _need(isinstance(sweep.get("series"), dict) and isinstance(sweep.get("threads"), int), origin, "batch_sweep")
        for key, series in sweep["series"].items():
            rates = series.get("images_per_s") if isinstance(series, dict) else None
            _need(
                isinstance(rates, list)
                and len(rates) == len(sweep["batches"])
                and all(r is None or _finite(r) for r in rates)
                and isinstance(series.get("label"), str),
                origin,
                f"batch_sweep.series[{key!r}]",
            )
    extrapolations = results.get("extrapolations", [])
    _need(isinstance(extrapolations, list), origin, "extrapolations is not a list")
    for x in extrapolations:
        named = isinstance(x, dict) and isinstance(x.get("name"), str)
        _need(named and _finite(x.get("latency_s")) and _finite(x.get("mflops")), origin, "an extrapolation's numbers")
    return results


def load(path: str | os.PathLike) -> dict:
    path = Path(path)
    try:
        data = json.loads(read_regular(path, MAX_RESULTS_BYTES).decode("utf-8"))
    except FileNotFoundError:
        raise ResultsError(f"{path}: no results file; run `make bench` first") from None
    except FileRefused as e:
        raise ResultsError(str(e)) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ResultsError(f"{path}: not readable JSON ({str(e).splitlines()[0]})") from None
    return validate(data, path)



def save(results: dict, folder: Path, latest: bool = True) -> Path:
    """Write the run under a new name (never an existing one) and, unless `latest` is False, point
    latest.json at it."""
    validate(results)
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=1) + "\n"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = folder / f"{stamp}-{os.getpid()}.json"
    n = 1
    while path.exists():
        path = folder / f"{stamp}-{os.getpid()}-{n}.json"
        n += 1
    write_atomic(path, text)
    if latest:
        write_atomic(folder / "latest.json", text)
    return path
