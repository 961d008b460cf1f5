"""The C++ original as a peer (bench/cpp.py): its weight files, its input, its output, its errors.

Building and running the original needs a checkout of dongtuoc/cv_learning_resnet50, which CI does not
have: these tests cover everything around the build, against independent results (numpy's own savetxt
and loadtxt, the original's parser's naming scheme written out here, output captured from its programs).
"""

import contextlib
import shutil
import stat
import subprocess
from pathlib import Path

import numpy as np
import pytest

from bench import cpp, report, results
from common.images import load_image
from common.paths import ROOT

DATA = Path(__file__).parent / "data"


def parser_names() -> set[str]:
    """The files practice/model/resnet50_parser.py writes, from its own scheme: resnet50_<layer>_<field>.txt,
    a bottleneck's layers as layer<L>_bottleneck<i>_conv1 ... _downsample_conv2d / _downsample_batchnorm."""
    conv, bn = ("weight", "param"), ("weight", "bias", "running_mean", "running_var", "param")
    layers = {"conv1": conv, "bn1": bn, "fc": ("weight", "bias")}
    for layer, blocks in enumerate((3, 4, 6, 3), start=1):
        for i in range(blocks):
            prefix = f"layer{layer}_bottleneck{i}_"
            for j in (1, 2, 3):
                layers[f"{prefix}conv{j}"], layers[f"{prefix}bn{j}"] = conv, bn
            if i == 0:
                layers[f"{prefix}downsample_conv2d"], layers[f"{prefix}downsample_batchnorm"] = conv, bn
    return {f"resnet50_{name}_{field}.txt" for name, fields in layers.items() for field in fields}


@pytest.fixture(scope="module")
def files(store) -> dict[str, np.ndarray]:
    return cpp.text_files(store)


def test_the_exported_files_are_the_ones_its_parser_writes(files):
    assert set(files) == parser_names()
    assert len(files) == 373  # as many as the original's own resnet50_weight folder holds


def test_savetxt_writes_what_numpy_writes_byte_for_byte(tmp_path):
    values = np.array([0.0, -0.0, 1.5, -3.25e-7, 123456.78, np.float32(0.1), 1e-38, -2.5e30], np.float32)
    values = np.concatenate([values, np.random.default_rng(0).standard_normal(1000).astype(np.float32)])
    cpp.savetxt(tmp_path / "ours.txt", values)
    np.savetxt(tmp_path / "numpy.txt", values.reshape(-1, 1))
    assert (tmp_path / "ours.txt").read_bytes() == (tmp_path / "numpy.txt").read_bytes()


def test_weights_round_trip_in_the_layout_the_cpp_code_indexes(store, files, tmp_path):
    """Written, read back with numpy as float32 (the C++ code's fscanf("%f")), every value equal, and the
    conv weights where its conv indexes them: w[((o * kh + y) * kw + x) * ci + i]."""
    names = [cpp.text_file("layer2.0.downsample.0", f) for f in ("weight", "param")]
    names += [cpp.text_file("layer3.1.conv2", "weight"), cpp.text_file("conv1", "weight")]
    names += [cpp.text_file("layer1.0.downsample.1", f) for f in ("running_var", "param")]
    names += [cpp.text_file("fc", "bias")]
    for name in names:
        cpp.savetxt(tmp_path / name, files[name])
    back = {name: np.loadtxt(tmp_path / name, dtype=np.float64) for name in names}
    for conv in ("layer3.1.conv2", "conv1"):
        w = store.load(f"{conv}.weight")  # (out, in, kh, kw)
        flat = back[cpp.text_file(conv, "weight")].astype(np.float32)
        co, ci, kh, kw = w.shape
        o, i, y, x = co - 1, ci // 2, kh - 1, 0
        assert flat[((o * kh + y) * kw + x) * ci + i] == w[o, i, y, x]
        assert np.array_equal(flat, w.transpose(0, 2, 3, 1).reshape(-1))
    assert list(back[names[1]]) == [256, 512, 1, 2, 0]  # [ci, co, kh, stride, pad]
    assert list(back[cpp.text_file("layer1.0.downsample.1", "param")]) == [1e-5, 0.1]
    running_var = back[cpp.text_file("layer1.0.downsample.1", "running_var")].astype(np.float32)
    assert np.array_equal(running_var, store.load("layer1.0.downsample.1.running_var"))
    assert np.array_equal(back[cpp.text_file("fc", "bias")].astype(np.float32), store.load("fc.bias"))


def test_the_export_is_made_once_per_store_and_never_used_half_written(store, tmp_path, monkeypatch):
    small = {"resnet50_fc_bias.txt": np.arange(3, dtype=np.float32)}
    monkeypatch.setattr(cpp, "text_files", lambda s: small)
    key = cpp.store_key(store)
    (tmp_path / key).mkdir()
    (tmp_path / key / "resnet50_fc_bias.txt").write_text("0.0\n")  # an older, unfinished export
    made = cpp.export_weights(store, tmp_path)
    assert made == tmp_path / key and (made / cpp.COMPLETE).is_file()
    assert np.array_equal(np.loadtxt(made / "resnet50_fc_bias.txt"), [0, 1, 2])

    def fail(path, values):
        raise KeyboardInterrupt

    monkeypatch.setattr(cpp, "savetxt", fail)
    assert cpp.export_weights(store, tmp_path) == made  # done: not written again
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(KeyboardInterrupt):
        cpp.export_weights(store, other)
    assert list(other.iterdir()) == []  # an interrupted export leaves nothing behind


def test_its_input_is_ours_after_the_crop_saved_as_png(tmp_path, sample_batch):
    """The images it is given (our resize and crop, PNG) normalised as its PreProcess does are the judge's
    input for the stages to float32 rounding: the PNG loses nothing, its own 224x224 resize is a no-op."""
    _, paths = sample_batch
    tree = tmp_path / "tree"
    (tree / "practice" / "cpp").mkdir(parents=True)
    cpp.work_tree(tree, tmp_path, paths, tmp_path / "work")
    for i, path in enumerate(paths):
        png = tmp_path / "work" / "pics" / "ani_12" / cpp.png_name(i, path)
        assert np.abs(cpp.cpp_input(png) - load_image(path)).max() < 1e-5


@pytest.mark.parametrize("rung", ["2nd_avx2", "5th_codegen"])
def test_its_output_is_parsed_per_image(rung):
    """Output captured from its programs (2nd: 'Predict :', 5th: code generation first and 'Begin to
    predict :'), colour codes and all."""
    text = (DATA / f"cpp_{rung}_output.txt").read_text()
    found = cpp.parse(text)
    assert [p.image for p in found] == sorted(p.image for p in found) and len(found) == 6
    assert all(p.ms > 0 and 0 <= p.top1 < 1000 for p in found)
    lines = text.count("Time cost")
    assert lines == 6
    first = found[0]
    assert f"Index=[{first.top1}]" in text and f"Time cost : {first.ms} ms" in text


def test_its_verdict_is_its_top1_against_onnxruntimes():
    found = cpp.parse((DATA / "cpp_2nd_avx2_output.txt").read_text())
    expected = {p.image: (p.top1, p.score + 1e-4) for p in found}
    verdict, problem = cpp.judge(found, expected)
    assert problem == "" and verdict["top1_matches"] == 6 and verdict["max_top1_logit_diff"] == pytest.approx(1e-4)
    expected[found[2].image] = ((found[2].top1 + 1) % 1000, 0.0)
    verdict, problem = cpp.judge(found, expected)
    assert verdict["top1_matches"] == 5 and problem.startswith("top-1 differs from ONNX Runtime's on 1 of 6")
    _, problem = cpp.judge(found[:5], {p.image: (p.top1, p.score) for p in found})
    assert "not the 6 images" in problem


def test_a_time_without_a_result_is_an_error():
    with pytest.raises(cpp.CppError, match=r"no result for a\.png"):
        cpp.parse("Predict : ../../pics/ani_12/a.png\nTime cost : 12 ms.\n")


def test_no_checkout_is_one_line_with_the_fix(tmp_path):
    for where in (tmp_path / "nowhere", tmp_path):
        with pytest.raises(cpp.CppError) as e:
            cpp.checkout(where)
        assert "\n" not in str(e.value) and "git clone https://github.com/dongtuoc/cv_learning_resnet50" in str(e.value)


def fake_tools(folder: Path, cmake_status: int | None) -> str:
    """A PATH holding a c++ and a cmake that exits with cmake_status (no cmake at all when None)."""
    folder.mkdir()
    tools = {"c++": 0} if cmake_status is None else {"c++": 0, "cmake": cmake_status}
    for name, status in tools.items():
        (folder / name).write_text(f"#!/bin/sh\nexit {status}\n")
        (folder / name).chmod(stat.S_IRWXU)
    return str(folder)


@pytest.mark.parametrize(("cmake_status", "says"), [(None, "cmake not found"), (1, "OpenCV development files")])
def test_missing_cmake_or_opencv_is_one_line_with_the_fix(tmp_path, monkeypatch, cmake_status, says):
    monkeypatch.setenv("PATH", fake_tools(tmp_path / "bin", cmake_status))
    with pytest.raises(cpp.CppError) as e:
        cpp.check_tools()
    assert str(e.value).startswith(says) and "\n" not in str(e.value) and "libopencv-dev" in str(e.value)


def test_make_cpp_without_a_checkout_says_so_and_fails(tmp_path):
    for args in ([], [f"CPP_SRC={tmp_path}"]):
        run = subprocess.run(["make", "-s", "-C", str(ROOT), "cpp", *args], capture_output=True, text=True)
        assert run.returncode != 0
        assert "cv_learning_resnet50" in run.stderr and "Traceback" not in run.stderr


def with_cpp(small_results: dict) -> dict:
    """small_results after `make cpp`: 01's rung measured, and the rungs' own entries."""
    from tests.conftest import entry

    data = dict(small_results)
    data["entries"] = [dict(e) for e in small_results["entries"]]
    data["entries"][0].update(cpp_ms=19400.0, cpp_measured=True)
    rung = entry("cpp_1st_origin@1", "peer", 1, 19400.0, label="C++ 1st_origin")
    rung.update(cpp_rung="01", throughput=None, verdict={"top1_matches": 6, "images": 6, "max_top1_logit_diff": 1e-4})
    data["entries"].append(rung)
    return data


def test_measured_rungs_replace_the_published_figures_in_the_table(small_results):
    data = results.validate(with_cpp(small_results))
    table, head = report.table(data), report.header(data)
    row = next(line for line in table.splitlines() if line.startswith("| **01_naive**"))
    assert row.endswith("| 19.40 s |")  # measured here, not the published 16.92 s
    assert "| C++ 1st_origin | 1 | 19.40 s |" in table  # and the rung is a row of its own
    assert "measured in this run" in head and "01 16.92 s" in head  # the author's figures stay, as a note
    assert "measured on its author's machine" in report.header(small_results)


def test_the_chart_says_where_the_cpp_figures_come_from(small_results):
    from bench import chart

    assert "measured in this run" in chart.cpp_marker_label(with_cpp(small_results))
    assert "its author's machine" in chart.cpp_marker_label(small_results)


def test_the_tool_check_leaves_nothing_where_it_runs(tmp_path, monkeypatch):
    if shutil.which("cmake") is None:
        pytest.skip("no cmake on this machine: the check's files cannot be looked for")
    monkeypatch.chdir(tmp_path)
    with contextlib.suppress(cpp.CppError):  # no OpenCV here: the probe ran all the same
        cpp.check_tools()
    assert list(tmp_path.iterdir()) == []


def test_a_rung_that_ran_gives_its_stage_the_measured_figure_or_none():
    from bench.measure import Entry
    from bench.run import use_measured_cpp

    stage = {k: Entry(name, name, "stage", 1, None, cpp.PUBLISHED_MS[k]) for k, name in (("02", "02_vectorized"),
             ("03", "03_preload"), ("04", "04_no_alloc"))}  # fmt: skip
    ok = Entry("cpp_2nd_avx2@1", "C++ 2nd_avx2", "peer", 1, None, cpp_rung="02", status="ok", latency_s=[4.0, 4.2, 4.1])
    wrong = Entry("cpp_3rd_preload@1", "C++ 3rd_preload", "peer", 1, None, cpp_rung="03", status="wrong")
    use_measured_cpp([*stage.values(), ok, wrong])
    assert (stage["02"].cpp_ms, stage["02"].cpp_measured) == (4100.0, True)
    assert (stage["03"].cpp_ms, stage["03"].cpp_measured) == (None, False)  # not its author's figure either
    assert (stage["04"].cpp_ms, stage["04"].cpp_measured) == (cpp.PUBLISHED_MS["04"], False)  # not run: as published


def test_a_cpp_failure_after_the_stages_were_timed_is_a_row_not_a_lost_run(monkeypatch, store):
    from bench import run

    def no_room(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cpp, "measure", no_room)
    rows = run.cpp_entries("somewhere", store, [], 2, ["01", "06"])
    assert [(e.name, e.status) for e in rows] == [("cpp_1st_origin@1", "error"), ("cpp_6th_mul_thread@2", "error")]
    assert "No space left on device" in rows[0].message
