"""Charts drawn from a results file alone: `make chart` redraws them (and the README table) without re-running.

latency.png     batch-1 latency of every stage and peer, log scale, with the C++ original's rungs and the
                pure-Python extrapolation for scale
speedup.png     each stage against 01 and against the stage before (log scale)
throughput.png  images per second at the larger batch
roofline.png    GFLOP/s against the measured FMA peak drawn as the limit (and numpy's sgemm), 1 thread and all cores;
                int8 rows in GOP/s against the int8 peak
scaling.png     images per second against batch size (1-16), the fastest stage, 06 and ONNX Runtime
overview.png    the first four together, for the README
"""

import argparse
import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench import report, results
from common import files, interrupt
from common.errors import LadderError
from common.paths import RESULTS_DIR, ROOT

STAGE_1, STAGE_N, PEER_1, PEER_N = "#1f77b4", "#08306b", "#bdbdbd", "#636363"


def colour(entry: dict, cores: int) -> str:
    many = entry["threads"] > 1
    if entry["kind"] == "stage":
        return STAGE_N if many else STAGE_1
    return PEER_N if many else PEER_1


def name(entry: dict) -> str:
    """A peer always says its thread count; a stage when it has several (06 at 1 and at all cores)."""
    several = entry["kind"] == "peer" or "@" in entry["name"]
    return f"{entry['label']} ({entry['threads']} thr)" if several else entry["label"]


def cpp_marker_label(res: dict) -> str:
    where = "measured in this run" if report.cpp_measured(res) else "its author's machine"
    return f"C++ original, same rung ({where})"


def latency(ax, res: dict) -> None:
    entries = report.ok_entries(res)
    cores = res["peak"]["threads_all"]
    labels = [name(e) for e in entries]
    values = [report.median(e) for e in entries]
    colours = [colour(e, cores) for e in entries]
    for x in res.get("extrapolations", []):
        labels.append(x["name"])
        values.append(x["latency_s"] * 1e3)
        colours.append("white")
    y = range(len(labels))
    bars = ax.barh(y, values, color=colours, edgecolor="black", linewidth=0.5)
    if res.get("extrapolations"):
        bars[-1].set_hatch("//")
    cpp = {i: e["cpp_ms"] for i, e in enumerate(entries) if e.get("cpp_ms")}
    for i, v in enumerate(values):  # the label right of the bar and of the C++ marker, whichever is further
        ax.text(max(v, cpp.get(i, 0)) * 1.15, i, report.fmt_ms(v), va="center", fontsize=7)
    if cpp:
        ax.scatter(
            list(cpp.values()),
            list(cpp),
            marker="|",
            s=160,
            color="#d62728",
            zorder=3,
            label=cpp_marker_label(res),
        )
        ax.legend(loc="upper right", fontsize=7)
    ax.set_yticks(list(y), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlim(min(values) / 2, max(values) * 8)
    ax.set_xlabel("batch-1 latency per image (ms, log scale)")
    ax.set_title("Latency")


def speedup(ax, res: dict) -> None:
    stages = report.stage_rows(res)
    if not stages:
        ax.set_axis_off()
        return
    first = report.median(stages[0])
    labels = [name(s) for s in stages]
    vs_first = [first / report.median(s) for s in stages]
    before = [report.previous_rung(stages, i) for i in range(len(stages))]
    vs_prev = [report.median(b) / report.median(s) if b else 1.0 for b, s in zip(before, stages, strict=True)]
    x = range(len(stages))
    ax.bar([i - 0.2 for i in x], vs_first, width=0.4, color=STAGE_1, label=f"vs {stages[0]['label']}")
    ax.bar([i + 0.2 for i in x], vs_prev, width=0.4, color="#ff7f0e", label="vs the stage before (same threads)")
    for i in x:
        ax.text(
            i - 0.2,
            vs_first[i] * 1.1,
            f"{vs_first[i]:.0f}x" if vs_first[i] >= 10 else f"{vs_first[i]:.1f}x",
            ha="center",
            fontsize=7,
        )
        if i:
            ax.text(i + 0.2, vs_prev[i] * 1.1, f"{vs_prev[i]:.1f}x", ha="center", fontsize=7)
    ax.set_yscale("log")
    ax.set_xticks(list(x), labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("speedup (log scale)")
    ax.axhline(1, color="black", linewidth=0.5)
    ax.legend(fontsize=7)
    ax.set_title("Speedup")


def throughput(ax, res: dict) -> None:
    entries = [e for e in report.ok_entries(res) if (e.get("throughput") or {}).get("images_per_s")]
    cores = res["peak"]["threads_all"]
    if not entries:
        ax.set_axis_off()
        return
    values = [e["throughput"]["images_per_s"] for e in entries]
    y = range(len(entries))
    ax.barh(y, values, color=[colour(e, cores) for e in entries], edgecolor="black", linewidth=0.5)
    for i, v in enumerate(values):
        ax.text(v * 1.02, i, f"{v:.1f}", va="center", fontsize=7)
    ax.set_yticks(list(y), [name(e) for e in entries], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, max(values) * 1.15)
    batch = entries[0]["throughput"]["batch"]
    ax.set_xlabel(f"images per second, batch of {batch}")
    ax.set_title("Throughput")


def roofline(ax, res: dict) -> None:
    entries = report.ok_entries(res)
    peak = res["peak"]
    cores = peak["threads_all"]
    values = [e["gflops"] for e in entries]
    x = range(len(entries))
    ax.bar(x, values, color=[colour(e, cores) for e in entries], edgecolor="black", linewidth=0.5)
    lines = [(peak["gflops_1_thread"], "#d62728", "--", "FMA peak, 1 thread")]
    lines.append((peak["sgemm_gflops_1_thread"], "#7f7f7f", "--", "numpy sgemm, 1 thread"))
    if cores > 1:
        lines.append((peak["gflops_all_threads"], "#d62728", "-", f"FMA peak, {cores} threads"))
        lines.append((peak["sgemm_gflops_all_threads"], "#7f7f7f", "-", f"numpy sgemm, {cores} threads"))
    if any(report.precision(e) == "int8" for e in entries):  # int8 rows' limit: the 4-byte dot product's
        unit = " (VNNI; AMX not measured)" if peak.get("int8_unmeasured") == "AMX" else ""
        lines.append((peak["int8_gops_1_thread"], "#2ca02c", "--", f"int8 peak{unit}, 1 thread"))
        if cores > 1:
            lines.append((peak["int8_gops_all_threads"], "#2ca02c", "-", f"int8 peak{unit}, {cores} threads"))
        if "amx_gops_1_thread" in peak:  # the matrix unit's: 11's rows and the int8 peers' limit
            lines.append((peak["amx_gops_1_thread"], "#9467bd", "--", "AMX peak, 1 thread"))
            if cores > 1:
                lines.append((peak["amx_gops_all_threads"], "#9467bd", "-", f"AMX peak, {cores} threads"))
    for value, tint, style, what in lines:  # peak labels on the left, sgemm's on the right: they can be close
        ax.axhline(value, color=tint, linestyle=style, linewidth=1)
        at, align = (len(entries) - 0.6, "right") if what.startswith("numpy") else (-0.4, "left")
        box = {"facecolor": "white", "edgecolor": "none", "alpha": 0.85, "pad": 1}
        ax.text(at, value * 1.03, f"{what}: {value:.0f}", ha=align, va="bottom", fontsize=7, color=tint, bbox=box,
                zorder=5)  # fmt: skip
    for i, e in enumerate(entries):
        effective = "\neffective" if e.get("effective") else ""  # fewer multiplications: may pass the peak
        int8 = "\nof int8" if report.precision(e) == "int8" else ""
        ax.text(i, values[i] * 1.1, f"{100 * e['peak_fraction']:.0f}%{effective}{int8}", ha="center", fontsize=6)
    ax.set_yscale("log")
    ax.set_ylim(min(values) / 2, max(value for value, *_ in lines) * 3)
    ax.set_xticks(list(x), [name(e) for e in entries], rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("GFLOP/s, int8 GOP/s (log); % of its peak")
    ax.set_title("Against the machine's limits (measured FMA and int8 peaks; sgemm for scale)")


def scaling(ax, res: dict) -> None:
    """Images per second against batch size (the full run's batch sweep), on every core."""
    sweep = res.get("batch_sweep")
    if not sweep:
        ax.text(0.5, 0.5, "no batch sweep in this run (QUICK=1 skips it)", ha="center", va="center")
        ax.set_axis_off()
        return
    for key, series in sweep["series"].items():
        points = [(b, v) for b, v in zip(sweep["batches"], series["images_per_s"], strict=True) if v]
        style = "--" if key.startswith("onnxruntime") else "-"
        ax.plot(*zip(*points, strict=True), style, marker="o", label=f"{series['label']} ({key.split('@')[-1]} thr)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sweep["batches"], [str(b) for b in sweep["batches"]])
    ax.set_xlabel("batch size (images per call)")
    ax.set_ylabel("images per second")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    ax.set_title(f"How throughput grows with the batch, {sweep['threads']} threads")


PANELS = {"latency": latency, "speedup": speedup, "throughput": throughput, "roofline": roofline}
EXTRA = {"scaling": scaling}  # their own files, not in the overview


def subtitle(res: dict) -> str:
    cpu = res["machine"]["cpu"]
    kinds = "fp32 and int8" if any(report.precision(e) == "int8" for e in report.ok_entries(res)) else "fp32"
    return f"ResNet-50, {kinds}, {cpu['model']}, {cpu['usable_cpus']} cores, {res['created'][:10]}"


def render(res: dict, folder: Path) -> list[tuple[Path, Path]]:
    """Draw every chart into a temporary file of this process beside its final name: [(temporary, final)].
    Nothing a reader sees changes until `publish`; on any failure the temporaries are removed."""
    folder.mkdir(parents=True, exist_ok=True)
    pairs: list[tuple[Path, Path]] = []
    try:
        for key, panel in PANELS.items():
            fig, ax = plt.subplots(figsize=(9, 5.5))
            panel(ax, res)
            fig.suptitle(subtitle(res), fontsize=8, y=0.995)
            pairs.append(save_figure(fig, folder / f"{key}.png"))
        for key, panel in EXTRA.items():
            fig, ax = plt.subplots(figsize=(8, 5))
            panel(ax, res)
            fig.suptitle(subtitle(res), fontsize=8, y=0.995)
            pairs.append(save_figure(fig, folder / f"{key}.png"))
        fig, axes = plt.subplots(2, 2, figsize=(16, 11))
        for ax, panel in zip(axes.flat, PANELS.values(), strict=True):
            panel(ax, res)
        fig.suptitle(subtitle(res), fontsize=10)
        pairs.append(save_figure(fig, folder / "overview.png"))
    except BaseException:
        discard(pairs)
        raise
    return pairs


def publish(pairs: list[tuple[Path, Path]]) -> list[Path]:
    """Rename the rendered charts to their names (each rename atomic)."""
    for tmp, final in pairs:
        tmp.replace(final)
    return [final for _, final in pairs]


def discard(pairs: list[tuple[Path, Path]]) -> None:
    for tmp, _ in pairs:
        tmp.unlink(missing_ok=True)


def save_figure(fig, path: Path, dpi: int = 110) -> tuple[Path, Path]:
    """Into a temporary file of this process beside `path`: (temporary, path). A concurrent run has its own."""
    tmp = path.with_name(f".tmp-{path.name}.{os.getpid()}")
    try:
        fig.tight_layout()
        fig.savefig(tmp, dpi=dpi, format="png")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)
    return tmp, path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.chart", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--results", type=Path, default=RESULTS_DIR / "latest.json")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder for the PNGs (default: results/)")
    parser.add_argument("--readme", default=str(ROOT / "README.md"), help="README to update ('' for none)")
    args = parser.parse_args(argv)
    interrupt.catch_kill()
    try:
        res = results.load(args.results)
        readme = Path(args.readme) if args.readme else None
        text = report.readme_text(readme, res) if readme and readme.exists() else None
        if readme and readme.exists() and text is None:
            print(f"{readme}: no results markers; table not written", file=sys.stderr)
        pairs = render(res, args.out)
        try:
            with files.signals_held():  # the charts and the table change together, or not at all
                for path in publish(pairs):
                    print(path)
                if readme is not None and text is not None:
                    files.write_atomic(readme, text)
        finally:
            discard(pairs)
    except LadderError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("chart: interrupted; the charts and README are as they were", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    interrupt.leave(main())
