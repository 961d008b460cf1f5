"""Shared fixtures: the weight store, the sample images and the judge's logits for them; and, for `make
test`'s parallel run (--warm-stages), every generated stage compiled into the cache in the background from
the start, two at a time, so that the workers' tests find them compiled (or wait on the cache's lock for
the one being compiled) instead of compiling one after another."""

import contextlib
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from bench import results
from common import stages
from common.images import load_batch, sample_images
from common.make_weights import make_random
from common.paths import weights_dir
from common.quantized import Int8Reference
from common.reference import Reference
from common.weights import WeightStore


def pytest_addoption(parser):
    parser.addoption("--warm-stages", action="store_true", help="compile every generated stage in the background")


_WARMING: list[threading.Thread] = []
_STOP_WARMING = threading.Event()


def pytest_configure(config):
    if not config.getoption("--warm-stages") or hasattr(config, "workerinput"):  # the controller warms
        return
    from common.generated import warm_cache

    def warm() -> None:
        with contextlib.suppress(Exception):  # a stage that does not compile fails its own tests, saying why
            warm_cache(stages.available(), 2, _STOP_WARMING)

    thread = threading.Thread(target=warm, name="warm-stages", daemon=True)
    thread.start()
    _WARMING.append(thread)


def pytest_unconfigure(config):
    _STOP_WARMING.set()  # a run that ends early (-x) starts no further compile, and waits for the running ones
    for thread in _WARMING:
        thread.join(timeout=900)


@pytest.fixture(scope="session")
def store(tmp_path_factory) -> WeightStore:
    """The project's store (what `make test` prepares); a fresh random one if there is none."""
    path = weights_dir()
    if not (path / "manifest.json").exists():
        path = tmp_path_factory.mktemp("weights") / "store"
        make_random(path, seed=0)
    return WeightStore(path)


@pytest.fixture
def copy_of(store, tmp_path) -> Path:
    """A copy of the store (hard links: instant) whose files a test may replace, never edit in place."""
    dest = tmp_path / "store"
    shutil.copytree(store.path, dest, copy_function=os.link)
    return dest


@pytest.fixture(scope="session")
def sample_batch() -> tuple[np.ndarray, list]:
    batch, paths, bad = load_batch(sample_images())
    assert not bad and len(paths) >= 6, (bad, paths)
    return batch, paths


@pytest.fixture(scope="session")
def judge_logits(store, sample_batch) -> np.ndarray:
    batch, _ = sample_batch
    return Reference(store, max_batch=len(batch))(batch)


@pytest.fixture(scope="session")
def int8_judge(store, sample_batch) -> tuple[np.ndarray, float]:
    """ONNX Runtime int8's logits for the sample images (common.quantized), and the logits' scale."""
    batch, _ = sample_batch
    judge = Int8Reference(store, max_batch=len(batch))
    return judge(batch), judge.scale


STAGES = stages.available()


def stage_params():
    """One pytest param per stage folder, the slow naive stage marked (see also test_stages_vs_judge)."""
    return [pytest.param(s, id=s.name, marks=[pytest.mark.slow] if s.key == "01" else _unavailable(s)) for s in STAGES]


def _unavailable(info) -> list:
    """A stage this machine cannot run (11 without AMX) is skipped, saying why."""
    why = getattr(getattr(stages.load(info), "ResNet50", None), "unavailable", None)
    return [pytest.mark.skip(reason=f"{info.name}: {why}")] if why else []


def entry(name, kind, threads, median, label=None, cpp=None, images_per_s=None):
    e = {
        "name": name,
        "label": label or name,
        "kind": kind,
        "threads": threads,
        "status": "ok",
        "message": "",
        "build_s": 0.1,
        "first_call_s": median / 1e3,
        "compile_s": 1.0,
        "verdict": {},
        "cpp_ms": cpp,
        "latency_ms": {"median": median, "min": median * 0.9, "p90": median * 1.1, "samples": [median]},
        "throughput": {"batch": 8, "images_per_s": images_per_s or 1000 / median, "samples_s": [0.1]},
        "gflops": 8.18 / (median / 1e3),
        "peak_fraction": 8.18 / (median / 1e3) / 100,
    }
    return e


@pytest.fixture
def small_results() -> dict:
    return {
        "schema": results.SCHEMA,
        "created": "2026-11-24T10:00:00+0000",
        "settings": {
            "quick": True,
            "images": ["cat.png"],
            "throughput_batch": 8,
            "budget_s": 1,
            "max_repeats": 1,
            "thread_counts": [1, 2],
        },
        "machine": {
            "cpu": {
                "model": "Test CPU",
                "flags": ["avx2", "fma", "avx512f"],
                "usable_cpus": 2,
                "logical_cpus": 2,
                "arch": "x86_64",
            },
            "git_commit": "abc1234",
            "environment_traps": ["OPENBLAS_CORETYPE=Haswell picks OpenBLAS's kernel by hand"],
        },
        "peak": {
            "method": "test",
            "gflops_1_thread": 100.0,
            "gflops_all_threads": 200.0,
            "threads_all": 2,
            "sgemm_gflops_1_thread": 90.0,
            "sgemm_gflops_all_threads": 170.0,
        },
        "flops_per_image": 8178368512,
        "entries": [
            entry("01_naive", "stage", 1, 10000.0, cpp=16923),
            entry("02_vectorized", "stage", 1, 500.0, cpp=4973),
            entry("06_threads", "stage", 2, 80.0, cpp=297),
            entry("onnxruntime@1", "peer", 1, 75.0, label="ONNX Runtime"),
            entry("onnxruntime@2", "peer", 2, 40.0, label="ONNX Runtime"),
            {
                "name": "torch@1",
                "label": "PyTorch eager",
                "kind": "peer",
                "threads": 1,
                "status": "missing",
                "message": "not installed (make torch)",
            },
        ],
        "extrapolations": [{"name": "pure Python (extrapolated)", "mflops": 5.7, "latency_s": 1434.0}],
    }
