"""What a careless or hostile user can do, each case failing before its fix: the project never destroys
what it did not write, bounds the memory and bytes a small file can cost, passes names to the shell as
names, refuses numbers that are not results, and reads everything it is given at the boundary."""

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench import chart, regression, report, results
from bench.calibration import busy
from common import classify, codegen_cache, make_weights, stages
from common.errors import ModelInputError, WeightsError
from common.images import load_batch, load_image
from common.inputs import MAX_BATCH
from common.paths import IMAGES_DIR, ROOT
from common.reference import Reference
from common.weights import WeightStore, normalise_tensors, tensor_file
from tests.processes import run_python
from tests.stores import npy_bytes, replace_tensor, write_manifest

CAT = IMAGES_DIR / "cat.png"


def weights_cli(*args: str) -> tuple[int, str]:
    run = run_python("-m", "common.make_weights", *args, timeout=300)
    return run.returncode, run.stderr


# ---------------------------------------------------------------- 1. nothing of the user's is deleted


@pytest.mark.parametrize("source", ["auto", "random"])
def test_a_folder_that_is_not_a_store_is_refused_and_left_untouched(tmp_path, source):
    docs = tmp_path / "documents"
    docs.mkdir()
    (docs / "thesis.txt").write_text("four years of work")
    (docs / "photos").mkdir()
    status, err = weights_cli("--source", source, "--dest", str(docs))
    assert status == 2 and err.count("\n") == 1, err
    assert "not a weight store" in err and "nothing was touched" in err and str(docs) in err
    assert sorted(p.name for p in docs.iterdir()) == ["photos", "thesis.txt"]
    assert (docs / "thesis.txt").read_text() == "four years of work"
    assert [p.name for p in tmp_path.iterdir()] == ["documents"]  # no temporary left beside it either


def test_a_file_a_symlink_and_a_store_with_foreign_files_are_refused(store, tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    link = tmp_path / "link"
    link.symlink_to(store.path)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    os.link(store.path / "manifest.json", mixed / "manifest.json")
    (mixed / "diary.md").write_text("dear diary")
    for dest, why in ((a_file, "a file of"), (link, "a symbolic link"), (mixed, "not part of its weight store")):
        with pytest.raises(WeightsError, match=why):
            make_weights.make("random", dest)
    assert a_file.read_text() == "mine" and link.is_symlink() and (mixed / "diary.md").read_text() == "dear diary"


def test_a_store_of_ours_is_replaced_whole_and_a_damaged_one_remade(tmp_path, store):
    dest = tmp_path / "store"
    make_weights.make("random", dest, seed=1)
    first = json.loads((dest / "manifest.json").read_text())["seed"]
    make_weights.make("random", dest, seed=2)  # a store of ours: replaced
    assert json.loads((dest / "manifest.json").read_text())["seed"] == 2 != first
    tensor_file(dest, "fc.bias").write_bytes(b"damaged")
    make_weights.make("auto", dest)  # offline here: a damaged store of ours is re-made
    WeightStore(dest)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]


def test_clean_cache_removes_only_the_folders_it_wrote(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNET50_CACHE", str(tmp_path))
    ours = codegen_cache.load("X = 1\n", "99_test")
    ours_folder = Path(ours.__file__).parent
    mixed = tmp_path / "codegen" / f"98_test-{'0' * 20}"
    mixed.mkdir()
    (mixed / "resnet50_generated.py").write_text("")
    (mixed / "my-notes.txt").write_text("not the project's")
    other = tmp_path / "codegen" / "my-own-folder"
    other.mkdir()
    removed, kept = codegen_cache.clean(tmp_path)
    assert removed == [ours_folder] and not ours_folder.exists()
    assert {p for p, _ in kept} == {mixed, other} and (mixed / "my-notes.txt").exists()


# ---------------------------------------------------------------- 2. small files, bounded work


def tiny_png(path: Path, width: int, height: int) -> Path:
    Image.new("RGB", (width, height), (200, 30, 30)).save(path)
    return path


def test_an_extreme_aspect_ratio_costs_megabytes_not_gigabytes(tmp_path):
    path = tiny_png(tmp_path / "line.png", 200_000, 1)
    assert path.stat().st_size < 2000
    probe = (
        "import sys\nfrom common.images import load_image\nfrom tests.memory import peak_kib\n"
        "before = peak_kib()\nx = load_image(sys.argv[1])\nprint(x.shape, peak_kib() - before)\n"
    )
    run = run_python("-c", probe, str(path), timeout=60)
    assert run.returncode == 0, run.stderr  # before: MemoryError (a 256 x 51,200,000 resize)
    shape, grown_kib = run.stdout.rsplit(" ", 1)
    assert shape == "(3, 224, 224)" and int(grown_kib) < 50 * 1024, run.stdout


def test_ordinary_photos_are_resized_exactly_as_torchvision_does(tmp_path):
    """The crop-first path is only for extreme shapes: a photo's pixels are the full resize's, bit for bit."""
    rgb = Image.open(CAT).convert("RGB")
    w, h = rgb.size
    size = (int(256 * w / h), 256)
    full = rgb.resize(size, Image.Resampling.BILINEAR)
    left, top = round((size[0] - 224) / 2), round((size[1] - 224) / 2)
    expected = np.asarray(full.crop((left, top, left + 224, top + 224)), np.float32) / 255
    expected = ((expected - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]).transpose(2, 0, 1)
    np.testing.assert_allclose(load_image(CAT), expected, atol=1e-6)


def test_a_batch_goes_on_past_odd_shapes_and_special_files(tmp_path):
    tall = tiny_png(tmp_path / "tall.png", 1, 10_000)
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.png"
    zero.symlink_to("/dev/zero")
    batch, used, bad = load_batch([tall, fifo, zero, CAT])  # before: the FIFO hung, /dev/zero filled memory
    assert used == [tall, CAT] and batch.shape == (2, 3, 224, 224)
    reasons = [e.reason for e in bad]
    assert "named pipe" in reasons[0] and "character device" in reasons[1]


@pytest.mark.parametrize("special", ["fifo", "dev-zero", "huge"])
def test_a_tensor_file_that_is_not_a_regular_file_of_its_size_is_refused(copy_of, special):
    dest = copy_of
    path = tensor_file(dest, "fc.bias")
    path.unlink()
    if special == "fifo":
        os.mkfifo(path)
    elif special == "dev-zero":
        path.symlink_to("/dev/zero")
    else:
        with open(path, "wb") as f:
            f.truncate(64 * 2**20)  # sparse: 64 MiB where 4 KB belong
    with pytest.raises(WeightsError) as info:
        WeightStore(dest)
    message = str(info.value)
    assert "fc.bias" in message and "\n" not in message
    assert {"fifo": "named pipe", "dev-zero": "character device", "huge": "more than"}[special] in message


def test_an_npz_member_that_would_inflate_is_refused_before_decompressing(tmp_path):
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("fc.bias.npy", b"\0" * (64 * 2**20))  # 64 KB on disk, 64 MiB inflated
    assert path.stat().st_size < 200_000
    with pytest.raises(WeightsError, match="inflates to 67108864 bytes"):
        make_weights.read_npz(path)
    with zipfile.ZipFile(tmp_path / "other.npz", "w") as z:
        z.writestr("evil.npy", b"")
    with pytest.raises(WeightsError, match=r"unexpected member 'evil\.npy'"):
        make_weights.read_npz(tmp_path / "other.npz")


def test_chart_of_dev_zero_is_one_line_not_an_oom(tmp_path):
    status = chart.main(["--results", "/dev/zero", "--out", str(tmp_path), "--readme", ""])
    assert status == 2 and not list(tmp_path.iterdir())


# ---------------------------------------------------------------- 3. names reach programs as names


@pytest.mark.parametrize(
    "name",
    ["cat`touch PWNED`.png", "it's $(shell touch PWNED).png", "my cat.png", "-x.png", "$$HOME.png"],
    ids=["backticks", "make-function", "space", "leading-dash", "dollars"],
)
def test_make_passes_an_image_name_through_untouched(store, tmp_path, name):
    os.link(CAT, tmp_path / name)
    run = subprocess.run(
        ["make", "-s", "-C", str(ROOT), "classify", "STAGE=ref", "FORMAT=json", f"IMG={tmp_path / name}",
         f"RESNET50_WEIGHTS={store.path}"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["file"] == str(tmp_path / name)
    assert not list(tmp_path.glob("PWNED")) and not list(ROOT.glob("PWNED"))


def test_make_diff_takes_only_stage_numbers(tmp_path):
    run = subprocess.run(["make", "-s", "-C", str(ROOT), "diff", "A=03;touch PWNED", "B=04"], capture_output=True,
                         text=True, timeout=60, cwd=tmp_path)  # fmt: skip
    assert run.returncode != 0 and "usage: make diff" in run.stderr and not list(ROOT.glob("PWNED"))


# ---------------------------------------------------------------- 4. numbers that are not results


@pytest.mark.parametrize(
    ("name", "value", "why"),
    [("bn1.running_var", -0.5, "negative variance"), ("conv1.weight", 3e38, r"beyond the 1e\+06")],
)
def test_weights_that_make_the_network_undefined_are_refused(store, name, value, why):
    tensors = {n: store.load(n) for n in store.names()}
    tensors[name] = tensors[name].copy()
    tensors[name].flat[3] = value
    with pytest.raises(WeightsError, match=why):  # at import
        normalise_tensors(tensors, "test")


def test_a_store_with_a_negative_variance_is_refused_at_load(store, copy_of):
    var = store.load("layer1.0.bn2.running_var").copy()
    var[0] = -1.0
    replace_tensor(copy_of, "layer1.0.bn2.running_var", npy_bytes(var), update_manifest=True)
    with pytest.raises(WeightsError, match=r"layer1\.0\.bn2\.running_var holds a negative variance"):
        WeightStore(copy_of)


def test_nan_logits_are_an_error_and_json_never_holds_nan(store, capsys, monkeypatch):
    class Broken:
        def __call__(self, x):
            return np.full((len(x), 1000), np.nan, np.float32)

    monkeypatch.setattr(classify, "build_model", lambda stage, store: (Broken(), "broken"))
    status = classify.main([str(CAT), "--format", "json", "--weights", str(store.path)])
    out, err = capsys.readouterr()
    assert status == 2 and out == "" and "NaN or Inf logits" in err  # before: `nan%` and bare NaN, exit 0


@pytest.mark.parametrize("top", ["-1", "0", "1001", "x"])
def test_top_outside_1_to_1000_is_refused(top, capsys):
    with pytest.raises(SystemExit) as info:
        classify.main([str(CAT), "--top", top])
    assert info.value.code == 2 and "number of classes from 1 to 1000" in capsys.readouterr().err


# ---------------------------------------------------------------- 6. no false alarms


def test_busy_is_judged_by_the_median_threads_efficiency():
    assert busy([0.3, 0.5, 0.9]) and not busy([0.96, 0.99, 0.5]) and not busy([])


def test_a_measurement_over_the_tolerance_is_judged_again_before_failing():
    class FakeCalibration:
        kind = "vector"

        def __call__(self):
            from bench.calibration import Reading

            return Reading(0.001)

    m = regression.measure(lambda: None, FakeCalibration(), 5)
    assert len(m.latencies) == 5 and m.calibration == "vector" and m.ratio < 1
    failing = regression.Finding("02", "regressed", "slow")
    assert regression.judged(failing, lambda: regression.Finding("02", "ok", "fine")).status == "ok"
    assert regression.judged(failing, lambda: failing).failed
    assert not regression.judged(regression.Finding("02", "ok", "x"), lambda: pytest.fail("re-measured")).failed


def test_each_stage_is_calibrated_by_its_own_kind():
    assert regression.calibration_kind("01", 1) == "scalar"
    assert regression.calibration_kind("05", 1) == "vector"
    assert regression.calibration_kind("06", 2) == "threads"


def test_a_busy_bench_is_saved_apart_and_publishes_nothing(small_results, tmp_path):
    results.save(small_results, tmp_path)
    before = (tmp_path / "latest.json").read_bytes()
    path = results.save({**small_results, "created": "later"}, tmp_path, latest=False)
    assert path.exists() and (tmp_path / "latest.json").read_bytes() == before


@pytest.mark.parametrize(
    ("one", "two", "fraction", "effective", "busy"),
    [
        (116.8, 117.3, 0.9, False, True),  # a core was taken while the 2-thread peak was measured
        (114.0, 219.0, 1.608, False, True),  # an engine above the peak: ONNX Runtime at 160.8%, published before
        (114.0, 219.0, 1.2, True, False),  # Winograd's effective rate may pass the peak: it multiplies less
        (114.0, 219.0, 0.9, False, False),
    ],
)
def test_a_run_past_the_machines_limits_is_busy_not_a_result(one, two, fraction, effective, busy):
    from bench.run import Contention

    contention = Contention(2)
    limit = {"gflops_1_thread": one, "gflops_all_threads": two}
    contention.check_limits(limit, [{"name": "onnxruntime@2", "peak_fraction": fraction, "effective": effective}])
    assert contention.busy == busy and (not busy or "limits" in contention.reason)


def test_under_an_emulated_target_only_the_stages_are_held_to_its_peaks():
    """make bench under NUMBA_CPU_NAME=haswell: the peaks are AVX2's, the peers still run AVX-512 and VNNI."""
    from bench.run import Contention

    limit = {"gflops_1_thread": 60.0, "gflops_all_threads": 118.0}
    peer = {"name": "onnxruntime-int8@1", "kind": "peer", "precision": "int8", "peak_fraction": 22.6}
    stage = {"name": "08_microkernel@1", "kind": "stage", "peak_fraction": 1.2}
    quiet = Contention(2)
    quiet.check_limits(limit, [peer], emulated=True)
    assert not quiet.busy
    busy = Contention(2)
    busy.check_limits(limit, [peer, stage], emulated=True)
    assert busy.busy and "08_microkernel@1 ran at 120% of the FMA peak" in busy.reason
    native = Contention(2)
    native.check_limits(limit, [peer], emulated=False)
    assert native.busy and "onnxruntime-int8@1 ran at 2260% of the int8 peak" in native.reason


def test_on_a_cpu_with_amx_the_int8_peers_are_not_held_to_the_vnni_peak():
    """OpenVINO int8 ran at 107% of the VNNI peak on a Sapphire Rapids: it uses AMX, which the peak does not
    measure. The int8 stage is still held to it (it runs VNNI), and so is every fp32 row."""
    from bench.run import Contention

    limit = {"gflops_1_thread": 240.0, "gflops_all_threads": 480.0, "int8_unmeasured": "AMX"}
    peer = {"name": "openvino-int8@1", "kind": "peer", "precision": "int8", "peak_fraction": 1.07}
    quiet = Contention(2)
    quiet.check_limits(limit, [peer])
    assert not quiet.busy
    for row in ({"name": "10_int8@1", "kind": "stage", "precision": "int8", "peak_fraction": 1.07},
                {"name": "openvino@1", "kind": "peer", "precision": "fp32", "peak_fraction": 1.07}):  # fmt: skip
        busy = Contention(2)
        busy.check_limits(limit, [peer, row])
        assert busy.busy and f"{row['name']} ran at 107%" in busy.reason


def test_each_int8_row_is_drawn_against_its_own_unit_and_a_peer_against_the_fastest_measured():
    from bench import peak

    limit = {"gflops_1_thread": 240.0, "gflops_all_threads": 480.0, "int8_gops_1_thread": 960.0,
             "int8_gops_all_threads": 1920.0, "amx_gops_1_thread": 7400.0, "amx_gops_all_threads": 14800.0}  # fmt: skip
    assert peak.peak_of(limit, "int8", 1, "vnni") == 960.0 and peak.name_of(limit, "int8", "vnni") == "int8 peak"
    assert peak.peak_of(limit, "int8", 2, "amx") == 14800.0 and peak.name_of(limit, "int8", "amx") == "AMX peak"
    assert peak.peak_of(limit, "int8", 1) == 7400.0  # a peer: the machine's fastest int8 unit
    assert peak.peak_of(limit, "fp32", 2) == 480.0 and peak.name_of(limit, "fp32") == "FMA peak"
    without = {k: v for k, v in limit.items() if not k.startswith("amx")}
    assert peak.peak_of(without, "int8", 1) == 960.0
    # No AMX measured (Zen 4, or an emulated AVX2 target): 11 is a skipped row, drawn like any int8 row.
    assert peak.peak_of(without, "int8", 2, "amx") == 1920.0 and peak.name_of(without, "int8", "amx") == "int8 peak"


def test_weights_onto_a_full_disk_are_one_line_and_leave_nothing(tmp_path, monkeypatch, capsys):
    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(make_weights, "make", full)
    assert make_weights.main(["--dest", str(tmp_path / "weights")]) == 2
    said = capsys.readouterr().err
    assert "No space left on device" in said and "left as it was" in said and said.count("\n") == 1, said


# ---------------------------------------------------------------- 7. one line at every boundary


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda m: m["tensors"]["fc.bias"].update(shape=5), "manifest lists fc.bias"),
        (lambda m: m.update(tensors="DEEP"), "manifest is corrupt"),
    ],
    ids=["shape is a number", "deeply nested"],
)
def test_a_malformed_manifest_is_one_line(store, copy_of, change, why):
    manifest = json.loads((store.path / "manifest.json").read_text())
    change(manifest)
    write_manifest(copy_of, manifest, json.dumps(manifest).replace('"DEEP"', "[" * 100_000 + "]" * 100_000))
    with pytest.raises(WeightsError) as info:
        WeightStore(copy_of)
    assert why in str(info.value) and "\n" not in str(info.value)


def deep(results_: dict, path: str, value) -> dict:
    copy = json.loads(json.dumps(results_))
    *head, last = path.split(".")
    target = copy
    for key in head:
        target = target[int(key)] if key.isdigit() else target[key]
    if value is KeyError:
        del target[last]
    else:
        target[last] = value
    return copy


@pytest.mark.parametrize(
    ("path", "value", "why"),
    [
        ("entries.0.latency_ms", KeyError, "no latency_ms"),
        ("entries.0.latency_ms.median", 0, "latency_ms.median is not a number in (0, 1e+12)"),
        ("entries.0.latency_ms.median", float("nan"), "latency_ms.median is not a number in"),
        ("entries.0.latency_ms.median", 1e308, "latency_ms.median is not a number in"),  # was a matplotlib traceback
        ("entries.0.label", "x" * 1_000_000, "longer than 200 characters"),  # was 10 minutes of drawing
        ("entries", [], "no entries"),
        ("peak.gflops_1_thread", "fast", "peak.gflops_1_thread"),
        ("machine.cpu", KeyError, "machine.cpu"),
    ],
)
def test_make_chart_on_a_damaged_results_file_is_one_line(small_results, tmp_path, path, value, why, capsys):
    damaged = tmp_path / "damaged.json"
    damaged.write_text(json.dumps(deep(small_results, path, value)))
    status = chart.main(["--results", str(damaged), "--out", str(tmp_path / "charts"), "--readme", ""])
    err = capsys.readouterr().err
    assert status == 2 and why in err and err.count("\n") == 1, err


def test_a_label_cannot_write_markdown_into_the_readme(small_results):
    evil = deep(small_results, "entries.0.label", "x | [link](http://e.vil) <img src=x> **b**\n# h")
    row = report.table(evil).splitlines()[2]
    assert not re.search(r"(?<!\\)[\[<]", row), row  # every [ and < escaped: no link, no HTML
    assert "\\[link\\]" in row and "\\<img" in row
    assert row.count(" | ") == report.table(small_results).splitlines()[2].count(" | ")


def test_an_interrupted_chart_changes_nothing_and_leaves_no_temporary(small_results, tmp_path, monkeypatch):
    folder = tmp_path / "results"
    folder.mkdir()
    res_path = folder / "latest.json"
    res_path.write_text(json.dumps(small_results))
    readme = tmp_path / "README.md"
    readme.write_text(f"top\n{report.BEGIN}\nold table\n{report.END}\n")

    def interrupted(ax, res):
        raise KeyboardInterrupt

    monkeypatch.setitem(chart.PANELS, "throughput", interrupted)
    status = chart.main(["--results", str(res_path), "--out", str(folder), "--readme", str(readme)])
    assert status == 130 and "old table" in readme.read_text()
    assert sorted(p.name for p in folder.iterdir()) == ["latest.json"]  # no chart, no temporary


@pytest.mark.parametrize("max_batch", [0, "4", 2.5, 10**6, True, None])
def test_a_stage_or_the_judge_refuses_a_max_batch_that_is_not_a_count(store, max_batch):
    for make in (stages.load("03").ResNet50, Reference):
        with pytest.raises(ModelInputError, match=f"from 1 to {MAX_BATCH}"):
            make(store, max_batch=max_batch)


def test_the_judge_checks_its_input_like_every_stage(store):
    judge = Reference(store, max_batch=1)
    x = load_image(CAT)[None]
    cases = ((x.astype(np.float64), "float32"), (np.full_like(x, np.nan), "NaN"), (np.concatenate([x, x]), "1 to 1"))
    for bad, why in cases:
        with pytest.raises(ModelInputError, match=why):
            judge(bad)


def test_the_lock_file_pins_every_dependency():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    names = {r.split(">")[0].split("=")[0].split("<")[0].strip().lower().replace("_", "-") for r in wanted}
    lines = [line for line in (ROOT / "requirements.lock").read_text().splitlines() if line and line[0] != "#"]
    pinned = {line.split("==")[0].lower().replace("_", "-"): line.split("==")[1] for line in lines}
    assert all("==" in line for line in lines)
    assert names <= set(pinned), names - set(pinned)


THREADING_LAYER = """
import numba, numpy as np
import common
from numba import njit, prange

@njit(parallel=True)
def total(x):
    s = 0.0
    for i in prange(x.size):
        s += x[i]
    return s

total(np.ones(1000))
print(numba.threading_layer())
"""


@pytest.mark.parametrize(("env", "layer"), [({}, "omp"), ({"NUMBA_THREADING_LAYER": "workqueue"}, "workqueue")])
def test_numba_runs_on_openmp_unless_the_user_picks_a_layer(env, layer):
    """numba takes TBB first when libtbb is installed (OpenCV's packages bring it), which made the threaded
    stages 1.25-1.4x slower on 2 threads here; importing `common` puts OpenMP first. A user's choice wins."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_THREADING_LAYER")}
    run = subprocess.run(
        [sys.executable, "-c", THREADING_LAYER], cwd=ROOT, env={**clean, **env},
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert run.stdout.split()[-1] == layer


def test_a_stage_named_twice_is_timed_once():
    assert [s.key for s in stages.select("09,09,9")] == ["09"]


@pytest.mark.parametrize("quick, wanted", [("1", True), ("0", False), ("no", False), ("", False)])
def test_quick_0_is_not_quick(quick, wanted):
    run = subprocess.run(["make", "-n", "bench", f"QUICK={quick}"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0 and ("--quick" in run.stdout) == wanted, run.stdout


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_bad_thread_or_pass_counts_are_one_line(value):
    threads = run_python("-m", "common.classify", "--help", env={"NUMBA_NUM_THREADS": value})
    assert threads.returncode == 2 and "NUMBA_NUM_THREADS" in threads.stderr
    assert len(threads.stderr.strip().splitlines()) == 1, threads.stderr
    passes = run_python("-m", "bench.profile", "--stage", "05", "--passes", value)
    assert passes.returncode == 2 and "at least 1" in passes.stderr and "Traceback" not in passes.stderr
