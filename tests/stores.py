"""Damaging a copy of the weight store the way the tests need, without touching the real one."""

import hashlib
import io
import json
from pathlib import Path

import numpy as np

from common.weights import tensor_file


def write_manifest(store_dir: Path, manifest: dict, text: str | None = None) -> None:
    """Replace a store copy's manifest (unlinked first: it may be a hard link to the real store's)."""
    path = store_dir / "manifest.json"
    path.unlink(missing_ok=True)
    path.write_text(json.dumps(manifest) if text is None else text)


def replace_tensor(store_dir: Path, name: str, data: bytes, update_manifest: bool) -> Path:
    path = tensor_file(store_dir, name)
    path.unlink()  # a hard link to the real store: unlink, never write through it
    path.write_bytes(data)
    if update_manifest:
        manifest = json.loads((store_dir / "manifest.json").read_text())
        manifest["tensors"][name]["sha256"] = hashlib.sha256(data).hexdigest()
        write_manifest(store_dir, manifest)
    return path


def npy_bytes(array, allow_pickle=False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=allow_pickle)
    return buf.getvalue()
