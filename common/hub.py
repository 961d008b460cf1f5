"""The real weights: torchvision's IMAGENET1K_V1 ResNet-50 as one safetensors file on the Hugging Face hub.

timm republished torchvision's weights (same key names) as `model.safetensors` in `timm/resnet50.tv_in1k`,
BSD-3-Clause. Pinned by revision and sha256, converted with safetensors' numpy API: no torch needed.

huggingface_hub retries an unreachable host five times with back-off (about 25 s of printed retries), so
the network is probed first with a short timeout and an offline machine gets one line instead.
"""

import hashlib
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from common.errors import WeightsError

REPO = "timm/resnet50.tv_in1k"
REVISION = "aa6c2d36d56bc0209040c02b5a7b7d7bf11d57b8"
FILENAME = "model.safetensors"
SHA256 = "5d061a3c593d795bfe682d9b152bafbcf550579873492def3515b46db1189888"
LICENCE = "BSD-3-Clause (torchvision ResNet50_Weights.IMAGENET1K_V1, republished by timm)"
SOURCE = f"hub:{REPO}@{REVISION}"
PROBE_TIMEOUT = 3.0


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def offline_reason(timeout: float = PROBE_TIMEOUT) -> str | None:
    """None if the hub answers a TCP connection; otherwise why not, in a few words."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    url = urlparse(endpoint())
    host = url.hostname or "huggingface.co"
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as e:
        detail = e.strerror or str(e) or type(e).__name__
        return f"{host} is unreachable ({detail})"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(workdir: Path) -> Path:
    """Fetch the pinned file into `workdir` and check its sha256; a file that differs is deleted."""
    from huggingface_hub import hf_hub_download

    try:
        path = Path(hf_hub_download(REPO, FILENAME, revision=REVISION, local_dir=workdir))
    except Exception as e:  # the hub client raises many types; the user needs one line
        raise WeightsError(f"{REPO}: download failed ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    digest = sha256_of(path)
    if digest != SHA256:
        path.unlink(missing_ok=True)
        raise WeightsError(
            f"{REPO}/{FILENAME}: sha256 {digest[:16]}... differs from the pinned {SHA256[:16]}...; "
            "the file was deleted and not used"
        )
    return path
