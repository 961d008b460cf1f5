"""Make the weight store: `python -m common.make_weights` (what `make weights` runs).

--source auto          (default) keep a valid store; else the real weights from the hub; offline, seeded
                       random weights calibrated on the sample images
--source hub           the real weights, or an error
--source random        seeded random weights (--seed)
--source torchvision   torchvision's IMAGENET1K_V1 (needs torchvision, and its download or cache)
--source FILE          a state dict in .safetensors, .npz or .pth/.pt (torch.load with weights_only=True)
"""

import argparse
import io
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from common import hub, interrupt, spec
from common.errors import LadderError, WeightsError
from common.files import check_regular
from common.images import load_batch, sample_images
from common.paths import weights_dir
from common.weights import WeightStore, max_npy_bytes, replaceable_files, store_identity, write_store

RANDOM_LICENCE = "none needed: random numbers (seeded), not a trained model"
TORCHVISION_LICENCE = "BSD-3-Clause (torchvision ResNet50_Weights.IMAGENET1K_V1)"


def say(message: str) -> None:
    print(f"weights: {message}", file=sys.stderr, flush=True)


def make_random(dest: Path, seed: int) -> None:
    from common.random_weights import random_weights

    paths = sample_images()
    images, used, bad = load_batch(paths)
    for error in bad:
        say(f"skipping calibration image {error}")
    if not used:
        raise WeightsError("images/: no readable sample image to calibrate random weights on")
    tensors = random_weights(seed, images)
    write_store(
        tensors,
        dest,
        source=f"random:seed={seed}",
        kind="random",
        licence=RANDOM_LICENCE,
        seed=seed,
        calibrated_on=[p.name for p in used],
        warning="seeded random weights: class labels mean nothing; run `make weights SOURCE=hub` online",
    )
    say(f"wrote seeded random weights (seed {seed}, calibrated on {len(used)} images) to {dest}")


def make_from_hub(dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{dest.name}.download-", dir=dest.parent) as work:
        path = hub.download(Path(work))
        tensors = read_safetensors(path)
        write_store(tensors, dest, source=hub.SOURCE, kind="pretrained", licence=hub.LICENCE, sha256=hub.SHA256)
    say(f"wrote torchvision's IMAGENET1K_V1 weights from {hub.REPO} to {dest}")


def make_from_torchvision(dest: Path) -> None:
    try:
        from torchvision.models import ResNet50_Weights, resnet50
    except ImportError:
        raise WeightsError("torchvision is not installed; `make torchvision`, or use SOURCE=hub") from None
    try:
        model = resnet50(weights=ResNet50_Weights.IMAGENET1K_V1)
    except Exception as e:
        raise WeightsError(f"torchvision could not provide the weights ({type(e).__name__}: {e})") from None
    tensors = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    write_store(tensors, dest, source="torchvision:IMAGENET1K_V1", kind="pretrained", licence=TORCHVISION_LICENCE)
    say(f"wrote torchvision's IMAGENET1K_V1 weights to {dest}")


# ResNet-50 is 102 MB in float32, 204 MB in float64: a file much larger is not one, and is not read.
MAX_IMPORT_BYTES = 512 * 2**20


def checked_size(path: Path) -> int:
    try:
        return check_regular(path, MAX_IMPORT_BYTES)
    except FileNotFoundError:
        raise WeightsError(f"{path}: no such file") from None
    except OSError as e:
        raise WeightsError(f"{path}: cannot read ({e.strerror})") from None


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    checked_size(path)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"{path}: not a readable safetensors file ({e})") from None


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every member's name and declared size are checked against the spec before any is decompressed: a
    small .npz can hold a member that inflates to gigabytes."""
    checked_size(path)
    shapes = spec.tensor_shapes()
    out = {}
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            for info in members:
                key = info.filename.removesuffix(".npy")
                name = key.removeprefix("module.")
                if name.endswith("num_batches_tracked"):
                    continue
                if name not in shapes:
                    raise WeightsError(f"{path}: unexpected member {info.filename!r}; is this a ResNet-50 state dict?")
                limit = max_npy_bytes(shapes[name])
                if info.file_size > limit:
                    raise WeightsError(
                        f"{path}: member {info.filename!r} inflates to {info.file_size} bytes, "
                        f"more than a {shapes[name]} tensor needs"
                    )
            for info in members:
                key = info.filename.removesuffix(".npy")
                if key.endswith("num_batches_tracked"):
                    continue
                data = archive.read(info)
                out[key] = np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise WeightsError(f"{path}: not a readable .npz of arrays ({str(e).splitlines()[0]})") from None
    return out


def read_pth(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise WeightsError(f"{path}: reading .pth needs torch; `make torch`, or convert to .safetensors") from None
    checked_size(path)
    try:
        obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only refuses arbitrary pickles with its own error types
        raise WeightsError(f"{path}: torch.load(weights_only=True) refused it ({str(e).splitlines()[0]})") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    return {k: v.detach().float().numpy() for k, v in obj.items() if isinstance(v, torch.Tensor)}


READERS = {".safetensors": read_safetensors, ".npz": read_npz, ".pth": read_pth, ".pt": read_pth}


def make_from_file(dest: Path, path: Path) -> None:
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise WeightsError(f"{path}: unknown weight format; use .safetensors, .npz or .pth")
    write_store(
        reader(path), dest, source=f"file:{path.resolve()}", kind="pretrained", licence="as the file's owner says"
    )
    say(f"wrote the weights of {path} to {dest}")


def existing_store(dest: Path) -> WeightStore | None:
    """The usable store at `dest`; None when there is none or it is a damaged store of ours (to re-make).
    Anything else there is a user's: WeightsError, before anything is written."""
    if replaceable_files(dest) is None:
        return None
    try:
        return WeightStore(dest)
    except WeightsError as e:
        say(f"the store at {dest} is unusable ({e}); making a new one")
        return None


def make(source: str, dest: Path, seed: int = 0, force: bool = False) -> None:
    replaceable_files(dest)  # a path holding anything but a store of ours is refused before any work
    if source == "auto":
        store = None if force else existing_store(dest)
        if store is not None:
            say(f"{dest} already holds {store.source} weights; nothing to do (FORCE=1 to re-make)")
            return
        reason = hub.offline_reason()
        if reason is None:
            make_from_hub(dest)
            return
        say(f"real weights unavailable: {reason}; making seeded random weights (labels will mean nothing)")
        make_random(dest, seed)
    elif source == "hub":
        reason = hub.offline_reason()
        if reason is not None:
            raise WeightsError(f"{hub.REPO}: cannot download the real weights: {reason}")
        make_from_hub(dest)
    elif source == "random":
        make_random(dest, seed)
    elif source == "torchvision":
        make_from_torchvision(dest)
    else:
        make_from_file(dest, Path(source))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m common.make_weights", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dest", type=Path, default=None, help="store folder (default: $RESNET50_WEIGHTS or weights/)")
    parser.add_argument("--force", action="store_true", help="with --source auto: re-make a valid store")
    args = parser.parse_args(argv)
    interrupt.catch_kill()
    dest = args.dest or weights_dir()
    before = store_identity(dest)
    try:
        make(args.source, dest, args.seed, args.force)
    except LadderError as e:
        say(f"error: {e}")
        return 2
    except OSError as e:  # a full or read-only disk: nothing was swapped in (write_store cleans up)
        say(f"error: {getattr(e, 'filename', None) or dest}: {e.strerror or e}; the store was left as it was")
        return 2
    except KeyboardInterrupt:
        # The swap itself cannot be interrupted (signals are held), so the store is the old one or the new one.
        if store_identity(dest) == before:
            say("interrupted; the store was left as it was")
        else:
            say(f"interrupted after the new store was in place at {dest}; it is complete")
        return 130
    return 0


if __name__ == "__main__":
    interrupt.leave(main())
