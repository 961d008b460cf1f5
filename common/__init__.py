"""Everything that is not the subject of optimization: the spec, weights, images, labels and the judge.

One setting for the whole project lives here, because every stage imports `common` before its first
parallel kernel runs: numba's threading layer. numba takes TBB before OpenMP whenever libtbb is installed
(Debian's OpenCV development packages, which `make cpp` needs, bring it), and measured here the threaded
stages then take 1.25-1.4x as long on 2 threads (08: 25 ms against 20; 09: 27 against 19). OpenMP first,
unless the user chose a layer with NUMBA_THREADING_LAYER or NUMBA_THREADING_LAYER_PRIORITY.
"""

import os
import sys


def _interrupted(kind, value, traceback, previous=sys.excepthook) -> None:
    """A Ctrl-C that no command caught, e.g. while Python was still importing numba or matplotlib for it: one
    line, not a traceback (the commands that write catch it themselves and say what they left)."""
    if issubclass(kind, KeyboardInterrupt):
        argv = sys.orig_argv
        command = f"python -m {argv[argv.index('-m') + 1]}" if "-m" in argv[:-1] else "python"
        print(f"\n{command}: interrupted", file=sys.stderr)
    else:
        previous(kind, value, traceback)


sys.excepthook = _interrupted  # first thing, before the slow imports below and in every command

# numba reads NUMBA_NUM_THREADS when it is imported and answers a bad value with a traceback: one line instead.
_threads = os.environ.get("NUMBA_NUM_THREADS")
if _threads is not None and not (_threads.strip().isdigit() and int(_threads) >= 1):
    print(f"NUMBA_NUM_THREADS={_threads!r}: must be a whole number of threads, at least 1", file=sys.stderr)
    raise SystemExit(2)

import numba  # noqa: E402  (after the check above)

OPENMP_FIRST = ["omp", "tbb", "workqueue"]

if not ({"NUMBA_THREADING_LAYER", "NUMBA_THREADING_LAYER_PRIORITY"} & set(os.environ)):
    numba.config.THREADING_LAYER_PRIORITY = OPENMP_FIRST
