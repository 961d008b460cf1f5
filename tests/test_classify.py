"""The classify command, as a user runs it: in-process for the details, and once through `make -s`."""

import json
import os
import subprocess

import numpy as np
import pytest

from common import classify
from common.classify import RANDOM_WARNING
from common.labels import class_names
from common.paths import ROOT
from common.reference import Reference


def test_class_names_are_torchvision_order():
    names = class_names()
    assert len(names) == 1000 and names[0] == "tench" and names[281] == "tabby" and names[999] == "toilet tissue"


def test_text_output_top5_matches_the_judge(store, capsys):
    path = ROOT / "images" / "cat.png"
    assert classify.main([str(path), "--stage", "ref", "--weights", str(store.path)]) == 0
    out = capsys.readouterr()
    lines = out.out.strip().splitlines()
    assert lines[0].startswith(str(path)) and "ms" in lines[0]
    from common.images import load_image

    logits = Reference(store)(load_image(path)[None])[0]
    want = [class_names()[i] for i in np.argsort(-logits)[:5]]
    got = [line.split("%", 1)[1].strip().rsplit(" (", 1)[0] for line in lines[1:6]]
    assert got == want
    assert (RANDOM_WARNING in out.err) == store.is_random


def test_json_output_one_object_per_image(store, capsys):
    images = [str(ROOT / "images" / n) for n in ("cat.png", "coffee.png")]
    assert classify.main([*images, "--stage", "ref", "--format", "json", "--weights", str(store.path)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["file"] for r in rows] == images
    for r in rows:
        assert r["stage"].startswith("ref") and r["weights"] == store.source
        assert r["weights_random"] == store.is_random
        probs = [t["probability"] for t in r["top"]]
        assert len(probs) == 5 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
        assert all(class_names()[t["index"]] == t["name"] for t in r["top"])
        assert r["latency_ms"] > 0


def test_bad_image_is_one_line_exit_2_and_the_rest_still_classified(store, tmp_path, capsys):
    bad = tmp_path / "broken.jpg"
    bad.write_text("this is not a jpeg")
    good = ROOT / "images" / "cat.png"
    code = classify.main([str(bad), str(good), "--stage", "ref", "--format", "json", "--weights", str(store.path)])
    out = capsys.readouterr()
    assert code == 2
    errors = [line for line in out.err.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {bad}: not an image Pillow can read (unknown or corrupt format)"]
    assert [json.loads(line)["file"] for line in out.out.splitlines()] == [str(good)]


def test_unknown_stage_and_missing_store_are_one_line_errors(tmp_path, capsys):
    assert classify.main(["--stage", "99", "--weights", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "make weights" in err


def test_a_stage_agrees_with_the_judge_through_the_cli(store, capsys):
    path = str(ROOT / "images" / "coffee.png")
    args = [path, "--format", "json", "--weights", str(store.path)]
    classify.main([*args, "--stage", "ref"])
    ref = json.loads(capsys.readouterr().out)
    classify.main([*args, "--stage", "02" if (ROOT / "stages" / "02_vectorized").exists() else "01"])
    got = json.loads(capsys.readouterr().out)
    assert [t["index"] for t in got["top"]] == [t["index"] for t in ref["top"]]


@pytest.mark.skipif(not (ROOT / ".venv" / "bin" / "python").exists(), reason="make's venv is not set up")
def test_make_s_classify_prints_only_the_result(store):
    env = {**os.environ, "RESNET50_WEIGHTS": str(store.path)}
    run = subprocess.run(
        ["make", "-s", "classify", "IMG=images/cat.png", "STAGE=ref", "FORMAT=json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    (line,) = run.stdout.splitlines()
    assert json.loads(line)["file"] == "images/cat.png"  # nothing but the JSON line reached stdout
