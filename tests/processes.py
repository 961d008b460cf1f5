"""The project's Python in a child process, started from the project root as a user would start it."""

import json
import os
import subprocess
import sys
from typing import Any

from common.paths import ROOT

# Build a generated stage (argv: store, stage[, logits.npy]), classify the first sample image, print what the
# build did as JSON (seconds compiling, whether the cache held the code, numba's hits and misses in this
# process); with a third argument, save the logits there for the test to judge.
BUILD_STAGE = r"""
import json, sys
import numpy as np
from common import stages
from common.images import load_batch, sample_images
from common.weights import WeightStore
stage = stages.load(sys.argv[2])
model = stage.ResNet50(WeightStore(sys.argv[1], verify=False))
logits = model(load_batch(sample_images()[:1])[0])[0]
if len(sys.argv) > 3:
    np.save(sys.argv[3], logits)
stats = model.forward.stats
print(json.dumps({"compile_s": model.compile_s, "from_cache": model.from_cache, "hits": sum(stats.cache_hits.values()),
                  "misses": sum(stats.cache_misses.values()), "path": model.forward.py_func.__code__.co_filename}))
"""


def _command(args: tuple[str, ...], env: dict | None) -> dict:
    return {"args": [sys.executable, *args], "cwd": ROOT, "env": {**os.environ, **(env or {})}, "text": True}


def run_python(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python ARGS` (e.g. "-m", "bench.run", ...), waited for, its output captured."""
    return subprocess.run(**_command(args, env), capture_output=True, timeout=timeout)


def start_python(*args: str, env: dict | None = None) -> subprocess.Popen:
    """`python ARGS` started and left running, its output piped."""
    return subprocess.Popen(**_command(args, env), stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def last_json(output: str) -> Any:
    """The JSON a child printed on its last line of output."""
    return json.loads(output.strip().splitlines()[-1])


def build_in_new_process(store, stage: str, cache, logits=None) -> dict:
    """BUILD_STAGE in a child whose generated-code cache is `cache`: what numba's cache did."""
    extra = [str(logits)] if logits is not None else []
    run = run_python("-c", BUILD_STAGE, str(store.path), stage, *extra, env={"RESNET50_CACHE": str(cache)}, timeout=900)
    assert run.returncode == 0, run.stderr
    return last_json(run.stdout)
