"""Failures that must lose nothing: the generated-code and numba caches, interrupted and concurrent bench
runs, and a fuzzed image loader. (Bad images, weights and command lines: test_bad_input.py.)"""

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from bench import results
from common import codegen_cache, files
from common.errors import CacheError
from common.paths import CACHE_ENV, ROOT, cache_dir
from common.reference import compare
from tests.processes import BUILD_STAGE, last_json, run_python, start_python

TINY_STAGE = "from numba import njit\n\n\n@njit(cache=True)\ndef twice(x):\n    return 2 * x\n"


# ---------------------------------------------------------------- numba's cache and the generated code


def truncate(path: Path, keep: int = 20) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def flip(path: Path, count: int = 64) -> None:
    """Invert `count` bytes in the middle of the file: same size, same pickle framing, other machine code."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + count] = bytes(b ^ 0xFF for b in data[middle : middle + count])
    path.write_bytes(bytes(data))


TINY_RUN = (
    "import sys\nfrom pathlib import Path\nfrom common import stages\n"
    "m = stages.load(stages.StageInfo('99', '99_tiny', Path(sys.argv[1])))\n"
    "print(m.twice(21), sum(m.twice.stats.cache_hits.values()))\n"
)


@pytest.fixture
def tiny_stage(tmp_path) -> Path:
    folder = tmp_path / "99_tiny"
    folder.mkdir()
    (folder / "resnet50.py").write_text(TINY_STAGE)
    first = run_python("-c", TINY_RUN, str(folder / "resnet50.py"))
    assert first.returncode == 0 and first.stdout.split() == ["42", "0"], first.stderr
    return folder


@pytest.mark.parametrize(
    ("damaged", "damage", "why"),
    [
        (".nbi", truncate, "checksum does not match"),
        (".nbc", truncate, "checksum does not match"),
        (".nbc", flip, "checksum does not match"),  # before checksums: a silently different answer
        (".nbc", lambda p: Path(f"{p}.sha256").unlink(), "no checksum recorded"),
    ],
    ids=["truncated index", "truncated data", "64 flipped bytes", "no checksum"],
)
def test_a_damaged_numba_cache_file_is_compiled_again_never_used(tiny_stage, damaged, damage, why):
    (cached,) = (tiny_stage / "__pycache__").glob(f"*{damaged}")
    assert Path(f"{cached}.sha256").is_file()  # recorded when numba wrote it
    damage(cached)
    again = run_python("-c", TINY_RUN, str(tiny_stage / "resnet50.py"))
    assert again.returncode == 0, again.stderr  # truncated, before any check: UnpicklingError from numba
    assert again.stdout.split() == ["42", "0"]  # compiled again, not loaded
    (line,) = again.stderr.strip().splitlines()
    assert str(cached) in line and why in line and "compiling again" in line
    third = run_python("-c", TINY_RUN, str(tiny_stage / "resnet50.py"))
    assert third.stdout.split() == ["42", "1"] and third.stderr == ""  # rewritten whole, and used again


def test_cache_checksums_are_checked_only_for_the_projects_files(tmp_path):
    from common import jit_cache

    path = tmp_path / "f-1.py311.1.nbc"
    path.write_bytes(b"data")
    assert jit_cache.problem(path) == "no checksum recorded for it"
    jit_cache.record(path)
    assert jit_cache.problem(path) is None and jit_cache.problem(tmp_path / "absent.nbc") is None
    path.write_bytes(b"date")
    assert "damaged" in jit_cache.problem(path)
    jit_cache.install(ROOT)
    assert jit_cache._ours(str(ROOT / "stages" / "x" / "__pycache__")) and not jit_cache._ours(str(tmp_path))


@pytest.fixture
def private_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_generated_file_truncated_edited_or_from_another_version_is_rewritten(private_cache, monkeypatch):
    def load_generated(source):
        return codegen_cache.load(source, "05_codegen")

    source = TINY_STAGE + "# generated\n"
    path = Path(load_generated(source).__file__)
    assert path.read_text() == source and private_cache in path.parents
    for damage in (lambda: truncate(path, 30), lambda: path.write_text(source.replace("2 * x", "3 * x"))):
        damage()
        load_generated(source)
        assert path.read_text() == source
    monkeypatch.setattr("numba.__version__", "0.0.other")
    elsewhere = Path(load_generated(source).__file__)
    assert elsewhere.parent != path.parent and elsewhere.read_text() == source
    assert not list(private_cache.rglob("*.tmp"))


def test_the_cache_folder_is_private_and_a_shared_one_is_refused(private_cache):
    folder = cache_dir("codegen")
    assert (folder.stat().st_mode & 0o777) == 0o700 and folder.stat().st_uid == os.getuid()
    folder.chmod(0o777)
    with pytest.raises(CacheError, match="writable by other users") as info:
        cache_dir("codegen")
    assert str(folder) in str(info.value) and "\n" not in str(info.value)
    folder.chmod(0o700)
    if os.getuid() == 0:  # as root we can hand it to someone else; as a user we cannot
        os.chown(folder, 65534, -1)
        with pytest.raises(CacheError, match="belongs to another user"):
            cache_dir("codegen")
        os.chown(folder, 0, -1)
    folder.rename(private_cache / "real")
    folder.symlink_to(private_cache / "real")
    with pytest.raises(CacheError, match="symbolic link"):
        cache_dir("codegen")


def test_two_processes_building_05_at_once_then_a_damaged_cache(store, judge_logits, tmp_path):
    """Both builders answer right and leave a cache the next process uses; damage to it costs a recompile."""
    cache = tmp_path / "cache"
    builders = [
        start_python(
            "-c", BUILD_STAGE, str(store.path), "05", str(tmp_path / f"logits{i}.npy"), env={CACHE_ENV: str(cache)}
        )
        for i in range(2)
    ]
    for i, p in enumerate(builders):
        out, err = p.communicate(timeout=900)
        assert p.returncode == 0, err
        assert not last_json(out)["from_cache"]
        verdict = compare(np.load(tmp_path / f"logits{i}.npy"), judge_logits[0])
        assert verdict.ok, f"builder {i}: {verdict}"

    def rerun(name: str) -> tuple[dict, str]:
        run = run_python(
            *("-c", BUILD_STAGE, str(store.path), "05", str(tmp_path / name)), env={CACHE_ENV: str(cache)}, timeout=900
        )
        assert run.returncode == 0, run.stderr
        verdict = compare(np.load(tmp_path / name), judge_logits[0])
        assert verdict.ok, f"{name}: {verdict}"
        return last_json(run.stdout), run.stderr

    stats, _ = rerun("logits2.npy")
    assert stats["from_cache"] and stats["misses"] == 0 and stats["hits"] >= 1
    (folder,) = (cache / "codegen").iterdir()
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    (index,) = (folder / "__pycache__").glob("*forward*.nbi")
    index.write_bytes(b"\x80\x05not what numba wrote")
    stats, err = rerun("logits3.npy")
    assert not stats["from_cache"] and stats["compile_s"] > 0 and str(index) in err


# ---------------------------------------------------------------- results


def test_an_interrupted_bench_keeps_earlier_results_and_writes_no_partial_file(store, tmp_path):
    earlier = tmp_path / "20260101-000000-1.json"
    earlier.write_text('{"an": "earlier run"}\n')
    (tmp_path / "latest.json").write_text('{"an": "earlier run"}\n')
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    for sig in (signal.SIGINT, signal.SIGTERM):
        bench = start_python(
            *("-m", "bench.run", "--quick", "--stages", "02", "--out", str(tmp_path), "--readme", ""),
            env={"RESNET50_WEIGHTS": str(store.path)},
        )
        time.sleep(8)  # importing, loading weights, judging, timing: well before the end of a run
        assert bench.poll() is None, "the run ended before it could be interrupted"
        bench.send_signal(sig)
        _, err = bench.communicate(timeout=120)
        assert bench.returncode == 130, (sig, err)
        assert "interrupted" in err.strip().splitlines()[-1]
        assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_ctrl_c_while_a_command_is_still_importing_is_one_line():
    """`python -m bench.run` spends its first second importing numba, numpy and matplotlib, before its own
    handler is in place: a Ctrl-C then is one line, not a traceback (common's sys.excepthook)."""
    landed = 0
    for delay in (0.2, 0.3, 0.45, 0.6):
        command = start_python("-m", "bench.run", "--help")
        time.sleep(delay)
        command.send_signal(signal.SIGINT)
        out, err = command.communicate(timeout=60)
        if command.returncode == 0 or "usage:" in out:
            continue  # it was done importing already (and perhaps exiting: Python's shutdown has Ctrl-C at its default)
        assert "Traceback" not in err, (delay, err)
        assert err.strip().splitlines() == ["python -m bench.run: interrupted"], (delay, err)
        assert command.returncode in (130, -signal.SIGINT), command.returncode
        landed += 1
    assert landed, "every Ctrl-C came after the imports: none was tested"


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    latest = tmp_path / "latest.json"
    latest.write_text("old\n")

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space"):
        files.write_atomic(latest, "new\n")
    assert latest.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["latest.json"]


SAVE = r"""
import json, sys, time
from pathlib import Path
from bench import results
data = json.loads(Path(sys.argv[1]).read_text())
data["created"] = sys.argv[3]
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # all start in the same instant
print(results.save(data, Path(sys.argv[1]).parent / "out"))
"""


def test_runs_saving_at_once_do_not_clobber_each_other(small_results, tmp_path):
    (tmp_path / "template.json").write_text(json.dumps(small_results))
    start = str(time.time() + 3)
    savers = [start_python("-c", SAVE, str(tmp_path / "template.json"), start, f"run {i}") for i in range(4)]
    paths = [Path(p.communicate(timeout=60)[0].strip()) for p in savers]
    assert all(p.returncode == 0 for p in savers)
    assert len(set(paths)) == 4
    assert sorted(results.load(p)["created"] for p in paths) == [f"run {i}" for i in range(4)]
    assert results.load(tmp_path / "out" / "latest.json")["created"] in {f"run {i}" for i in range(4)}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted([*(p.name for p in paths), "latest.json"])


# ---------------------------------------------------------------- the image loader, fuzzed

FUZZ = r"""
import io, resource, sys, tempfile, time
from pathlib import Path
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image
from common.errors import ImageError
from common.images import load_image
from tests.memory import peak_kib

resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))  # a decoder that tries to eat memory fails here


def encoded(fmt, mode, **save):
    im = Image.linear_gradient("L").resize((61, 47)).convert(mode)
    buf = io.BytesIO()
    im.save(buf, fmt, **save)
    return buf.getvalue()


exif = Image.Exif()
exif[0x0112] = 6
SEEDS = [Path(p).read_bytes() for p in sys.argv[1:]] + [
    encoded("PNG", "RGB"), encoded("PNG", "P", transparency=0), encoded("PNG", "I;16"), encoded("PNG", "LA"),
    encoded("JPEG", "RGB", exif=exif), encoded("JPEG", "CMYK"), encoded("GIF", "P"), encoded("BMP", "RGB"),
    encoded("TIFF", "RGB", compression="tiff_lzw"), encoded("WEBP", "RGB"), encoded("PPM", "RGB"),
]
folder = Path(tempfile.mkdtemp())
slowest = [0.0]
outcomes = {"loaded": 0, "refused": 0}


def check(data: bytes, suffix: str) -> None:
    path = folder / f"fuzz{suffix}"
    path.write_bytes(data)
    t0 = time.perf_counter()
    try:
        x = load_image(path)
        assert x.shape == (3, 224, 224) and str(x.dtype) == "float32"
        outcomes["loaded"] += 1
    except ImageError as e:
        assert "\n" not in str(e) and str(path) in str(e), str(e)
        outcomes["refused"] += 1
    slowest[0] = max(slowest[0], time.perf_counter() - t0)


@st.composite
def mutated(draw):
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data) - 1))
        kind = draw(st.sampled_from(["flip", "cut", "insert", "big"]))
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "cut":
            del data[at:]
            if not data:
                break
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:  # a size or length field made huge
            data[at : at + 4] = b"\xff\xff\x7f\xff"
    return bytes(data)


SETTINGS = settings(max_examples=int(__import__("os").environ.get("FUZZ_EXAMPLES", "1000")), deadline=None,
                    database=None, derandomize=True, suppress_health_check=list(HealthCheck))


@SETTINGS
@given(st.binary(max_size=2048), st.sampled_from([".jpg", ".png", ".gif", ".bin"]))
def random_bytes(data, suffix):
    check(data, suffix)


@SETTINGS
@given(mutated(), st.sampled_from([".jpg", ".png"]))
def mutated_images(data, suffix):
    check(data, suffix)


random_bytes()
mutated_images()
peak = peak_kib() / 1024
print(f"{slowest[0]:.3f} {peak:.0f} {outcomes['loaded']} {outcomes['refused']}")
"""


def test_fuzzed_images_give_only_image_errors_in_bounded_time_and_memory():
    """Random bytes and mutated real images of every format the loader meets: either a (3, 224, 224) input
    or one ImageError line, each within hypothesis's deadline, the process under a 2 GiB address-space cap."""
    seeds = [str(ROOT / "images" / name) for name in ("horse.png", "rocket.jpg")]
    run = run_python("-c", FUZZ, *seeds, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    _slowest_s, peak_mib, loaded, refused = map(float, run.stdout.split())
    assert peak_mib < 1024, run.stdout  # time is bounded by the timeout: tests do not assert on the clock
    assert loaded > 0 and refused > 0, run.stdout  # both sides of the loader were exercised


def test_a_read_only_cache_compiles_in_memory_and_writes_nowhere(tmp_path, monkeypatch, capsys):
    """numba falls back to ~/.cache/numba (unchecked) when it cannot write next to the source; generated code
    in a read-only cache folder is compiled in memory instead, with one line saying so."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(codegen_cache.os, "access", lambda path, mode: False)  # as on a read-only mount
    source = "from numba import njit\n\n\n@njit(cache=True)\ndef forward(x):\n    return x + 1\n"
    module = codegen_cache.load(source, "00_tiny")
    assert module.forward(1) == 2 and module.__name__.endswith("_in_memory")
    assert "read-only" in capsys.readouterr().err
    assert not list((tmp_path / "cache").rglob("__pycache__")), "numba wrote a cache after all"


def test_clean_cache_on_a_folder_it_cannot_change_is_one_line_per_folder(tmp_path, monkeypatch):
    folder = tmp_path / "codegen" / f"05_codegen-{'0' * 20}"
    folder.mkdir(parents=True)
    (folder / codegen_cache.FILE).write_text("# generated\n")

    def refuse(self, missing_ok=False):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(Path, "unlink", refuse)
    removed, kept = codegen_cache.clean(tmp_path)
    assert removed == [] and kept == [(folder, "could not be removed (Read-only file system)")]
