"""The regression check's rules on synthetic figures: no timing here, just the decisions."""

import itertools
import json

import pytest

from bench import regression
from common import stages
from common.errors import ResultsError

BASE = {"02_vectorized": 5.0, "03_preload": 4.5, "05_codegen": 1.5}


def by_stage(findings):
    return {f.stage: f for f in findings}


def test_a_regression_beyond_the_tolerance_fails_naming_stage_and_numbers():
    f = by_stage(regression.compare({"02_vectorized": 6.5, "03_preload": 4.5, "05_codegen": 1.5}, BASE, 0.2))
    assert f["02_vectorized"].failed and f["02_vectorized"].status == "regressed"
    assert "02_vectorized is slower" in f["02_vectorized"].message
    assert "6.5" in f["02_vectorized"].message and "5" in f["02_vectorized"].message
    assert "+30%" in f["02_vectorized"].message and "tolerance 20%" in f["02_vectorized"].message
    assert not f["03_preload"].failed


def test_a_noise_level_wobble_passes_both_ways():
    f = by_stage(regression.compare({"02_vectorized": 5.9, "03_preload": 3.7, "05_codegen": 1.52}, BASE, 0.2))
    assert [x.status for x in f.values()] == ["ok", "ok", "ok"]


def test_a_large_improvement_passes_and_suggests_a_new_baseline():
    (f,) = regression.compare({"05_codegen": 0.9}, {"05_codegen": 1.5}, 0.2)
    assert f.status == "improved" and not f.failed and "make baseline" in f.message


def test_a_new_stage_without_baseline_passes_and_says_so():
    f = by_stage(regression.compare({**BASE, "07_winograd": 0.8}, BASE))
    assert f["07_winograd"].status == "new" and not f["07_winograd"].failed
    assert "make baseline" in f["07_winograd"].message


def test_a_stage_missing_from_the_run_fails():
    f = by_stage(regression.compare({"02_vectorized": 5.0, "05_codegen": 1.5}, BASE))
    assert f["03_preload"].status == "missing" and f["03_preload"].failed
    assert "not measured" in f["03_preload"].message


def test_promises_are_read_from_notes():
    assert regression.read_promise(
        "**Promise:** at least 1.5x faster than `04_no_alloc` (measured)."
    ) == regression.Promise("04_no_alloc", 1.5)
    assert regression.read_promise("**Promise:** faster than `02_vectorized`.") == regression.Promise(
        "02_vectorized", 1.0
    )
    assert regression.read_promise("**Promise:** at least 0.95x as fast as `03_preload`.") == regression.Promise(
        "03_preload", 0.95
    )
    assert regression.read_promise("no promise here") is None


def test_every_stage_after_the_first_promises_a_speedup_over_its_predecessor():
    infos = stages.available()
    for before, after in itertools.pairwise(infos):
        promise = regression.read_promise((after.folder / "NOTES.md").read_text())
        assert promise is not None, f"{after.name}/NOTES.md has no **Promise:** line"
        assert promise.predecessor == before.name and promise.factor >= 0.95


def test_a_broken_promise_fails_and_a_kept_one_passes():
    promise = regression.Promise("05_codegen", 1.4)
    assert regression.check_promise("06_threads", promise, 1.79).status == "kept"
    broken = regression.check_promise("06_threads", promise, 1.05)
    assert broken.failed and "1.05x as fast as 05_codegen" in broken.message and "at least 1.4x" in broken.message


def test_baseline_keeps_other_machines_and_refuses_unknown_schema(tmp_path):
    path = tmp_path / "baseline.json"
    regression.write_baseline(path, "CPU A, 2 cores", {"stages": {"02_vectorized": {"ratio": 5.0}}})
    regression.write_baseline(path, "CPU B, 8 cores", {"stages": {"02_vectorized": {"ratio": 3.0}}})
    regression.write_baseline(path, "CPU A, 2 cores", {"stages": {"02_vectorized": {"ratio": 4.0}}})
    machines = regression.load_baseline(path)["machines"]
    assert machines["CPU A, 2 cores"]["stages"]["02_vectorized"]["ratio"] == 4.0
    assert machines["CPU B, 8 cores"]["stages"]["02_vectorized"]["ratio"] == 3.0
    path.write_text(json.dumps({"schema": 9, "machines": {}}))
    with pytest.raises(ResultsError, match="schema 9"):
        regression.load_baseline(path)


def test_machine_key_separates_cpu_models_and_core_counts():
    zen4 = {"model": "AMD EPYC", "family": "25", "model_number": "17", "usable_cpus": 2}
    assert regression.machine_key(zen4) == "AMD EPYC (family 25, model 17), 2 cores"
    assert regression.machine_key({**zen4, "usable_cpus": 4}) != regression.machine_key(zen4)
    assert regression.machine_key({**zen4, "model_number": "1"}) != regression.machine_key(zen4)


def test_another_machines_baseline_is_used_with_a_wider_tolerance_when_this_one_has_none():
    cpu_a = {"model": "CPU A", "family": "6", "model_number": "1", "usable_cpus": 8}
    cpu_b = {"model": "CPU B", "family": "6", "model_number": "2", "usable_cpus": 2}
    cpu_c = {"model": "CPU C", "family": "25", "model_number": "17", "usable_cpus": 2}

    def record(cpu, ratio):
        return {"machine": {"cpu": cpu}, "stages": {"02_vectorized": {"ratio": ratio}}}

    data = {
        "machines": {
            regression.machine_key(cpu_a): record(cpu_a, 9.0),
            regression.machine_key(cpu_b): record(cpu_b, 5.0),
        }
    }
    own = regression.pick_baseline(data, cpu_b)
    assert (own.ratios, own.tolerance, own.foreign) == ({"02_vectorized": 5.0}, regression.TOLERANCE, False)
    other = regression.pick_baseline(data, cpu_c)
    assert other.machine == "CPU B (family 6, model 2), 2 cores"  # same core count
    assert other.foreign and other.tolerance == regression.FOREIGN_TOLERANCE > regression.TOLERANCE
    # a 1.5x slowdown is noise across machines but a doubling is not
    assert not regression.compare({"02_vectorized": 7.5}, other.ratios, other.tolerance)[0].failed
    assert regression.compare({"02_vectorized": 10.5}, other.ratios, other.tolerance)[0].failed
    assert regression.pick_baseline({"machines": {}}, cpu_c) is None
