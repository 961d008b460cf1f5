"""Every way in with bad input gets a one-line error naming the thing and the reason, and loses nothing.

Images, weight stores, and the command line. Model inputs are covered for every stage in
test_stages_vs_judge.py; the generated-code cache and results files in test_failures.py.
"""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common import classify
from common.errors import ImageError, WeightsError
from common.images import load_image
from common.paths import IMAGES_DIR
from common.weights import WeightStore, tensor_file
from tests.processes import run_python
from tests.stores import npy_bytes, replace_tensor

CAT = IMAGES_DIR / "cat.png"
ROCKET = IMAGES_DIR / "rocket.jpg"


def one_line_error(path, match: str) -> str:
    with pytest.raises(ImageError) as info:
        load_image(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message, message
    assert match in message, message
    return message


# ---------------------------------------------------------------- images


def test_empty_file(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    one_line_error(tmp_path / "empty.jpg", "file is empty")


def test_text_file_named_jpg(tmp_path):
    (tmp_path / "notes.jpg").write_text("these are my holiday notes, not a photo\n")
    one_line_error(tmp_path / "notes.jpg", "not an image Pillow can read")


@pytest.mark.parametrize("source", [CAT, ROCKET], ids=["png", "jpeg"])
def test_truncated_png_and_jpeg(tmp_path, source):
    data = source.read_bytes()
    path = tmp_path / f"half{source.suffix}"
    path.write_bytes(data[: len(data) // 2])
    one_line_error(path, "corrupt or truncated image")


def png_header_claiming(width: int, height: int) -> bytes:
    """A 60-byte PNG whose header claims width x height pixels (and whose data is one empty block)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.mark.parametrize("size", [(100_000, 100_000), (9_000, 9_000)], ids=["gigapixel", "81MP"])
def test_decompression_bomb_is_refused_before_decoding_with_flat_memory(tmp_path, size):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_claiming(*size))
    assert path.stat().st_size < 100
    probe = (
        "import sys\n"
        "from common.images import load_image\n"
        "from common.errors import ImageError\n"
        "from tests.memory import peak_kib\n"
        "before = peak_kib()\n"
        "try:\n    load_image(sys.argv[1])\nexcept ImageError as e:\n    print(e)\n"
        "print(peak_kib() - before)\n"
    )
    run = run_python("-c", probe, str(path), timeout=60)
    message, grown_kib = run.stdout.strip().splitlines()
    assert str(path) in message and ("refused before decoding" in message or "decompression bomb" in message)
    assert int(grown_kib) < 20 * 1024, f"memory grew by {int(grown_kib) / 1024:.0f} MiB"


def test_one_pixel_image(tmp_path):
    Image.new("RGB", (1, 1), (250, 10, 10)).save(tmp_path / "dot.png")
    x = load_image(tmp_path / "dot.png")
    assert x.shape == (3, 224, 224) and np.allclose(x[:, 0, 0], x[:, 200, 100])


def test_cmyk_jpeg_is_converted(tmp_path):
    Image.new("CMYK", (300, 300), (0, 0, 0, 0)).save(tmp_path / "cmyk.jpg")  # no ink: white
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    white = (1.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    assert np.abs(load_image(tmp_path / "cmyk.jpg")[:, 100, 100] - white).max() < 0.05


def test_a_directory_and_a_missing_path(tmp_path):
    one_line_error(tmp_path, "is a directory with no image files in it")
    shutil.copy(CAT, tmp_path / "cat.png")
    one_line_error(tmp_path, "is a directory, not an image file")
    one_line_error(tmp_path / "nowhere.png", "no such file")


def test_an_unreadable_file(tmp_path, monkeypatch):
    path = tmp_path / "secret.png"
    shutil.copy(CAT, path)
    path.chmod(0)
    if os.geteuid() != 0:
        one_line_error(path, "permission denied")
    else:  # root reads anything: make the open fail the way it would for anyone else
        import PIL.Image

        def refuse(fp, *args, **kwargs):
            raise PermissionError(13, "Permission denied", str(fp))

        monkeypatch.setattr(PIL.Image, "open", refuse)
        one_line_error(path, "permission denied")


def test_non_ascii_file_names(tmp_path):
    good = tmp_path / "кошка 猫 ü.png"
    shutil.copy(CAT, good)
    assert load_image(good).shape == (3, 224, 224)
    bad = tmp_path / "ошибка 壊れた.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    one_line_error(bad, "ошибка 壊れた.jpg")


def test_a_batch_reports_each_bad_file_and_classifies_the_rest(store, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(CAT, folder / "a_cat.png")
    shutil.copy(ROCKET, folder / "b_rocket.jpg")
    (folder / "c_empty.png").write_bytes(b"")
    (folder / "d_text.jpg").write_text("not a photo")
    (folder / "e_half.jpg").write_bytes(ROCKET.read_bytes()[:5000])
    (tmp_path / "empty_folder").mkdir()
    given = [str(folder), str(tmp_path / "missing.png"), str(tmp_path / "empty_folder")]
    code = classify.main([*given, "--stage", "ref", "--format", "json", "--weights", str(store.path)])
    out = capsys.readouterr()
    assert code == 2
    errors = [line for line in out.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 5
    for name in ("c_empty.png", "d_text.jpg", "e_half.jpg", "missing.png", "empty_folder"):
        assert sum(name in line for line in errors) == 1, name
    classified = [json.loads(line)["file"] for line in out.out.splitlines()]
    assert [Path(f).name for f in classified] == ["a_cat.png", "b_rocket.jpg"]


def test_cli_exit_status_is_2_for_a_single_bad_image(store, tmp_path):
    (tmp_path / "x.jpg").write_text("no")
    run = run_python(
        *("-m", "common.classify", str(tmp_path / "x.jpg"), "--stage", "ref"),
        env={"RESNET50_WEIGHTS": str(store.path)},
        timeout=120,
    )
    assert run.returncode == 2 and run.stdout == ""
    assert (
        run.stderr.strip().splitlines()[-1] == f"error: {tmp_path / 'x.jpg'}: not an image Pillow can read "
        "(unknown or corrupt format)"
    )
    assert "Traceback" not in run.stderr


# ---------------------------------------------------------------- weight stores


def store_error(path) -> str:
    with pytest.raises(WeightsError) as info:
        WeightStore(path)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_store_says_how_to_make_one(tmp_path):
    assert "make weights" in store_error(tmp_path / "no-store")


def test_missing_tensor_file(copy_of):
    tensor_file(copy_of, "layer2.1.bn2.running_var").unlink()
    message = store_error(copy_of)
    assert "layer2.1.bn2.running_var" in message and "missing" in message and "make weights" in message


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (np.zeros((64, 3, 7, 6), np.float32), "has shape (64, 3, 7, 6), expected (64, 3, 7, 7)"),
        (np.zeros((64, 3, 7, 7), np.float64), "is float64, expected float32"),
        (np.full((64, 3, 7, 7), np.inf, np.float32), "NaN or Inf"),
    ],
    ids=["wrong shape", "float64", "inf"],
)
def test_bad_tensor_contents_named(copy_of, array, match):
    replace_tensor(copy_of, "conv1.weight", npy_bytes(array), update_manifest=True)
    message = store_error(copy_of)
    assert "conv1.weight" in message and match in message


def test_nan_in_a_batchnorm_tensor(copy_of):
    v = np.ones(64, np.float32)
    v[5] = np.nan
    replace_tensor(copy_of, "bn1.running_var", npy_bytes(v), update_manifest=True)
    assert "bn1.running_var holds NaN" in store_error(copy_of)


def test_truncated_npy(copy_of, store):
    data = tensor_file(store.path, "fc.weight").read_bytes()
    replace_tensor(copy_of, "fc.weight", data[: len(data) // 3], update_manifest=False)
    assert "checksum of fc.weight does not match" in store_error(copy_of)
    replace_tensor(copy_of, "fc.weight", data[: len(data) // 3], update_manifest=True)
    assert "tensor fc.weight cannot be read" in store_error(copy_of)


class Exploit:
    """Unpickling this writes a file: proof that something unpickled it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "unpickled!"))


def test_pickled_npy_is_refused_and_never_unpickled(copy_of, tmp_path):
    marker = tmp_path / "was-unpickled"
    evil = npy_bytes(np.array([Exploit(str(marker))], dtype=object), allow_pickle=True)
    replace_tensor(copy_of, "fc.bias", evil, update_manifest=True)
    message = store_error(copy_of)
    assert "fc.bias" in message and "cannot be read" in message
    store = WeightStore(copy_of, verify=False)
    with pytest.raises(WeightsError, match=r"fc\.bias"):
        store.load("fc.bias")
    assert not marker.exists()


def test_checksum_mismatch(copy_of):
    replace_tensor(copy_of, "layer4.2.conv3.weight", npy_bytes(np.zeros((2048, 512, 1, 1), np.float32)), False)
    assert "checksum of layer4.2.conv3.weight does not match" in store_error(copy_of)


def test_missing_and_corrupt_manifest(copy_of):
    manifest = copy_of / "manifest.json"
    text = manifest.read_text()
    manifest.unlink()
    assert "no manifest" in store_error(copy_of)
    manifest.write_text(text[: len(text) // 2])
    assert "manifest is corrupt" in store_error(copy_of)
    manifest.write_text(json.dumps({"format": 1, "tensors": {}}))
    assert "missing from the manifest" in store_error(copy_of)


def test_cli_with_a_broken_store_is_one_line_and_exit_2(copy_of, tmp_path):
    tensor_file(copy_of, "conv1.weight").unlink()
    run = run_python("-m", "common.classify", str(CAT), "--stage", "02", "--weights", str(copy_of), timeout=120)
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.count("\n") == 1 and "conv1.weight" in run.stderr and "Traceback" not in run.stderr
