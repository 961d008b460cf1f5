"""The one check every stage makes on what it is given, before any compiled code sees it."""

import numpy as np

from common import spec
from common.errors import ModelInputError

SHAPE = (spec.IN_CHANNELS, spec.IMAGE_SIZE, spec.IMAGE_SIZE)


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
