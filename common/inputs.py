"""The one check every stage makes on what it is given, before any compiled code sees it."""

import numpy as np

from common import spec
from common.errors import ModelInputError

SHAPE = (spec.IN_CHANNELS, spec.IMAGE_SIZE, spec.IMAGE_SIZE)
# A stage plans every buffer for max_batch images at construction (about 25 MB each): 64 is 1.6 GB.
MAX_BATCH = 64


def check_max_batch(max_batch: object) -> int:
    """A stage's or the judge's max_batch: a whole number of images, 1 to MAX_BATCH; else ModelInputError."""
    if isinstance(max_batch, bool) or not isinstance(max_batch, int | np.integer) or not 1 <= max_batch <= MAX_BATCH:
        raise ModelInputError(f"max_batch={max_batch!r}: must be a whole number of images from 1 to {MAX_BATCH}")
    return int(max_batch)


def check_threads(threads: object, available: int) -> int:
    """A thread count: a whole number from 1 to what the process has; else ModelInputError."""
    if isinstance(threads, bool) or not isinstance(threads, int | np.integer) or not 1 <= threads <= available:
        raise ModelInputError(
            f"threads={threads!r}: this process has 1 to {available} threads (NUMBA_NUM_THREADS)"
        )
    return int(threads)


def check_batch(x: object, max_batch: int) -> np.ndarray:
    """Return x if it is a usable (N, 3, 224, 224) float32 C-contiguous finite batch, N <= max_batch.

    Raises ModelInputError (a ValueError) naming what was expected: compiled code given the wrong thing
    crashes or, worse, silently computes garbage.
    """
    if not isinstance(x, np.ndarray):
        raise ModelInputError(f"input must be a numpy array (N, 3, 224, 224) float32, got {type(x).__name__}")
    if x.ndim != 4 or x.shape[1:] != SHAPE:
        hint = " (channels last? use x.transpose(0, 3, 1, 2))" if x.ndim == 4 and x.shape[3:] == (3,) else ""
        raise ModelInputError(f"input must have shape (N, 3, 224, 224), got {x.shape}{hint}")
    if x.dtype != np.float32:
        raise ModelInputError(f"input must be float32, got {x.dtype} (use x.astype(np.float32))")
    if not x.flags.c_contiguous:
        raise ModelInputError("input must be C-contiguous (use np.ascontiguousarray(x))")
    n = x.shape[0]
    if n < 1 or n > max_batch:
        raise ModelInputError(f"batch of {n} images, but this model was built for 1 to {max_batch} (max_batch)")
    if not np.isfinite(x).all():
        raise ModelInputError("input holds NaN or Inf values")
    return x
