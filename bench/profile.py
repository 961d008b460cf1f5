"""`make profile STAGE=06`: time, GFLOP/s and share of the machine's peak for every layer of one stage.

The stage is not instrumented: every stage exposes its forward pass as a list of steps (`layer_steps`),
and this times each step from the outside, the best of several passes. Writes a table to the terminal and
results/profile-<stage>.png and .json.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import Patch

from bench import peak
from bench.chart import publish, save_figure
from bench.results import write_atomic
from common import spec, stages
from common.errors import LadderError
from common.images import load_batch, sample_images
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


def kind(step: spec.Step) -> str:
    return f"conv {step.conv.kernel}x{step.conv.kernel}" if step.conv else step.op


def measure(stage: str, passes: int) -> tuple[str, int, list[dict], dict]:
    info = stages.find(stage)
    module = stages.load(info)
    store = WeightStore()
    model = module.ResNet50(store)
    threads = getattr(model, "threads", 1)
    x = load_batch(sample_images()[:1])[0]
    model(x)  # compile, warm the caches
    best = [float("inf")] * len(spec.STEPS)
    for _ in range(passes):
        for i, (_, run) in enumerate(model.layer_steps(x)):
            t0 = time.perf_counter()
            run()
            best[i] = min(best[i], time.perf_counter() - t0)
    limit = peak.measure(threads, repeats=3)
    top = limit["gflops_all_threads"] if threads > 1 else limit["gflops_1_thread"]
    rows = []
    for step, seconds in zip(spec.STEPS, best, strict=True):
        gflops = 2 * step.macs / seconds / 1e9 if step.macs else 0.0
        rows.append(
            {
                "layer": step.name,
                "op": kind(step),
                "shape": "x".join(map(str, step.shape)),
                "ms": round(seconds * 1e3, 3),
                "gflops": round(gflops, 1),
                "peak_fraction": round(gflops / top, 3),
            }
        )
    return info.name, threads, rows, limit


def print_table(name: str, threads: int, rows: list[dict], top: float) -> None:
    total = sum(r["ms"] for r in rows)
    print(f"{name}, {threads} thread(s): {total:.1f} ms per image in {len(rows)} steps; peak {top:.0f} GFLOP/s")
    print(f"{'layer':24s} {'op':8s} {'output':>13s} {'ms':>8s} {'share':>6s} {'GFLOP/s':>8s} {'of peak':>8s}")
    for r in rows:
        print(
            f"{r['layer']:24s} {r['op']:8s} {r['shape']:>13s} {r['ms']:8.2f} {100 * r['ms'] / total:5.1f}% "
            f"{r['gflops']:8.1f} {100 * r['peak_fraction']:7.1f}%"
        )


def chart(name: str, threads: int, rows: list[dict], top: float, path: Path) -> None:
    publish([save_figure(figure(name, threads, rows, top), path, dpi=100)])


def figure(name: str, threads: int, rows: list[dict], top: float):
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(14, 8), sharex=True)
    x = range(len(rows))
    colours = [OP_COLOURS.get(r["op"], "grey") for r in rows]
    ax1.bar(x, [r["ms"] for r in rows], color=colours)
    ax1.set_ylabel("ms per image")
    ax1.set_title(f"{name} on {threads} thread(s): {sum(r['ms'] for r in rows):.1f} ms per image, by layer")
    # Legend patches coloured explicitly, face and edge: the committed chart once showed them all blue.
    legend = [Patch(facecolor=c, edgecolor=c, label=op) for op, c in OP_COLOURS.items()]
    ax1.legend(handles=legend, fontsize=8, ncol=6)
    ax2.bar(x, [r["gflops"] for r in rows], color=colours)
    ax2.axhline(top, color="#d62728", linestyle="--")
    ax2.text(len(rows) - 1, top, f"measured peak {top:.0f} GFLOP/s", ha="right", va="bottom", color="#d62728")
    ax2.set_ylabel("GFLOP/s")
    ax2.set_xticks(list(x), [r["layer"] for r in rows], rotation=90, fontsize=6)
    return fig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--stage", default="06")
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    try:
        name, threads, rows, limit = measure(args.stage, args.passes)
    except LadderError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    top = limit["gflops_all_threads"] if threads > 1 else limit["gflops_1_thread"]
    print_table(name, threads, rows, top)
    args.out.mkdir(parents=True, exist_ok=True)
    chart(name, threads, rows, top, args.out / f"profile-{name}.png")
    data = {
        "stage": name,
        "threads": threads,
        "peak": limit,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "layers": rows,
    }
    write_atomic(args.out / f"profile-{name}.json", json.dumps(data, indent=1) + "\n")
    print(f"wrote {args.out / f'profile-{name}.png'} and .json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
