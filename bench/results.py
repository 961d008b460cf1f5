"""Benchmark results as data: the schema, and writing them so that nothing is ever lost or half-written.

A results file is one JSON object:

    schema        int, 1: this layout; a file with another number is refused, not guessed at
    created       ISO time the run finished
    settings      {"quick", "images": [file names], "throughput_batch", "budget_s", "max_repeats", "thread_counts"}
    machine       bench/machine.py's description: CPU, flags, cores, BLAS, versions, git commit, environment_traps
    peak          {"method", "gflops_1_thread", "gflops_all_threads", "threads_all"}: measured fp32 GEMM limit
    flops_per_image   the spec's FLOP count (2 x MACs of the convs and the classifier)
    entries       one per stage or peer at one thread count, in the order run:
        name          "01_naive", "onnxruntime@1", ...
        label         what charts call it ("01_naive", "ONNX Runtime")
        kind          "stage" or "peer"
        threads       threads it ran with
        status        "ok", "wrong" (did not match the judge: not timed), "error", "missing" (not installed)
        message       why, when status is not "ok"
        build_s, first_call_s, compile_s    construction, first call (run part) and numba compile time
        verdict       {"max_abs_diff", "tolerance"} of the check against the judge
        latency_ms    {"median", "min", "p90", "samples"} batch-1, over the sample images in turn
        throughput    {"batch", "images_per_s", "samples_s"} or {"batch", "skipped": reason}
        gflops        flops_per_image / median latency
        peak_fraction gflops / the peak at the same thread count
        cpp_ms        the C++ original's published latency for the same rung (another machine), stages only
    extrapolations    [{"name", "what", "mflops", "latency_s", ...}]: lines that were not run end to end

`save` writes `results/<time>-<pid>.json` (never overwriting an earlier file) and then replaces
`results/latest.json`, each through a temporary file and an atomic rename: an interrupted run leaves the
earlier results as they were and no partial JSON.
"""

import json
import os
import time
from pathlib import Path

from common.errors import ResultsError

SCHEMA = 1
REQUIRED = ("schema", "created", "settings", "machine", "peak", "flops_per_image", "entries")


def validate(results: dict, origin: object = "results") -> dict:
    if not isinstance(results, dict):
        raise ResultsError(f"{origin}: not a JSON object")
    if results.get("schema") != SCHEMA:
        raise ResultsError(
            f"{origin}: results schema {results.get('schema')!r} is not {SCHEMA}, the one this code reads; "
            "re-run `make bench` (or check out the commit that wrote it)"
        )
    missing = [k for k in REQUIRED if k not in results]
    if missing:
        raise ResultsError(f"{origin}: results lack {', '.join(missing)}")
    for entry in results["entries"]:
        for key in ("name", "label", "kind", "threads", "status"):
            if key not in entry:
                raise ResultsError(f"{origin}: an entry lacks {key!r}")
    return results


def load(path: str | os.PathLike) -> dict:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ResultsError(f"{path}: no results file; run `make bench` first") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ResultsError(f"{path}: not readable JSON ({str(e).splitlines()[0]})") from None
    return validate(data, path)


def write_atomic(path: Path, text: str) -> None:
    """Write through a temporary file in the same folder, then rename: readers see all or nothing."""
    tmp = path.parent / f".tmp-{path.name}.{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save(results: dict, folder: Path) -> Path:
    """Write the run under a new name (never an existing one) and point latest.json at it."""
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
    write_atomic(folder / "latest.json", text)
    return path
