"""The code stays `ruff check` clean (the project's style rules live in pyproject.toml)."""

import shutil
import subprocess
import sys
from pathlib import Path

from common.paths import ROOT


def test_ruff_check_is_clean():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff is not installed; it comes with the dev extra (make setup)"
    run = subprocess.run([ruff, "check", "--output-format", "concise", "."], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
