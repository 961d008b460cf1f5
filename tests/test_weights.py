"""Making weight stores: every importer, the random path for real, and the hub path with a stand-in server."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from common import hub, make_weights, spec
from common.errors import WeightsError
from common.images import load_batch, sample_images
from common.reference import Reference
from common.weights import WeightStore, clean_leftovers, normalise_tensors


def checksums(path: Path) -> dict[str, str]:
    manifest = json.loads((path / "manifest.json").read_text())
    return {k: v["sha256"] for k, v in manifest["tensors"].items()}


@pytest.fixture(scope="module")
def tensors(store) -> dict[str, np.ndarray]:
    return store.load_all()


# ---------------------------------------------------------------- random weights, made for real


@pytest.fixture(scope="module")
def random_store(tmp_path_factory) -> WeightStore:
    dest = tmp_path_factory.mktemp("rnd") / "seed1"
    make_weights.make("random", dest, seed=1)
    return WeightStore(dest)


def test_random_store_says_what_it_is(random_store):
    m = random_store.manifest
    assert random_store.is_random and m["seed"] == 1 and m["source"] == "random:seed=1"
    assert sorted(m["calibrated_on"]) == sorted(p.name for p in sample_images())
    assert "mean nothing" in m["warning"]


def test_random_weights_are_reproducible_and_seeded(random_store, tmp_path):
    make_weights.make("random", tmp_path / "again", seed=1)
    assert checksums(tmp_path / "again") == checksums(random_store.path)
    make_weights.make("random", tmp_path / "other", seed=2)
    assert checksums(tmp_path / "other")["conv1.weight"] != checksums(random_store.path)["conv1.weight"]


def test_random_bn_statistics_are_calibrated_on_the_sample_images(random_store):
    """conv1's output on the sample photos, computed here by im2col + einsum, has the stored statistics."""
    images, _, _ = load_batch(sample_images())
    w = random_store.load("conv1.weight").astype(np.float64)
    xp = np.pad(images.astype(np.float64), ((0, 0), (0, 0), (3, 3), (3, 3)))
    patches = sliding_window_view(xp, (7, 7), axis=(2, 3))[:, :, ::2, ::2]  # (N, 3, 112, 112, 7, 7)
    y = np.einsum("nchwkl,ockl->nohw", patches, w)
    np.testing.assert_allclose(random_store.load("bn1.running_mean"), y.mean(axis=(0, 2, 3)), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(random_store.load("bn1.running_var"), y.var(axis=(0, 2, 3)), rtol=1e-3)


def test_random_network_has_a_trained_networks_logit_spread(random_store):
    images, _, _ = load_batch(sample_images())
    logits = Reference(random_store, max_batch=len(images))(images)
    assert 2.0 < logits.std() < 8.0
    assert len(set(logits.argmax(axis=1).tolist())) > 1, "every photo gets the same class"


# ---------------------------------------------------------------- importers


def test_normalise_accepts_what_real_checkpoints_carry(tensors):
    messy = {f"module.{k}": v.astype(np.float64) for k, v in tensors.items()}
    messy["module.bn1.num_batches_tracked"] = np.array(7, np.int64)
    clean = normalise_tensors(messy, "test")
    assert set(clean) == set(spec.tensor_shapes())
    assert all(v.dtype == np.float32 for v in clean.values())
    np.testing.assert_array_equal(clean["conv1.weight"], tensors["conv1.weight"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.pop("layer3.2.bn2.running_var"), "layer3.2.bn2.running_var"),
        (lambda t: t.__setitem__("extra.weight", np.zeros(3, np.float32)), "extra.weight"),
        (lambda t: t.__setitem__("fc.bias", np.zeros(999, np.float32)), "fc.bias"),
        (lambda t: t.__setitem__("fc.bias", np.zeros(1000, np.int32)), "fc.bias"),
        (lambda t: t["conv1.weight"].__setitem__((0, 0, 0, 0), np.nan), "conv1.weight"),
    ],
)
def test_normalise_names_the_bad_tensor(tensors, change, message):
    t = {k: v.copy() for k, v in tensors.items()}
    change(t)
    with pytest.raises(WeightsError, match=message.replace(".", r"\.")):
        normalise_tensors(t, "test")


def test_small_safetensors_file_with_torchvision_keys(tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "part.safetensors"
    save_file(
        {"conv1.weight": np.ones((64, 3, 7, 7), np.float32), "bn1.num_batches_tracked": np.zeros((), np.int64)},
        str(path),
    )
    read = make_weights.read_safetensors(path)
    assert read["conv1.weight"].shape == (64, 3, 7, 7)
    with pytest.raises(WeightsError, match=r"tensor bn1\.weight and 265 more missing"):
        make_weights.make_from_file(tmp_path / "s", path)
    assert not (tmp_path / "s").exists()


def test_small_npz_file_and_pickled_npz_refused(tmp_path):
    path = tmp_path / "part.npz"
    np.savez(path, **{"fc.bias": np.ones(1000, np.float32)})
    assert make_weights.read_npz(path)["fc.bias"].shape == (1000,)
    evil = tmp_path / "evil.npz"
    np.savez(evil, **{"fc.bias": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(WeightsError, match=r"evil\.npz"):
        make_weights.read_npz(evil)


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_full_file_round_trip_gives_the_same_store(store, tensors, tmp_path, suffix):
    path = tmp_path / f"resnet50{suffix}"
    prefixed = {f"module.{k}": v for k, v in tensors.items()}
    if suffix == ".npz":
        np.savez(path, **prefixed)
    else:
        from safetensors.numpy import save_file

        save_file(prefixed, str(path))
    make_weights.main(["--source", str(path), "--dest", str(tmp_path / "store")])
    imported = WeightStore(tmp_path / "store")
    assert checksums(imported.path) == checksums(store.path)
    assert imported.source == f"file:{path.resolve()}" and not imported.is_random


def test_pth_file_round_trip(tensors, store, tmp_path):
    torch = pytest.importorskip("torch", reason="the torch extra is not installed (make torch)")
    path = tmp_path / "resnet50.pth"
    sd = {k: torch.from_numpy(v) for k, v in tensors.items()}
    sd["bn1.num_batches_tracked"] = torch.tensor(3)
    torch.save({"state_dict": sd}, path)
    make_weights.make_from_file(tmp_path / "store", path)
    assert checksums(tmp_path / "store") == checksums(store.path)


def test_pth_reader_without_torch_says_how_to_get_it(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_torch(name, *a, **k):
        if name == "torch":
            raise ImportError("no torch")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    (tmp_path / "x.pth").write_bytes(b"not read")
    with pytest.raises(WeightsError, match="make torch"):
        make_weights.read_pth(tmp_path / "x.pth")


def test_torchvision_source(tmp_path):
    pytest.importorskip("torchvision", reason="torchvision is not installed (optional extra)")
    try:
        make_weights.make("torchvision", tmp_path / "tv")
    except WeightsError as e:  # offline without a cached download: a clear one-line error is the contract
        assert "\n" not in str(e)
        return
    assert WeightStore(tmp_path / "tv").source == "torchvision:IMAGENET1K_V1"


def test_unknown_file_type_and_missing_file(tmp_path):
    (tmp_path / "w.bin").write_bytes(b"x")
    assert make_weights.main(["--source", str(tmp_path / "w.bin"), "--dest", str(tmp_path / "s")]) == 2
    assert make_weights.main(["--source", str(tmp_path / "nope.npz"), "--dest", str(tmp_path / "s")]) == 2
    assert not (tmp_path / "s").exists()


# ---------------------------------------------------------------- the hub path, with a stand-in server


def test_offline_probe_honours_hf_hub_offline_and_unreachable_hosts(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.offline_reason() == "HF_HUB_OFFLINE is set"
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    reason = hub.offline_reason(timeout=1.0)
    assert reason is not None and "127.0.0.1" in reason


def test_auto_falls_back_to_random_in_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(hub, "offline_reason", lambda timeout=3.0: "huggingface.co is unreachable (test)")
    assert make_weights.main(["--dest", str(tmp_path / "w")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("weights: real weights unavailable: huggingface.co is unreachable (test)")
    assert len(err) == 2  # the fallback line and the "wrote" line: no retries, no traceback
    assert WeightStore(tmp_path / "w").is_random


def test_explicit_hub_source_offline_is_an_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(hub, "offline_reason", lambda timeout=3.0: "HF_HUB_OFFLINE is set")
    assert make_weights.main(["--source", "hub", "--dest", str(tmp_path / "w")]) == 2
    assert "HF_HUB_OFFLINE" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def fake_hub(monkeypatch, payload: bytes, pinned: str | None = None, fail_after_write: bool = False):
    """Stand in for huggingface_hub.hf_hub_download: write `payload` where it would."""
    import huggingface_hub

    calls = []

    def download(repo_id, filename, *, revision=None, local_dir=None, **_):
        calls.append((repo_id, filename, revision))
        path = Path(local_dir) / filename
        path.write_bytes(payload)
        if fail_after_write:
            raise KeyboardInterrupt
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    monkeypatch.setattr(hub, "offline_reason", lambda timeout=3.0: None)
    if pinned is not None:
        monkeypatch.setattr(hub, "SHA256", pinned)
    return calls


def test_hub_download_is_pinned_checked_and_converted(monkeypatch, tensors, tmp_path):
    from safetensors.numpy import save

    payload = save(tensors)
    import hashlib

    calls = fake_hub(monkeypatch, payload, pinned=hashlib.sha256(payload).hexdigest())
    make_weights.make("hub", tmp_path / "w")
    assert calls == [(hub.REPO, hub.FILENAME, hub.REVISION)]
    store = WeightStore(tmp_path / "w")
    assert store.source == hub.SOURCE and not store.is_random
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"], "the download folder was not cleaned up"


def test_hub_file_with_wrong_sha256_is_deleted_and_never_used(monkeypatch, tmp_path):
    seen = []
    fake_hub(monkeypatch, b"not the pinned file")
    real_download = hub.download

    def spy(workdir):
        seen.append(Path(workdir))
        return real_download(workdir)

    monkeypatch.setattr(hub, "download", spy)
    with pytest.raises(WeightsError, match="deleted and not used"):
        make_weights.make("hub", tmp_path / "w")
    assert not (tmp_path / "w").exists()
    assert not seen[0].exists() or not any(seen[0].rglob(hub.FILENAME))
    assert list(tmp_path.iterdir()) == []


def test_interrupted_download_leaves_the_old_store_and_nothing_half_written(monkeypatch, store, tmp_path):
    dest = tmp_path / "w"
    make_weights.make("random", dest, seed=3)
    before = checksums(dest)
    fake_hub(monkeypatch, b"partial", fail_after_write=True)
    with pytest.raises(KeyboardInterrupt):
        make_weights.make("hub", dest)
    assert checksums(dest) == before
    WeightStore(dest)  # still valid
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]


def test_interrupted_store_write_keeps_the_old_store(monkeypatch, tensors, tmp_path):
    dest = tmp_path / "w"
    make_weights.make("random", dest, seed=4)
    before = checksums(dest)
    calls = {"n": 0}
    real_write = Path.write_bytes

    def flaky(self, data):
        calls["n"] += 1
        if calls["n"] == 100:
            raise KeyboardInterrupt
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_bytes", flaky)
    with pytest.raises(KeyboardInterrupt):
        make_weights.make("random", dest, seed=5)
    monkeypatch.undo()
    assert checksums(dest) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]


def test_a_store_replaced_while_in_use_is_an_error_not_a_mix(copy_of):
    """`make weights FORCE=1` in another shell while 01 reads its weights during a forward pass."""
    store = WeightStore(copy_of, verify=False)
    store.load("fc.bias")
    other = copy_of.parent / "other"
    shutil.copytree(copy_of, other)
    copy_of.rename(copy_of.parent / "aside")
    other.rename(copy_of)  # a new store at the same path, as write_store swaps one in
    with pytest.raises(WeightsError, match="replaced while in use"):
        store.load("fc.bias")


def test_leftovers_of_interrupted_runs_are_cleaned_and_a_live_ones_kept(tmp_path):
    dest = tmp_path / "weights"
    dead = [tmp_path / ".weights.old-999999999-1", tmp_path / ".weights.tmp-999999999-2"]
    live = tmp_path / f".weights.old-{os.getpid()}-3"
    for folder in [*dead, live]:
        folder.mkdir()
        (folder / "fc.bias.npy").write_bytes(b"x")
    (tmp_path / ".weights.old-notapid").mkdir()  # not a name we write: left alone
    assert sorted(clean_leftovers(dest)) == sorted(dead)
    assert live.exists() and (tmp_path / ".weights.old-notapid").exists()


@pytest.mark.parametrize("swapped", [False, True])
def test_ctrl_c_says_which_store_is_in_place(tmp_path, store, monkeypatch, capsys, swapped):
    dest = tmp_path / "weights"
    shutil.copytree(store.path, dest)

    def interrupted(source, where, seed, force):
        if swapped:
            (where / "manifest.json").write_text((where / "manifest.json").read_text())  # a new manifest
            os.utime(where / "manifest.json", ns=(1, 1))
        raise KeyboardInterrupt

    monkeypatch.setattr(make_weights, "make", interrupted)
    assert make_weights.main(["--dest", str(dest)]) == 130
    out = capsys.readouterr()
    said = out.err + out.out
    assert ("in place" in said) == swapped and ("left as it was" in said) == (not swapped), said
