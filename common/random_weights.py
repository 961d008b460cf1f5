"""Seeded random ResNet-50 weights whose activations look like a trained network's.

For machines that cannot download the real weights. Convolutions get He-normal weights. Each BatchNorm's
running mean and variance are then measured on the sample photos, layer by layer (each layer calibrated
after the ones before it), so every BatchNorm output has the mean `beta` and std `gamma` we chose: the
same scale as a trained network, where activations neither vanish nor blow up over 53 layers. The last
BatchNorm of each residual branch gets a small gamma, as trained ResNets have, so the residual stream
grows slowly. Finally the classifier is centred on the calibration images and scaled so the logits
have a trained network's spread.

The class labels such a network gives mean nothing; everything else (shapes, numerics, speed) is real.
"""

from collections.abc import Mapping

import numpy as np

from common import numpy_forward, spec

LOGIT_STD = 4.0  # about the spread of a trained torchvision ResNet-50's logits on ImageNet photos


def random_weights(seed: int, images: np.ndarray) -> dict[str, np.ndarray]:
    """(N, 3, 224, 224) calibration images -> a full state dict (float32)."""
    rng = np.random.default_rng(seed)
    params: dict[str, np.ndarray] = {}
    for c in spec.CONVS:
        fan_in = c.cin * c.kernel * c.kernel
        params[c.weight] = (rng.standard_normal(c.weight_shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        closes_branch = c.bn.endswith(("bn3", "downsample.1"))
        low, high = (0.2, 0.5) if closes_branch else (0.8, 1.2)
        params[f"{c.bn}.weight"] = rng.uniform(low, high, c.cout).astype(np.float32)
        params[f"{c.bn}.bias"] = rng.normal(0.0, 0.1, c.cout).astype(np.float32)
    params["fc.weight"] = (rng.standard_normal((spec.NUM_CLASSES, spec.FC_IN)) / np.sqrt(spec.FC_IN)).astype(np.float32)
    params["fc.bias"] = rng.normal(0.0, 0.1, spec.NUM_CLASSES).astype(np.float32)

    def calibrating_bn(bn: str, y: np.ndarray, p: Mapping[str, np.ndarray]) -> np.ndarray:
        params[f"{bn}.running_mean"] = y.mean(axis=(0, 2, 3), dtype=np.float64).astype(np.float32)
        params[f"{bn}.running_var"] = y.var(axis=(0, 2, 3), dtype=np.float64).astype(np.float32)
        return numpy_forward.batchnorm(bn, y, params)

    # Random features share a large component across images, which would make one class win everywhere:
    # centre each class's logit on the calibration images, then scale the spread to a trained network's.
    raw = numpy_forward.forward(params, images, bn=calibrating_bn) - params["fc.bias"]
    common = raw.mean(axis=0)
    scale = LOGIT_STD / max(float((raw - common).std()), 1e-6)
    params["fc.weight"] *= np.float32(scale)
    params["fc.bias"] = (rng.normal(0.0, 0.1, spec.NUM_CLASSES) - scale * common).astype(np.float32)
    return params
