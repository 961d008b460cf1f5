"""Timing helpers: wall time with numba's compile time split out."""

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from numba.core import event


@dataclass
class CompileClock:
    seconds: float = 0.0


@contextmanager
def compile_clock() -> Iterator[CompileClock]:
    """Seconds numba spends compiling inside the block (nested compilations counted once).

    Loading a kernel from numba's on-disk cache is not compiling, so a warm cache reads about 0.
    """
    clock = CompileClock()

    def record(duration: float) -> None:
        clock.seconds += duration

    with event.install_timer("numba:compile", record):
        yield clock


def timed_call(fn: Callable[..., Any], *args: Any) -> tuple[Any, float, float]:
    """fn(*args) -> (result, seconds of running, seconds of compiling within the call)."""
    with compile_clock() as clock:
        t0 = time.perf_counter()
        result = fn(*args)
        wall = time.perf_counter() - t0
    return result, max(wall - clock.seconds, 0.0), clock.seconds
