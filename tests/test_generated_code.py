"""Every generating stage (05 and later) writes code a person could have written, for any target: no
arithmetic nobody would write, no loop that runs once. Generated from shapes alone (nothing compiled)."""

import re

import pytest

from common import stages
from common.generated import ShapesOnly, source_only

GENERATING = [s for s in stages.available() if hasattr(stages.load(s), "generate")]
NEVER = (r"\* 1\b", r"\+ 0\b", r"\b0 \+", r"// 1\b", r"% 1\b", r"\b0 \*", r"range\(1\)", r"range\(0, (\d+), \1\)")


@pytest.mark.parametrize("stage", GENERATING, ids=[s.name for s in GENERATING])
def test_generated_code_reads_like_hand_written_code(stage):
    with source_only():
        source = stages.load(stage).ResNet50(ShapesOnly()).source
    for pattern in NEVER:
        found = re.search(pattern, source)
        assert not found, (pattern, source[max(0, found.start() - 80) : found.end() + 40])
    assert len(GENERATING) >= 5


def test_warming_the_cache_starts_no_compile_once_told_to_stop(tmp_path, monkeypatch):
    """make test's background warm-up (--warm-stages): stopped before it starts, it compiles nothing."""
    import threading

    from common import stages
    from common.generated import warm_cache

    monkeypatch.setenv("RESNET50_CACHE", str(tmp_path))
    stop = threading.Event()
    stop.set()
    assert warm_cache(stages.available(), 2, stop) == []
    assert not list(tmp_path.glob("codegen/*/__pycache__/*.nbi"))  # nothing compiled into the empty cache
