"""`make profile STAGE=06 [THREADS=1]`: every layer of one stage next to ONNX Runtime's, at equal threads.

The stage is not instrumented: every stage exposes its forward pass as a list of steps (`layer_steps`),
and this times each step from the outside, the best of several passes. ONNX Runtime runs the same weights
and image at the same thread count with its own per-node profiler (bench/ort_profile.py), mapped to the
same layer names (for the int8 stage, ONNX Runtime on the int8 model: common/quantized.py). Writes a table
(with the layers where the stage loses most) to the terminal, and results/profile-<stage>-<N>thr.png and
.json. GFLOP/s are against the measured FMA peak; an int8 stage's GOP/s against the int8 peak.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Patch

from bench import ort_profile, peak
from bench.chart import publish, save_figure
from common import quantized, spec, stages
from common.errors import LadderError
from common.files import signals_held, write_atomic
from common.images import load_batch, sample_images
from common.inputs import check_threads
from common.paths import RESULTS_DIR
from common.weights import WeightStore

OP_COLOURS = {
    "conv 1x1": "#1f77b4",
    "conv 3x3": "#ff7f0e",
    "conv 7x7": "#2ca02c",
    "maxpool": "#9467bd",
    "avgpool": "#8c564b",
    "fc": "#e377c2",
}
ORT_COLOUR = "#bdbdbd"
WORST = 8  # layers listed where the stage loses most


def kind(step: spec.Step) -> str:
    return f"conv {step.conv.kernel}x{step.conv.kernel}" if step.conv else step.op


def build(stage: str, store: WeightStore, threads: int | None):
    info = stages.find(stage)
    module = stages.load(info)
    if stages.threaded(module):
        import numba

        threads = numba.config.NUMBA_NUM_THREADS if threads is None else threads
        return info, module.ResNet50(store, threads=check_threads(threads, numba.config.NUMBA_NUM_THREADS)), threads
    if threads not in (None, 1):
        raise LadderError(f"{info.name} runs on one thread; THREADS={threads} is for stages 06 and later")
    return info, module.ResNet50(store), 1


def positive(text: str) -> int:
    """A count of at least 1, for argparse."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value


def top_of(limit: dict, threads: int, precision: str) -> tuple[float, str]:
    """The peak a stage of this precision is held to at this thread count, and its name."""
    return peak.peak_of(limit, precision, threads), "int8 peak" if precision == "int8" else "FMA peak"


def measure(stage: str, passes: int, threads: int | None = None) -> tuple[str, int, list[dict], dict]:
    store = WeightStore()
    info, model, threads = build(stage, store, threads)
    precision = getattr(stages.load(info), "PRECISION", "fp32")
    x = load_batch(sample_images()[:1])[0]
    model(x)  # compile, warm the caches
    best = [float("inf")] * len(spec.STEPS)
    for _ in range(passes):
        for i, (_, run) in enumerate(model.layer_steps(x)):
            t0 = time.perf_counter()
            run()
            best[i] = min(best[i], time.perf_counter() - t0)
    graph = quantized.int8_model(store) if precision == "int8" else None
    ort = ort_profile.layer_times(store, x, threads, passes, graph)
    limit = peak.measure(threads, repeats=3)
    limit["precision"] = precision
    top, _ = top_of(limit, threads, precision)
    rows = []
    for step, seconds in zip(spec.STEPS, best, strict=True):
        theirs = ort.get(step.name, 0.0)
        rows.append(
            {
                "layer": step.name,
                "op": kind(step),
                "shape": "x".join(map(str, step.shape)),
                "ms": round(seconds * 1e3, 3),
                "gflops": round(2 * step.macs / seconds / 1e9, 1) if step.macs else 0.0,
                "peak_fraction": round(2 * step.macs / seconds / 1e9 / top, 3) if step.macs else 0.0,
                "ort_ms": round(theirs * 1e3, 3),
                "ort_gflops": round(2 * step.macs / theirs / 1e9, 1) if step.macs and theirs else 0.0,
            }
        )
    if ort.get(ort_profile.OTHER):
        rows.append(
            {"layer": ort_profile.OTHER, "op": "other", "shape": "", "ms": 0.0, "gflops": 0.0, "peak_fraction": 0.0,
             "ort_ms": round(ort[ort_profile.OTHER] * 1e3, 3), "ort_gflops": 0.0}
        )  # fmt: skip
    return info.name, threads, rows, limit


def worst(rows: list[dict], count: int = WORST) -> list[dict]:
    """The layers where the stage loses most time to ONNX Runtime, most first."""
    return sorted((r for r in rows if r["ms"] > r["ort_ms"]), key=lambda r: r["ort_ms"] - r["ms"])[:count]


def print_table(name: str, threads: int, rows: list[dict], top: float, peak_name: str = "FMA peak") -> None:
    total, ort_total = sum(r["ms"] for r in rows), sum(r["ort_ms"] for r in rows)
    print(
        f"{name} on {threads} thread(s): {total:.1f} ms per image in {len(spec.STEPS)} steps; ONNX Runtime on "
        f"{threads}: {ort_total:.1f} ms ({total / ort_total:.2f}x); {peak_name} {top:.0f} G(FL)OP/s"
    )
    head = ("layer", "op", "output", "ms", "GFLOP/s", "of peak", "ORT ms", "x ORT")
    print("{:24s} {:8s} {:>13s} {:>8s} {:>8s} {:>8s} {:>8s} {:>6s}".format(*head))
    for r in rows:
        ratio = f"{r['ms'] / r['ort_ms']:6.2f}" if r["ort_ms"] else "     -"
        print(
            f"{r['layer']:24s} {r['op']:8s} {r['shape']:>13s} {r['ms']:8.2f} {r['gflops']:8.1f} "
            f"{100 * r['peak_fraction']:7.1f}% {r['ort_ms']:8.2f} {ratio}"
        )
    print(f"\nwhere {name} loses most to ONNX Runtime:")
    for r in worst(rows):
        lost = r["ms"] - r["ort_ms"]
        print(f"  {r['layer']:24s} {r['op']:8s} +{lost:.2f} ms ({r['ms']:.2f} against {r['ort_ms']:.2f})")


def chart(name: str, threads: int, rows: list[dict], top: float, path: Path, peak_name: str) -> tuple[Path, Path]:
    return save_figure(figure(name, threads, rows, top, peak_name), path, dpi=100)


def figure(name: str, threads: int, rows: list[dict], top: float, peak_name: str = "FMA peak"):
    rows = [r for r in rows if r["op"] != "other"]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(15, 8.5), sharex=True)
    x = np.arange(len(rows))
    colours = [OP_COLOURS.get(r["op"], "grey") for r in rows]
    has_ort = any(r.get("ort_ms") for r in rows)
    width = 0.42 if has_ort else 0.8
    ours_at = x - width / 2 if has_ort else x
    theirs = {"color": ORT_COLOUR, "edgecolor": "#636363", "hatch": "//"}
    ax1.bar(ours_at, [r["ms"] for r in rows], width, color=colours)
    if has_ort:
        ax1.bar(x + width / 2, [r["ort_ms"] for r in rows], width, **theirs)
    total = sum(r["ms"] for r in rows)
    ort_total = sum(r.get("ort_ms", 0) for r in rows)
    title = f"{name} on {threads} thread(s): {total:.1f} ms per image, by layer"
    ax1.set_title(title + (f"; ONNX Runtime {ort_total:.1f} ms (hatched grey bars)" if has_ort else ""))
    ax1.set_ylabel("ms per image")
    # Legend patches coloured explicitly, face and edge: the committed chart once showed them all blue.
    legend = [Patch(facecolor=c, edgecolor=c, label=op) for op, c in OP_COLOURS.items()]
    if has_ort:
        legend.append(Patch(facecolor=ORT_COLOUR, edgecolor="#636363", hatch="//", label="ONNX Runtime"))
    ax1.legend(handles=legend, fontsize=8, ncol=len(legend))
    ax2.bar(ours_at, [r["gflops"] for r in rows], width, color=colours)
    if has_ort:
        ax2.bar(x + width / 2, [r["ort_gflops"] for r in rows], width, **theirs)
    ax2.axhline(top, color="#d62728", linestyle="--")
    unit = "GOP/s" if peak_name.startswith("int8") else "GFLOP/s"
    ax2.text(len(rows) - 1, top, f"{peak_name} {top:.0f} {unit}", ha="right", va="bottom", color="#d62728")
    ax2.set_ylabel(unit)
    ax2.set_ylim(0, top * 1.1)
    ax2.set_xticks(list(x), [r["layer"] for r in rows], rotation=90, fontsize=6)
    return fig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", default="06")
    parser.add_argument("--threads", type=int, default=None, help="default: 1, or every core for 06 and later")
    parser.add_argument("--passes", type=positive, default=5, help="passes over the network (best of them is kept)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    try:
        name, threads, rows, limit = measure(args.stage, args.passes, args.threads)
    except LadderError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    top, peak_name = top_of(limit, threads, limit["precision"])
    print_table(name, threads, rows, top, peak_name)
    args.out.mkdir(parents=True, exist_ok=True)
    base = args.out / f"profile-{name}-{threads}thr"
    data = {
        "stage": name,
        "threads": threads,
        "peak": limit,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "layers": rows,
        "worst_against_onnxruntime": [r["layer"] for r in worst(rows)],
    }
    figure_files = chart(name, threads, rows, top, base.with_suffix(".png"), peak_name)
    with signals_held():
        publish([figure_files])
        write_atomic(base.with_suffix(".json"), json.dumps(data, indent=1) + "\n")
    print(f"wrote {base}.png and .json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
