"""The weight store: one .npy per tensor, named by torchvision's state-dict keys, plus manifest.json.

Reading never unpickles (`allow_pickle=False`). Opening a store checks it against the spec and, by default,
every file against the sha256 in its manifest, so a missing, truncated, swapped or corrupt tensor is found
before any forward pass and reported in one line that names it and says how to fix it.
"""

import hashlib
import io
import json
import os
import re
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from common import spec
from common.errors import WeightsError
from common.files import FileRefused, describe, read_regular, signals_held
from common.paths import WEIGHTS_ENV, weights_dir

MANIFEST = "manifest.json"
FORMAT = 1
REMAKE = "re-make the store with `make weights`"
MAX_MANIFEST_BYTES = 1 << 20
NPY_HEADER_BYTES = 4096  # numpy writes 128; a .npy of n numbers is never longer than this plus 8n
# A trained network's weights and BatchNorm statistics are far inside this; values near float32's limit
# (3e38) overflow to Inf within a layer or two and the logits come out NaN.
MAX_ABS_VALUE = 1e6


def max_npy_bytes(shape: tuple[int, ...]) -> int:
    """The most a tensor file of this shape can hold: float64 too, so that it is named for its dtype."""
    return NPY_HEADER_BYTES + 8 * int(np.prod(shape))


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
        self._identity = store_identity(self.path)
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
        self._check_unchanged()
        data = _read_tensor_file(path, name, self.shape(name))
        self._check_unchanged()  # a read that straddled a swap may hold either store's bytes
        array = _parse_npy(path, name, data)
        _check_array(path, name, array, self.shape(name))
        return array

    def _check_unchanged(self) -> None:
        """A store replaced under us (`make weights FORCE=1` in another shell) is an error, not a mix: one
        stat of the manifest per tensor read, not a checksum of every byte."""
        if store_identity(self.path) != self._identity:
            raise WeightsError(f"{self.path}: the weight store was replaced while in use (by `make weights`?); "
                               "its tensors would mix two stores: run again")  # fmt: skip

    def load_all(self) -> dict[str, np.ndarray]:
        return {name: self.load(name) for name in self._entries}

    def verify(self) -> None:
        """Check every file: present, sha256 as in the manifest, a plain float32 array, finite."""
        for name, entry in self._entries.items():
            path = tensor_file(self.path, name)
            data = _read_tensor_file(path, name, self.shape(name))
            if hashlib.sha256(data).hexdigest() != entry["sha256"]:
                raise WeightsError(
                    f"{path}: checksum of {name} does not match the manifest (changed or corrupt); {REMAKE}"
                )
            array = _parse_npy(path, name, data)
            _check_array(path, name, array, self.shape(name))
            problem = value_problem(name, array)
            if problem:
                raise WeightsError(f"{path}: tensor {name} {problem}; {REMAKE}")


def _read_tensor_file(path: Path, name: str, shape: tuple[int, ...]) -> bytes:
    try:
        return read_regular(path, max_npy_bytes(shape))
    except FileNotFoundError:
        raise WeightsError(f"{path}: tensor file {name} is missing; {REMAKE}") from None
    except FileRefused as e:
        raise WeightsError(f"{e}; {REMAKE}") from None
    except OSError as e:
        raise WeightsError(f"{path}: cannot read tensor {name} ({e.strerror}); {REMAKE}") from None


def _parse_npy(path: Path, name: str, data: bytes) -> np.ndarray:
    try:
        return np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise WeightsError(f"{path}: tensor {name} cannot be read ({_first_line(e)}); {REMAKE}") from None


def value_problem(name: str, array: np.ndarray) -> str | None:
    """What makes a tensor's values unusable, worded to follow its name; None when they are fine.

    NaN or Inf anywhere; magnitudes no trained network has (they overflow float32 a layer later); and a
    negative BatchNorm running variance, for which gamma / sqrt(var + eps) is NaN.
    """
    if not np.isfinite(array).all():
        return "holds NaN or Inf values"
    biggest = float(np.abs(array).max(initial=0.0))
    if biggest > MAX_ABS_VALUE:
        return f"holds a value of magnitude {biggest:.3g}, beyond the {MAX_ABS_VALUE:.0e} a trained network has"
    if name.endswith("running_var") and float(array.min(initial=0.0)) < 0:
        return f"holds a negative variance ({float(array.min()):.3g}): BatchNorm would take its square root"
    return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


def _check_array(path: Path, name: str, array: np.ndarray, shape: tuple[int, ...]) -> None:
    if array.dtype != np.float32:
        raise WeightsError(f"{path}: tensor {name} is {array.dtype}, expected float32; {REMAKE}")
    if array.shape != shape:
        raise WeightsError(f"{path}: tensor {name} has shape {array.shape}, expected {shape}; {REMAKE}")


def store_identity(store: Path) -> tuple[int, int, int] | None:
    """What changes when a store is swapped in at `store`: its manifest file's inode, mtime and size."""
    try:
        info = os.stat(store / MANIFEST)
    except OSError:
        return None
    return info.st_ino, info.st_mtime_ns, info.st_size


def _read_manifest(store: Path) -> dict[str, Any]:
    path = store / MANIFEST
    manifest = _parse_manifest(path)
    if manifest.get("format") != FORMAT:
        raise WeightsError(f"{path}: manifest format {manifest.get('format')!r} is not {FORMAT}; {REMAKE}")
    expected = spec.tensor_shapes()
    entries = manifest["tensors"]
    for name, shape in expected.items():
        entry = entries.get(name)
        if not isinstance(entry, dict):
            raise WeightsError(f"{path}: tensor {name} is missing from the manifest; {REMAKE}")
        if _shape_of(entry) != shape or entry.get("dtype") != "float32":
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


def _parse_manifest(path: Path) -> dict[str, Any]:
    """manifest.json as a dict with a 'tensors' table, or a one-line WeightsError."""
    try:
        manifest = json.loads(read_regular(path, MAX_MANIFEST_BYTES).decode("utf-8"))
    except FileNotFoundError:
        raise WeightsError(f"{path}: the store has no manifest; {REMAKE}") from None
    except FileRefused as e:
        raise WeightsError(f"{e}; {REMAKE}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise WeightsError(f"{path}: manifest is corrupt ({_first_line(e)}); {REMAKE}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("tensors"), dict):
        raise WeightsError(f"{path}: manifest has no 'tensors' table; {REMAKE}")
    return manifest


def _shape_of(entry: dict[str, Any]) -> tuple[int, ...] | None:
    shape = entry.get("shape")
    if isinstance(shape, list) and all(isinstance(n, int) and not isinstance(n, bool) for n in shape):
        return tuple(shape)
    return None


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
        with np.errstate(over="ignore"):  # a float64 beyond float32's range becomes Inf, refused below
            array = np.ascontiguousarray(array, dtype=np.float32)
        problem = value_problem(name, array)
        if problem:
            raise WeightsError(f"{origin}: tensor {name} {problem}")
        out[name] = array
    return out


def write_store(
    tensors: Mapping[str, np.ndarray], dest: Path, *, source: str, kind: str, licence: str, **details: Any
) -> None:
    """Write a complete store next to `dest`, then swap it in: an interrupted write leaves `dest` as it was."""
    checked = normalise_tensors(tensors, source)
    dest = Path(dest)
    owned = replaceable_files(dest)  # before writing anything: refuse a path that is not ours to replace
    dest.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(dest)
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
        with signals_held():  # Ctrl-C waits: the old store stays, or the new one is in place and the old gone
            _swap_in(tmp, dest, owned)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def clean_leftovers(dest: Path) -> list[Path]:
    """Remove what interrupted runs of ours left beside `dest` (.NAME.tmp-PID-NS and .NAME.old-PID-NS
    folders of processes that are gone); return what was removed."""
    removed = []
    pattern = re.compile(rf"^\.{re.escape(dest.name)}\.(tmp|old)-(\d+)-\d+$")
    for path in dest.parent.iterdir() if dest.parent.is_dir() else []:
        found = pattern.match(path.name)
        if found and path.is_dir() and not path.is_symlink() and not _alive(int(found.group(2))):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        with open(path, "rb") as f:
            os.fsync(f.fileno())


def replaceable_files(dest: Path) -> list[str] | None:
    """The files a new store may remove at `dest`: None when nothing is there, [] for an empty folder, the
    manifest and the tensor files it lists for a store this project wrote.

    Anything else (a file, a symbolic link, a folder with other files or without a readable manifest) may
    be a user's own: WeightsError, with nothing touched.
    """
    how = f"choose another path ({WEIGHTS_ENV}=... or --dest), or move it away yourself"
    if not dest.exists() and not dest.is_symlink():
        return None
    if dest.is_symlink() or not dest.is_dir():
        raise WeightsError(f"{dest}: is {describe(dest)}, not a weight store folder; nothing was touched; {how}")
    names = {p.name for p in dest.iterdir()}
    if not names:
        return []
    if MANIFEST not in names:
        raise WeightsError(
            f"{dest}: is {describe(dest)} and no {MANIFEST}, so not a weight store this project made; "
            f"nothing was touched; {how}"
        )
    try:
        manifest = _parse_manifest(dest / MANIFEST)
    except WeightsError as e:
        raise WeightsError(
            f"{dest}: cannot be proven to be a weight store ({str(e).split('; ')[0].split(': ', 1)[-1]}); "
            f"nothing was touched; {how}"
        ) from None
    known = spec.tensor_shapes()
    listed = {MANIFEST} | {tensor_file(dest, n).name for n in manifest["tensors"] if n in known}
    owned = {n for n in names & listed if (dest / n).is_file() and not (dest / n).is_symlink()}
    foreign = sorted(names - owned)
    if foreign:
        raise WeightsError(
            f"{dest}: holds {len(foreign)} file(s) that are not part of its weight store (e.g. {foreign[0]!r}); "
            f"nothing was touched; {how}"
        )
    return sorted(names)


def _swap_in(new: Path, dest: Path, owned: list[str] | None) -> None:
    """Put the folder `new` at `dest`; remove the old store's own files (`owned`), nothing else."""
    old = None
    if owned is not None:
        old = dest.parent / f".{dest.name}.old-{os.getpid()}-{time.monotonic_ns()}"
        dest.rename(old)
    try:
        new.rename(dest)
    except BaseException:
        if old is not None:
            old.rename(dest)
        raise
    if old is not None:
        for name in owned or []:
            (old / name).unlink(missing_ok=True)
        try:
            old.rmdir()
        except OSError:
            print(f"weights: {old} kept: something other than the old store appeared in it", flush=True)
