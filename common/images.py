"""Photo -> model input, the same for every stage and the judge.

torchvision's ImageNet evaluation transform: decode with Pillow, apply the EXIF orientation, convert any
mode to RGB, resize the shorter side to 256 (bilinear, antialiased), centre-crop 224x224, scale to [0, 1],
normalise with the ImageNet mean and std, CHW float32. (The C++ original resized straight to 224x224.)

Anything that is not a usable image raises ImageError with one line naming the file and the reason.
"""

import os
import struct
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from common import spec
from common.errors import ImageError
from common.files import FileRefused, open_regular
from common.paths import IMAGES_DIR

RESIZE = 256
CROP = spec.IMAGE_SIZE
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
# Refuse before decoding anything larger: 8000x8000 RGB is 192 MB decoded, already far more than a
# photo needs for a 224x224 crop; a forged header can claim gigapixels in a few hundred bytes.
MAX_PIXELS = 64_000_000
MAX_FILE_BYTES = 256 * 1024 * 1024
# Up to an aspect ratio of 8:1 the resize is torchvision's, bit for bit; beyond it, only the crop's region.
MAX_RESIZED_PIXELS = RESIZE * RESIZE * 8
EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".ppm", ".pgm")

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, not a half-grey picture


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read one image file -> (3, 224, 224) float32, or raise ImageError."""
    path = Path(path)
    rgb = _decode_rgb(path)
    return preprocess(rgb)


def preprocess(rgb: Image.Image) -> np.ndarray:
    """An RGB PIL image -> normalised (3, 224, 224) float32 CHW."""
    x = np.asarray(centre_crop(rgb), dtype=np.float32) / np.float32(255.0)
    x = (x - MEAN) / STD
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


def load_crop(path: str | os.PathLike) -> Image.Image:
    """Read one image file -> its 224x224 RGB crop, still 8-bit (what a program with its own
    normalisation is given: the C++ original), or raise ImageError."""
    return centre_crop(_decode_rgb(Path(path)))


def centre_crop(rgb: Image.Image) -> Image.Image:
    """torchvision's Resize(256) then CenterCrop(224), on 8-bit RGB."""
    w, h = rgb.size
    # torchvision's Resize(256): the shorter side becomes 256, the longer one int(256 * long / short).
    if w <= h:
        size = (RESIZE, int(RESIZE * h / w))
    else:
        size = (int(RESIZE * w / h), RESIZE)
    left = round((size[0] - CROP) / 2.0)
    top = round((size[1] - CROP) / 2.0)
    if size[0] * size[1] <= MAX_RESIZED_PIXELS:
        return rgb.resize(size, Image.Resampling.BILINEAR).crop((left, top, left + CROP, top + CROP))
    # An extreme aspect ratio: a 1x200000 image would be resized to 256x51200000 (39 GB) to keep its
    # central 224x224. Resize only the part of the source that the crop keeps: Pillow's `box` places
    # each output pixel and its filter as the full resize does (up to one 8-bit level of rounding).
    sx, sy = w / size[0], h / size[1]
    box = (left * sx, top * sy, (left + CROP) * sx, (top + CROP) * sy)
    return rgb.resize((CROP, CROP), Image.Resampling.BILINEAR, box=box)


def _decode_rgb(path: Path) -> Image.Image:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageError(path, "no such file") from None
    except OSError as e:
        raise ImageError(path, f"cannot read ({e.strerror})") from None
    if path.is_dir():
        raise ImageError(
            path,
            "is a directory with no image files in it"
            if not sample_images(path)
            else "is a directory, not an image file",
        )
    try:
        f = open_regular(path, MAX_FILE_BYTES)  # a FIFO or /dev/zero named .png: refused, not read forever
    except FileRefused as e:
        raise ImageError(path, str(e).split(": ", 1)[-1]) from None
    except PermissionError:
        raise ImageError(path, "permission denied") from None
    except OSError as e:
        raise ImageError(path, f"cannot read ({e.strerror})") from None
    with f:
        if size == 0:
            raise ImageError(path, "file is empty")
        return _decode_open(path, f)


def _decode_open(path: Path, f) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # Pillow warns (several lines, to stderr) about damaged EXIF and the like, then carries on as
            # an image viewer would: so do we, quietly. A decompression bomb is an error.
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(f) as im:
                w, h = im.size
                if w < 1 or h < 1:
                    raise ImageError(path, f"image has no pixels ({w}x{h})")
                if w * h > MAX_PIXELS:
                    raise ImageError(
                        path,
                        f"image claims {w}x{h} pixels, over the {MAX_PIXELS // 1_000_000} MP limit "
                        "(refused before decoding)",
                    )
                im.seek(0)  # animated GIF / WebP / multi-page TIFF: the first frame
                im.load()
                return _to_rgb(ImageOps.exif_transpose(im))
    except ImageError:
        raise
    except PermissionError:
        raise ImageError(path, "permission denied") from None
    except UnidentifiedImageError:
        raise ImageError(path, "not an image Pillow can read (unknown or corrupt format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(path, f"decompression bomb refused before decoding ({_reason(e)})") from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError, struct.error) as e:
        raise ImageError(path, f"corrupt or truncated image ({_reason(e)})") from None


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB. Transparency is composited on white, as an image viewer shows it."""
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        # 16-bit and float grayscale: Pillow's convert("L") clips at 255, which turns a 16-bit photo white.
        a = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
        if im.mode == "F":
            top = max(float(a.max(initial=0)), 1.0)
        a = np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    if (im.mode == "P" and "transparency" in im.info) or im.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def sample_images(folder: Path = IMAGES_DIR) -> list[Path]:
    """The photos shipped in images/ (every file Pillow might read), sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS)


def expand_paths(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Files as given; a directory stands for the image files directly inside it (an empty one stays, for
    the loader to report with the other bad paths)."""
    out: list[Path] = []
    for p in map(Path, paths):
        found = sample_images(p) if p.is_dir() else []
        out.extend(found or [p])
    return out


def load_batch(paths: Sequence[str | os.PathLike]) -> tuple[np.ndarray, list[Path], list[ImageError]]:
    """Load what can be loaded; return the batch (N, 3, 224, 224), the paths it holds, and the failures."""
    good: list[np.ndarray] = []
    names: list[Path] = []
    bad: list[ImageError] = []
    for p in paths:
        try:
            good.append(load_image(p))
            names.append(Path(p))
        except ImageError as e:
            bad.append(e)
    batch = np.stack(good) if good else np.zeros((0, 3, CROP, CROP), np.float32)
    return batch, names, bad
