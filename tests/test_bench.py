"""The benchmark's data path: the schema round-trips, charts and the README table come from a results file
alone, and a quick bench of two stages runs end to end and writes valid JSON."""

import json

import pytest

from bench import chart, report, results
from common.errors import ResultsError
from tests.processes import run_python


def test_schema_round_trips(small_results, tmp_path):
    path = results.save(small_results, tmp_path)
    assert results.load(path) == small_results
    assert results.load(tmp_path / "latest.json") == small_results
    again = results.save(small_results, tmp_path)
    assert again != path and path.exists(), "an earlier results file must never be overwritten"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.__setitem__("schema", 99), "schema 99 is not 2"),
        (lambda r: r.__setitem__("schema", 1), "schema 1 is not 2"),  # the sgemm-peak layout
        (lambda r: r.pop("peak"), "lack peak"),
        (lambda r: r["entries"][0].pop("status"), "lacks 'status'"),
    ],
)
def test_unknown_or_incomplete_results_are_refused(small_results, tmp_path, change, message):
    change(small_results)
    path = tmp_path / "r.json"
    path.write_text(json.dumps(small_results))
    with pytest.raises(ResultsError, match=message):
        results.load(path)


def test_corrupt_results_file_is_one_line_error(tmp_path, capsys):
    (tmp_path / "bad.json").write_text('{"schema": 1, "entr')
    assert chart.main(["--results", str(tmp_path / "bad.json"), "--readme", ""]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "bad.json" in err


def test_table_rows_and_ratios_come_from_the_data(small_results):
    text = report.table(small_results)
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    assert "20.0x" in rows["**02_vectorized**"]  # 10000 / 500 against 01 and against the stage before
    assert "6.67x" in rows["**02_vectorized**"]  # 500 ms / ONNX Runtime's 75 ms at 1 thread
    assert "2.00x" in rows["**06_threads**"]  # 80 / 40: against ONNX Runtime at the same 2 threads
    assert "16.92 s" in rows["**01_naive**"]
    assert "~24 min" in rows["pure Python (extrapolated)"]
    assert "torch@1: missing: not installed (make torch)" in text
    assert "OPENBLAS_CORETYPE" in report.header(small_results)


def test_charts_and_readme_table_from_a_results_file(small_results, tmp_path):
    path = results.save(small_results, tmp_path / "res")
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n{report.BEGIN}\nold table\n{report.END}\nafter\n")
    assert chart.main(["--results", str(path), "--out", str(tmp_path / "png"), "--readme", str(readme)]) == 0
    for name in ("latency", "speedup", "throughput", "roofline", "overview"):
        png = tmp_path / "png" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    text = readme.read_text()
    assert "old table" not in text and "before" in text and "after" in text
    assert report.table(small_results) in text
    assert chart.main(["--results", str(path), "--out", str(tmp_path / "png"), "--readme", str(readme)]) == 0
    assert readme.read_text() == text, "redrawing from the same data must give the same README"


def test_quick_bench_of_two_stages_end_to_end(store, tmp_path):
    run = run_python(
        *("-m", "bench.run", "--quick", "--stages", "02,04", "--out", str(tmp_path), "--readme", ""),
        env={"RESNET50_WEIGHTS": str(store.path)},
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    if (tmp_path / "latest.json").exists():
        data = results.load(tmp_path / "latest.json")
    else:  # a busy machine: its numbers are kept apart, and it says so
        assert "the machine was busy" in run.stderr, run.stderr[-3000:]
        (path,) = tmp_path.glob("2*.json")
        data = results.load(path)
    by_name = {e["name"]: e for e in data["entries"]}
    assert {"02_vectorized", "04_no_alloc", "numpy@1", "onnxruntime@1"} <= set(by_name)
    for name in ("02_vectorized", "04_no_alloc", "onnxruntime@1"):
        e = by_name[name]
        assert e["status"] == "ok", e
        assert e["latency_ms"]["min"] <= e["latency_ms"]["median"] <= e["latency_ms"]["p90"]
        assert e["verdict"]["max_abs_diff"] <= e["verdict"]["tolerance"]
        assert 0 < e["peak_fraction"] < 1.3  # near what the machine can do; tuned engines edge past sgemm
    assert data["peak"]["gflops_1_thread"] > 1
    assert data["extrapolations"][0]["latency_s"] > 60
    # A quiet run publishes latest.json and the charts; a busy one only its own file (bench/run.py).
    busy = data["contention"]["busy"]
    assert (tmp_path / "overview.png").exists() != busy
    published = [] if busy else ["latest.json"]
    assert sorted(p.name for p in tmp_path.glob("*.json")) == sorted(
        [*published, *[p.name for p in tmp_path.glob("2*.json")]]
    )
    assert "02_vectorized" in run.stdout  # the table is printed


def test_the_profile_legend_shows_the_colours_the_bars_use():
    import matplotlib.colors as mcolors

    from bench import profile

    rows = [{"layer": n, "op": op, "ms": 1.0, "gflops": 10.0} for n, op in [("a", "conv 1x1"), ("b", "conv 3x3")]]
    fig = profile.figure("06_threads", 2, rows, 100.0)
    top = fig.axes[0]
    bars = {mcolors.to_hex(p.get_facecolor()) for p in top.patches}
    legend = {t.get_text(): mcolors.to_hex(h.get_facecolor()) for t, h in zip(
        top.get_legend().get_texts(), top.get_legend().legend_handles, strict=True)}  # fmt: skip
    assert legend == profile.OP_COLOURS and bars == {legend["conv 1x1"], legend["conv 3x3"]}


def test_the_table_head_says_per_thread_count_the_fastest_stage_against_the_fastest_peer(small_results):
    lines = report.fastest_lines(small_results)
    # small_results: 02 at 500 ms and ONNX Runtime at 75 ms on 1 thread; 06 at 80 and ONNX Runtime at 40 on 2
    assert lines == [
        "1 thread: 02_vectorized takes 6.67x ONNX Runtime's time (500.0 ms against 75.0 ms)",
        "2 threads: 06_threads takes 2.00x ONNX Runtime's time (80.0 ms against 40.0 ms)",
    ]


def test_a_threaded_stage_has_a_row_per_thread_count_each_against_peers_at_its_count(small_results):
    from tests.conftest import entry

    res = json.loads(json.dumps(small_results))
    res["entries"] = [e for e in res["entries"] if e["name"] != "06_threads"]
    res["entries"] += [entry("06_threads@1", "stage", 1, 150.0, label="06_threads"),
                       entry("06_threads@2", "stage", 2, 80.0, label="06_threads", cpp=297)]  # fmt: skip
    table = report.table(results.validate(res))
    cells = {
        r.split("|")[2].strip(): [c.strip() for c in r.strip().strip("|").split("|")]
        for r in table.splitlines()
        if r.startswith("| **06_threads**")
    }
    assert cells["1"][8] == "2.00x" and cells["1"][9] == ""  # 150 ms against ONNX Runtime's 75 on 1 thread
    assert cells["2"][8] == "2.00x" and cells["2"][4] == "6.25x"  # 80 against 40; vs 02, the rung before on 1 thread
    assert cells["1"][4] == "3.33x"  # 06 on 1 thread against 02 (500 ms): the stage before at its thread count
    assert cells["2"][9] == "297.0 ms"  # the C++ rung ran on every core: its figure on that row only


def test_the_batch_sweep_is_validated_and_drawn(small_results, tmp_path):
    res = json.loads(json.dumps(small_results))
    series = {
        "onnxruntime@2": {"label": "ONNX Runtime", "images_per_s": [25, 27, 28, 28, 29]},
        "06_threads@2": {"label": "06_threads", "images_per_s": [12, 13, None, 14, 14]},
    }
    res["batch_sweep"] = {"threads": 2, "batches": [1, 2, 4, 8, 16], "series": series}
    results.validate(res)
    assert chart.main(["--results", str(results.save(res, tmp_path)), "--out", str(tmp_path), "--readme", ""]) == 0
    assert (tmp_path / "scaling.png").stat().st_size > 10_000
    res["batch_sweep"]["series"]["06_threads@2"]["images_per_s"] = [1, 2]
    with pytest.raises(ResultsError, match="batch_sweep"):
        results.validate(res)


def test_the_batch_sweep_times_the_fastest_stage_06_and_onnxruntime(store, sample_batch, judge_logits):
    from bench.measure import Entry, Judge
    from bench.run import SWEEP_BATCHES, batch_sweep
    from common.reference import Reference

    images, _ = sample_batch
    judge = lambda max_batch: Reference(store, max_batch=max_batch)  # noqa: E731  (matches itself)
    entries = [
        Entry("05_codegen", "05_codegen", "stage", 1, judge, latency_s=[0.08]),  # 1 thread: not swept
        Entry("06_threads@2", "06_threads", "stage", 2, judge, latency_s=[0.05]),
        Entry("onnxruntime@2", "ONNX Runtime", "peer", 2, judge, latency_s=[0.02]),
    ]
    sweep = batch_sweep(entries, images, Judge(judge_logits), cores=2, repeats=1, batches=(1, 2))
    assert sweep["batches"] == [1, 2] and set(sweep["series"]) == {"06_threads@2", "onnxruntime@2"}
    assert SWEEP_BATCHES[-1] == 16  # what a full run sweeps (two here: the test is about who is swept)
    assert all(r > 0 for s in sweep["series"].values() for r in s["images_per_s"])


def test_an_effective_rate_is_marked_wherever_it_is_shown(small_results, tmp_path):
    res = json.loads(json.dumps(small_results))
    row = next(e for e in res["entries"] if e["name"] == "06_threads")
    row.update(effective=True, gflops=600.0, peak_fraction=3.0)  # Winograd may pass the FMA peak
    line = next(r for r in report.table(res).splitlines() if r.startswith("| **06_threads**"))
    assert "600.0 (effective) | 300.0% (effective)" in line
    assert "(effective)" not in next(r for r in report.table(res).splitlines() if r.startswith("| **02_"))
    assert chart.main(["--results", str(results.save(res, tmp_path)), "--out", str(tmp_path), "--readme", ""]) == 0


def test_each_rung_is_compared_with_the_rung_before_at_its_own_thread_count():
    rows = [
        {"label": "05_codegen", "threads": 1},
        {"label": "06_threads", "threads": 1},
        {"label": "06_threads", "threads": 2},
        {"label": "07_fused", "threads": 1},
        {"label": "07_fused", "threads": 2},
    ]
    before = [report.previous_rung(rows, i) for i in range(len(rows))]
    assert [b and (b["label"], b["threads"]) for b in before] == [
        None,
        ("05_codegen", 1),
        ("05_codegen", 1),  # the first 2-thread row: the threads rung against its 1-thread predecessor
        ("06_threads", 1),
        ("06_threads", 2),
    ]


def test_the_isa_table_puts_two_targets_side_by_side(small_results, tmp_path):
    from bench import isa_compare

    avx2 = json.loads(json.dumps(small_results))
    avx2["machine"]["isa"] = {"name": "avx2", "emulated": True}
    for e in avx2["entries"]:
        if e.get("latency_ms"):
            e["latency_ms"]["median"] *= 2
    text = isa_compare.table([small_results, avx2])
    assert "avx2 (emulated): ms" in text and "| ONNX Runtime |" in text
    readme = tmp_path / "README.md"
    readme.write_text(f"before\n{isa_compare.BEGIN}\nold\n{isa_compare.END}\nafter\n")
    assert isa_compare.main([str(tmp_path / "a.json"), "--readme", str(readme)]) == 2  # no such file: one line


def test_the_ablation_table_shows_latency_and_batch_throughput_and_replaces_its_block(tmp_path):
    from bench import ablate

    data = {
        "stage": "08_microkernel", "key": "08", "created": "2026-12-02T01:00:00+0000", "images": ["cat.png"],
        "machine": {"cpu": {"model": "Test CPU", "usable_cpus": 2}, "git_commit": "abc1234"},
        "rows": [
            {"name": ablate.WHOLE, "switches": {}, "status": "ok", "median_ms": 40.0, "min_ms": 39.0, "slowdown": 1.0,
             "images_per_s": 50.0},
            {"name": "the whole batch through every step", "switches": {"whole_batch_from": None}, "status": "ok",
             "median_ms": 40.4, "min_ms": 39.5, "slowdown": 1.01, "images_per_s": 40.0},
            {"name": "a broken variant", "switches": {"pixels": 9}, "status": "wrong", "message": "top-1 differs"},
        ],
    }  # fmt: skip
    text = ablate.table(data)
    row = next(line for line in text.splitlines() if line.startswith("| the whole batch"))
    assert "+1%" in row and "1.01x" in row and "40.0" in row and "1.25x" in row  # 50 / 40 images/s
    assert "| a broken variant | wrong: top-1 differs |" in text
    notes = tmp_path / "NOTES.md"
    notes.write_text("# 08\n\nThe idea.\n")
    once = ablate.notes_text(notes, data)
    notes.write_text(once)
    data["rows"][1]["images_per_s"] = 25.0
    twice = ablate.notes_text(notes, data)
    assert twice.count(ablate.END) == 1 and "2.00x" in twice and "The idea." in twice


def test_an_ablation_on_a_busy_machine_prints_its_table_and_records_nothing(tmp_path, monkeypatch, capsys):
    from bench import ablate

    notes = tmp_path / "NOTES.md"
    notes.write_text("# 08\n")

    class Busy:
        busy, reason = True, "the machine was busy during the run (2 threads at 41% of one thread's speed)"

        def __init__(self, cores: int) -> None:
            pass

        def summary(self) -> dict:
            return {"busy": True}

    row = {"name": ablate.WHOLE, "switches": {}, "status": "ok", "median_ms": 40.0, "min_ms": 39.0, "slowdown": 1.0}
    data = {"stage": "08_microkernel", "key": "08", "created": "2026-12-02T01:00:00+0000", "images": ["cat.png"],
            "machine": {"cpu": {"model": "Test CPU", "usable_cpus": 2}, "git_commit": "abc1234"}, "rows": [row]}
    monkeypatch.setattr(ablate, "Contention", Busy)
    monkeypatch.setattr(ablate, "measure", lambda *args: data)
    monkeypatch.setattr(ablate.stages, "find", lambda key: type("Info", (), {"folder": tmp_path})())
    assert ablate.main(["--stage", "08", "--out", str(tmp_path / "results")]) == 1
    out = capsys.readouterr().out
    assert "| **the stage as written** |" in out and "busy" in out.splitlines()[-1] and "left as they are" in out
    assert notes.read_text() == "# 08\n" and not (tmp_path / "results").exists()


def test_int8_rows_are_marked_drawn_against_the_int8_peak_and_carry_their_agreement(small_results, tmp_path):
    from tests.conftest import entry

    res = json.loads(json.dumps(small_results))
    res["settings"]["weights"] = "random:seed=0"
    res["peak"].update(int8_gops_1_thread=400.0, int8_gops_all_threads=800.0, int8_method="test")
    for name, kind, threads, ms in [("10_int8@2", "stage", 2, 12.0), ("onnxruntime-int8@2", "peer", 2, 13.0)]:
        e = entry(name, kind, threads, ms, label="10_int8" if kind == "stage" else "ONNX Runtime int8")
        e.update(precision="int8", peak_fraction=8.18 / (ms / 1e3) / 800, agreement={
            "top1_agree": 3, "images": 6, "max_abs_diff_fp32": 6.67})  # fmt: skip
        res["entries"].append(e)
    results.validate(res)
    text = report.table(res)
    row = next(line for line in text.splitlines() if line.startswith("| **10_int8**"))
    assert "(int8)" in row and "0.92x" in row  # against ONNX Runtime int8, not fp32 ONNX Runtime
    assert "top-1 as fp32 on 3 of 6 images" in text and "seeded random" in text
    lines = report.fastest_lines(res)
    assert any(line.startswith("int8, 2 threads: 10_int8 takes 0.92x ONNX Runtime int8") for line in lines), lines
    assert "int8 peak" in report.header(res)
    assert chart.main(["--results", str(results.save(res, tmp_path)), "--out", str(tmp_path), "--readme", ""]) == 0
    del res["peak"]["int8_gops_all_threads"]
    with pytest.raises(ResultsError, match="int8"):
        results.validate(res)


def test_the_bench_judges_each_precision_by_its_own_judge():
    import numpy as np

    from bench.measure import Entry, Judge

    rng = np.random.default_rng(0)
    fp32 = rng.standard_normal((2, 1000)).astype(np.float32)
    int8 = np.round(fp32 / 0.25) * 0.25
    judge = Judge(fp32, int8, 0.25)
    fp32_entry = Entry("06_threads@1", "06_threads", "stage", 1, None)
    int8_entry = Entry("10_int8@1", "10_int8", "stage", 1, None, precision="int8", judged_by="int8")
    other = Entry("openvino-int8@1", "OpenVINO int8", "peer", 1, None, precision="int8", judged_by="agreement")
    assert judge.check(fp32_entry, fp32[1], 1).ok and not judge.check(fp32_entry, int8[1], 1).ok
    assert judge.check(int8_entry, int8[1], 1).ok and not judge.check(int8_entry, int8[1] + 1.0, 1).ok
    assert judge.check(other, int8[1] + 1.0, 1).ok  # another engine's rounding: reported, not held to ORT's
    assert not judge.check(other, np.full(1000, np.nan, np.float32), 1).ok
    assert not Judge(fp32).check(int8_entry, int8[1], 1).ok  # no int8 judge in the run: not passed quietly
    int8_entry.logits = {0: int8[0], 1: int8[1]}
    assert judge.agreement(int8_entry)["images"] == 2 and judge.agreement(fp32_entry) is None
