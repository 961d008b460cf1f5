"""The weight store: one .npy per tensor, named by torchvision's state-dict keys, plus manifest.json.

Reading never unpickles (`allow_pickle=False`). Opening a store checks it against the spec and, by default,
every file against the sha256 in its manifest, so a missing, truncated, swapped or corrupt tensor is found
before any forward pass and reported in one line that names it and says how to fix it.
"""

import hashlib
import io
import json
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from common import spec
from common.errors import WeightsError
from common.paths import weights_dir

MANIFEST = "manifest.json"
FORMAT = 1
REMAKE = "re-make the store with `make weights`"


def tensor_file(store: Path, name: str) -> Path:
    # File names come from the spec's keys, never from the manifest, so a manifest cannot point outside.
    return store / f"{name}.npy"


class WeightStore:
    """A validated weight store. `load(name)` reads one tensor from disk each time it is called."""

    def __init__(self, path: str | os.PathLike | None = None, *, verify: bool = True) -> None:
        self.path = Path(path) if path is not None else weights_dir()
        if not self.path.is_dir():
            raise WeightsError(
                f"{self.path}: no weight store here; run `make weights` (or point RESNET50_WEIGHTS at one)"
            )
        self.manifest = _read_manifest(self.path)
        self._entries: dict[str, dict[str, Any]] = self.manifest["tensors"]
        if verify:
            self.verify()

    @property
    def source(self) -> str:
        return str(self.manifest.get("source", "unknown"))

    @property
    def is_random(self) -> bool:
        """True for seeded random weights: their class labels mean nothing."""
        return self.manifest.get("kind") == "random"

    def names(self) -> list[str]:
        return list(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._entries[name]["shape"])

    def load(self, name: str) -> np.ndarray:
        """Read one tensor from its file (no cache: stages that want one build their own)."""
        if name not in self._entries:
            raise WeightsError(f"{self.path}: the store has no tensor named {name!r}")
        path = tensor_file(self.path, name)
        try:
            array = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise WeightsError(f"{path}: tensor file {name} is missing; {REMAKE}") from None
        except (ValueError, OSError, EOFError) as e:
            raise WeightsError(f"{path}: tensor {name} cannot be read ({_first_line(e)}); {REMAKE}") from None
        _check_array(path, name, array, self.shape(name))
        return array

    def load_all(self) -> dict[str, np.ndarray]:
        return {name: self.load(name) for name in self._entries}

    def verify(self) -> None:
        """Check every file: present, sha256 as in the manifest, a plain float32 array, finite."""
        for name, entry in self._entries.items():
            path = tensor_file(self.path, name)
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                raise WeightsError(f"{path}: tensor file {name} is missing; {REMAKE}") from None
            except OSError as e:
                raise WeightsError(f"{path}: cannot read tensor {name} ({e.strerror}); {REMAKE}") from None
            if hashlib.sha256(data).hexdigest() != entry["sha256"]:
                raise WeightsError(
                    f"{path}: checksum of {name} does not match the manifest (changed or corrupt); {REMAKE}"
                )
            try:
                array = np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)
            except (ValueError, OSError, EOFError) as e:
                raise WeightsError(f"{path}: tensor {name} cannot be read ({_first_line(e)}); {REMAKE}") from None
            _check_array(path, name, array, self.shape(name))
            if not np.isfinite(array).all():
                raise WeightsError(f"{path}: tensor {name} holds NaN or Inf values; {REMAKE}")


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


def _check_array(path: Path, name: str, array: np.ndarray, shape: tuple[int, ...]) -> None:
    if array.dtype != np.float32:
        raise WeightsError(f"{path}: tensor {name} is {array.dtype}, expected float32; {REMAKE}")
    if array.shape != shape:
        raise WeightsError(f"{path}: tensor {name} has shape {array.shape}, expected {shape}; {REMAKE}")


def _read_manifest(store: Path) -> dict[str, Any]:
    path = store / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WeightsError(f"{path}: the store has no manifest; {REMAKE}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightsError(f"{path}: manifest is corrupt ({_first_line(e)}); {REMAKE}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("tensors"), dict):
        raise WeightsError(f"{path}: manifest has no 'tensors' table; {REMAKE}")
    if manifest.get("format") != FORMAT:
        raise WeightsError(f"{path}: manifest format {manifest.get('format')!r} is not {FORMAT}; {REMAKE}")
    expected = spec.tensor_shapes()
    entries = manifest["tensors"]
    for name, shape in expected.items():
        entry = entries.get(name)
        if not isinstance(entry, dict):
            raise WeightsError(f"{path}: tensor {name} is missing from the manifest; {REMAKE}")
        if tuple(entry.get("shape", ())) != shape or entry.get("dtype") != "float32":
            raise WeightsError(
                f"{path}: manifest lists {name} as {entry.get('dtype')} {entry.get('shape')}, "
                f"expected float32 {list(shape)}; {REMAKE}"
            )
        if not isinstance(entry.get("sha256"), str):
            raise WeightsError(f"{path}: manifest has no sha256 for {name}; {REMAKE}")
    extra = sorted(set(entries) - set(expected))
    if extra:
        raise WeightsError(f"{path}: manifest lists {extra[0]!r}, which ResNet-50 has no use for; {REMAKE}")
    manifest["tensors"] = {name: entries[name] for name in expected}
    return manifest


def normalise_tensors(tensors: Mapping[str, Any], origin: str) -> dict[str, np.ndarray]:
    """Match an imported state dict to the spec: same keys, same shapes, float32, finite.

    Accepts what real checkpoints carry: a 'module.' prefix (DataParallel), `num_batches_tracked`
    counters, float16/bfloat16/float64 values (converted to float32).
    """
    found: dict[str, Any] = {}
    for key, value in tensors.items():
        name = key.removeprefix("module.")
        if name.endswith("num_batches_tracked"):
            continue
        found[name] = value
    expected = spec.tensor_shapes()
    missing = [n for n in expected if n not in found]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise WeightsError(f"{origin}: tensor {missing[0]}{more} missing; is this a ResNet-50 state dict?")
    extra = sorted(set(found) - set(expected))
    if extra:
        raise WeightsError(f"{origin}: unexpected tensor {extra[0]!r}; is this torchvision's ResNet-50?")
    out: dict[str, np.ndarray] = {}
    for name, shape in expected.items():
        array = np.asarray(found[name])
        if array.shape != shape:
            raise WeightsError(f"{origin}: tensor {name} has shape {array.shape}, expected {shape}")
        if not np.issubdtype(array.dtype, np.floating):
            raise WeightsError(f"{origin}: tensor {name} is {array.dtype}, expected floating point")
        array = np.ascontiguousarray(array, dtype=np.float32)
        if not np.isfinite(array).all():
            raise WeightsError(f"{origin}: tensor {name} holds NaN or Inf values")
        out[name] = array
    return out


def write_store(
    tensors: Mapping[str, np.ndarray], dest: Path, *, source: str, kind: str, licence: str, **details: Any
) -> None:
    """Write a complete store next to `dest`, then swap it in: an interrupted write leaves `dest` as it was."""
    checked = normalise_tensors(tensors, source)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}-{time.monotonic_ns()}"
    tmp.mkdir()
    try:
        entries = {}
        for name, array in checked.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, array, allow_pickle=False)
            data = buf.getvalue()
            tensor_file(tmp, name).write_bytes(data)
            entries[name] = {
                "shape": list(array.shape),
                "dtype": "float32",
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        manifest = {
            "format": FORMAT,
            "source": source,
            "kind": kind,
            "licence": licence,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **details,
            "tensors": entries,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        _fsync_tree(tmp)
        _swap_in(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        with open(path, "rb") as f:
            os.fsync(f.fileno())


def _swap_in(new: Path, dest: Path) -> None:
    old = None
    if dest.exists() or dest.is_symlink():
        old = dest.parent / f".{dest.name}.old-{os.getpid()}-{time.monotonic_ns()}"
        dest.rename(old)
    try:
        new.rename(dest)
    except BaseException:
        if old is not None:
            old.rename(dest)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
