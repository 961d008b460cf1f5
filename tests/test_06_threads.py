"""Stage 06's claims: correct for any thread count and any channel count, including counts that do not
divide (the C++ original left the leftover output channels uncomputed). Its speed-up from a second core
is checked by `make regress`, not here: tests do not time things."""

import re

import pytest

from common import spec, stages
from tests.odd_convs import odd_conv_errors
from tests.source import parallel_regions_per_image


def test_odd_channel_counts_on_1_2_and_3_threads_match_the_judges_conv():
    errors = odd_conv_errors("06", threads=(1, 2, 3))
    assert len(errors) == 9
    for case, err in errors.items():
        assert err < 1e-4, f"{case}: max |diff| {err} (NaN means channels left uncomputed)"


def test_thread_count_is_checked(store):
    import numba

    for bad in (0, numba.config.NUMBA_NUM_THREADS + 1):
        with pytest.raises(ValueError, match="threads="):
            stages.load("06").ResNet50(store, threads=bad)


def test_every_conv_kernel_splits_output_channels_across_threads(store):
    source = stages.load("06").ResNet50(store).source
    kernels = source.split("\n\n\n")
    convs = [k for k in kernels if "\ndef conv_" in k]
    assert len(convs) == 23 and len(spec.CONVS) == 53
    for k in convs:
        assert "parallel=True)\ndef conv_" in k
        assert "for i in prange(" in k and "for b in prange(" in k, k[:300]  # its copy, its output channels


def test_the_count_of_parallel_regions_per_image_is_what_notes_says(store):
    notes = (stages.find("06").folder / "NOTES.md").read_text()
    said = int(re.search(r"(\d+) parallel regions per image", notes).group(1))
    assert parallel_regions_per_image(stages.load("06").ResNet50(store).source) == said
