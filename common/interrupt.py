"""Ctrl-C and `kill` for the commands that write files: both stop the command where it is, as a
KeyboardInterrupt that the command catches to say what it left, and it ends with exit status 130."""

import os
import signal
import sys
from typing import NoReturn


def _stop(signum, frame) -> None:
    raise KeyboardInterrupt


def catch_kill() -> None:
    """`kill` stops the command as cleanly as Ctrl-C. Ctrl-C is set explicitly too: a shell starts background
    jobs with it ignored, and Python then leaves it so."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _stop)


def leave(code: int) -> NoReturn:
    """sys.exit(code); after an interrupt (130), at once. Python's own shutdown runs with Ctrl-C and `kill`
    back at their defaults and, with torch and ONNX Runtime loaded, takes up to a second: a bench stopped
    while importing torch was seen to end killed by SIGINT instead of with 130. Nothing is left for the
    shutdown to finish: the commands write every file whole or not at all."""
    if code == 130:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    sys.exit(code)
