"""Stage 06's claims: correct for any thread count and any channel count, including counts that do not
divide (the C++ original left the leftover output channels uncomputed). Its speed-up from a second core
is checked by `make regress`, not here: tests do not time things."""


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


def test_parallel_regions_per_image_are_two_per_conv_and_one_per_other_step(store):
    """NOTES.md's count, derived from the network (spec) rather than read back from the generated code: two
    per conv (its input copy, its output channels), one per BatchNorm, ReLU, residual add, pool and fc."""
    steps = spec.STEPS
    expected = 2 * len(spec.CONVS) + len(spec.CONVS) + sum(s.relu for s in steps) + sum(bool(s.residual) for s in steps)
    expected += sum(s.op in ("maxpool", "avgpool", "fc") for s in steps)
    assert parallel_regions_per_image(stages.load("06").ResNet50(store).source) == expected == 227
