"""Stage 03's claim: after construction, a forward pass opens no file (02's opens one per tensor)."""

import builtins
import io
import os

import pytest

from common import stages
from common.reference import compare


class OpenedAFile(Exception):
    pass


def forbid_opening_files(monkeypatch):
    def refuse(*args, **kwargs):
        raise OpenedAFile(f"forward tried to open {args[0] if args else '?'}")

    for module, name in [(builtins, "open"), (io, "open"), (os, "open")]:
        monkeypatch.setattr(module, name, refuse)


def test_preloaded_forward_opens_no_file(store, sample_batch, judge_logits, monkeypatch):
    batch, _ = sample_batch
    model = stages.load("03").ResNet50(store)
    model(batch[:1])  # compile (numba may read its cache) before the check
    forbid_opening_files(monkeypatch)
    logits = model(batch[1:2])
    monkeypatch.undo()
    assert compare(logits[0], judge_logits[1]).ok


def test_the_check_catches_a_stage_that_reads_weights_in_forward(store, sample_batch, monkeypatch):
    batch, _ = sample_batch
    model = stages.load("02").ResNet50(store)
    model(batch[:1])
    forbid_opening_files(monkeypatch)
    with pytest.raises(OpenedAFile, match=r"\.npy"):
        model(batch[1:2])
