"""A stage's compiled code checks its own answer before it is used, whenever it came from a cache.

numba's on-disk cache hands back machine code compiled in another process. Checksums (common.jit_cache)
catch damaged files; they cannot catch code that is intact and wrong (08's NOTES record tile variants that
were right when compiled and wrong when the same module was loaded from numba's cache). So:

- the first time a stage's compiled forward pass meets a weight store, its logits for a fixed input
  (seeded noise, one image, one thread) are judged against ONNX Runtime and, when they pass, recorded
  beside the generated code for these weights;
- every later load computes them again, and they must be the same bit for bit;
- anything else throws the cached code away and compiles afresh, with one line on stderr saying so.

The check costs one forward pass of one image and a checksum of the packed weights (measured on AMD Zen 4,
2026-12: 0.06-0.08 s for the checksum of 102-144 MB, 0.08-0.19 s for the pass, of a 0.9-1.2 s warm start).
"""

import contextlib
import hashlib
import io
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from common.files import write_atomic
from common.inputs import SHAPE

PROBE_SEED = 20261201


def probe() -> np.ndarray:
    """The fixed input: one image of seeded noise in the range a normalised photo has."""
    return np.random.default_rng(PROBE_SEED).standard_normal((1, *SHAPE), dtype=np.float32)


def weights_digest(params: np.ndarray) -> str:
    return hashlib.sha256(memoryview(np.ascontiguousarray(params)).cast("B")).hexdigest()[:20]


def record_path(folder: Path, params: np.ndarray) -> Path:
    return folder / f"selfcheck-{weights_digest(params)}.npy"


def save(path: Path, logits: np.ndarray) -> None:
    """Written atomically; a cache that cannot be written only means the next start judges again."""
    out = io.BytesIO()
    np.save(out, np.ascontiguousarray(logits), allow_pickle=False)
    with contextlib.suppress(OSError):
        write_atomic(path, out.getvalue())


def recorded(path: Path) -> np.ndarray | None:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None  # absent or damaged: judged as if new


Judge = Callable[[np.ndarray], str | None]


def verify(logits: np.ndarray, path: Path, judge: Judge, record: bool = True) -> str | None:
    """Why logits computed by cached code must not be trusted, or None (and recorded) when they are right.

    judge(logits) returns why they are wrong, or None; it runs only when nothing is recorded yet (and code
    compiled in memory only is judged, never recorded: record=False)."""
    want = recorded(path) if record else None
    if want is not None:
        comparable = want.shape == logits.shape and want.dtype == logits.dtype
        bad = int(np.sum(want.view(np.uint32) != logits.view(np.uint32))) if comparable else logits.size  # bits
        if bad == 0:
            return None
        return f"its logits for the check input differ from those recorded when it was compiled ({bad} values)"
    why = judge(logits)
    if why is None and record:
        save(path, logits)
    return why


def forget(folder: Path) -> None:
    """Drop a folder's records: its code was compiled again, and is judged again."""
    for path in folder.glob("selfcheck-*.npy"):
        path.unlink(missing_ok=True)


def say(where: str, why: str) -> None:
    print(f"{where}: cached compiled code not used: {why}; compiling again", file=sys.stderr, flush=True)
