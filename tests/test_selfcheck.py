"""Compiled code from a cache checks its own answer before it is used (common.selfcheck): a cached forward
pass that computes something else than it did when compiled is thrown away and compiled again."""

import hashlib
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from common import codegen_cache, jit_cache, selfcheck, stages
from common.reference import compare
from tests.processes import BUILD_STAGE, last_json, run_python


def test_a_record_that_matches_bit_for_bit_passes_without_the_judge(tmp_path):
    logits = np.random.default_rng(0).standard_normal((1, 1000)).astype(np.float32)
    path = tmp_path / "selfcheck-0.npy"
    selfcheck.save(path, logits)

    def never(_):
        raise AssertionError("the judge runs only when nothing is recorded")

    assert selfcheck.verify(logits.copy(), path, never) is None
    off = logits.copy()
    off[0, 7] = np.nextafter(off[0, 7], np.float32(np.inf))  # one bit in one logit
    assert "differ from those recorded" in selfcheck.verify(off, path, never)


def test_with_no_record_the_judge_decides_and_only_a_pass_is_recorded(tmp_path):
    logits = np.ones((1, 1000), np.float32)
    path = tmp_path / "selfcheck-1.npy"
    assert selfcheck.verify(logits, path, lambda _: "wrong by the judge") == "wrong by the judge"
    assert not path.exists()
    assert selfcheck.verify(logits, path, lambda _: None) is None
    assert np.array_equal(np.load(path, allow_pickle=False), logits)


def test_a_damaged_record_is_judged_again(tmp_path):
    path = tmp_path / "selfcheck-2.npy"
    path.write_bytes(b"not an npy file")
    assert selfcheck.verify(np.zeros((1, 1000), np.float32), path, lambda _: None) is None
    assert np.load(path, allow_pickle=False).shape == (1, 1000)


def restamp(folder, source: bytes) -> None:
    """Make numba's index files in folder/__pycache__ claim to be for `source`, and checksum them anew: numba
    (0.68) keys its cache on a hash of the source file, so this is what a cache that hands back intact code
    for the wrong source looks like from outside."""
    for index in (folder / "__pycache__").glob("*.nbi"):
        with open(index, "rb") as f:
            version = pickle.load(f)
            _, overloads = pickle.loads(f.read())
        with open(index, "wb") as f:
            pickle.dump(version, f, protocol=-1)
            f.write(pickle.dumps((hashlib.sha256(source).digest(), overloads), protocol=-1))
        jit_cache.record(index)


def test_a_wrong_cached_forward_is_caught_compiled_again_and_right(store, tmp_path, sample_batch, judge_logits):
    """The case numba's cache gave before (08's NOTES): intact, checksummed machine code that computes
    something else. Made on purpose: 05's module (the cheapest to compile) is compiled and its check
    recorded; then numba's cache next to it is replaced by the compiled code of a mutant (the average pool
    divides by 47, not 49), re-keyed for the real source and checksummed. A new process must say so in one
    line, compile again and match the judge, and leave no wrong code behind."""
    built = stages.load("05").ResNet50(store)  # in the run's own cache (compiled once for the whole run)
    cache = tmp_path / "cache"
    env = {"RESNET50_CACHE": str(cache)}
    folder = cache / "codegen" / Path(built.forward.py_func.__code__.co_filename).parent.name
    shutil.copytree(Path(built.forward.py_func.__code__.co_filename).parent, folder)  # with its check's record
    source_path = folder / codegen_cache.FILE
    real = source_path.read_bytes()
    assert real.count(b"np.float32(h * wd)") == 1
    codegen_cache.forget(folder)
    source_path.write_bytes(real.replace(b"np.float32(h * wd)", b"np.float32(h * wd - 2)"))
    mutant = run_python("-c", MUTANT_BUILD, str(folder), env=env, timeout=900)
    assert mutant.returncode == 0, mutant.stderr
    source_path.write_bytes(real)
    restamp(folder, real)

    logits_path = tmp_path / "logits.npy"
    again = run_python("-c", BUILD_STAGE, str(store.path), "05", str(logits_path), env=env, timeout=900)
    assert again.returncode == 0, again.stderr
    said = [line for line in again.stderr.splitlines() if "cached compiled code not used" in line]
    assert len(said) == 1 and "differ from those recorded" in said[0], again.stderr
    verdict = compare(np.load(logits_path, allow_pickle=False), judge_logits[0])
    assert verdict.ok, verdict
    assert not last_json(again.stdout)["from_cache"]  # it compiled its own, in memory
    assert not list((folder / "__pycache__").glob("*.nbi")), "the wrong code is still in the cache"


# The mutant source in 05's folder compiled into numba's cache there, as a build's child process compiles.
MUTANT_BUILD = r"""
import sys
from pathlib import Path
from common import codegen_cache
folder = Path(sys.argv[1])
stage, digest = folder.name.rsplit("-", 1)
codegen_cache.compile_here(folder, f"resnet50_generated_{stage}_{digest}")
"""


@pytest.mark.parametrize("stage", ["08", "09"])
def test_the_tile_loaded_from_the_cache_in_a_new_process_matches_the_judge(stage, store, tmp_path, judge_logits):
    """The micro-kernel's variant for this target (6x64 on AVX-512, 5x16 on AVX2), loaded from numba's cache
    in a process that did not compile it, on the first sample image (the checked build, as a user gets it)."""
    env = {}  # the run's own cache: compiled by the stage's tests or by the first of these two children
    for _ in range(2):
        logits_path = tmp_path / "logits.npy"
        run = run_python("-c", BUILD_STAGE, str(store.path), stage, str(logits_path), env=env, timeout=900)
        assert run.returncode == 0, run.stderr
        verdict = compare(np.load(logits_path, allow_pickle=False), judge_logits[0])
        assert verdict.ok, verdict
    assert last_json(run.stdout)["from_cache"], "the second build did not come from the cache"
