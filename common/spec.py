"""ResNet-50 (torchvision's topology, IMAGENET1K_V1) as data.

Every stage, the judge, the weight store and the benchmark read the network from here, so there is one
place that says what ResNet-50 is. Bottlenecks [3, 4, 6, 3]; the stride sits on the 3x3 conv (torchvision's
choice, sometimes called "v1.5"); every conv is followed by BatchNorm (eps 1e-5) and there are no conv biases.

`STEPS` is the forward pass as a flat list. Each step reads one named tensor and writes one, named after the
step; a conv step may add a second tensor (the residual) after its BatchNorm and before its ReLU.
"""

import math
from dataclasses import dataclass

IMAGE_SIZE = 224
IN_CHANNELS = 3
NUM_CLASSES = 1000
BN_EPS = 1e-5
LAYERS = (3, 4, 6, 3)
WIDTHS = (64, 128, 256, 512)
EXPANSION = 4
MAXPOOL = (3, 2, 1)  # kernel, stride, padding
INPUT = "input"
LOGITS = "fc"


@dataclass(frozen=True)
class Conv:
    """A convolution and the BatchNorm that follows it (no bias: torchvision's convs have none)."""

    name: str
    bn: str
    cin: int
    cout: int
    kernel: int
    stride: int
    pad: int
    h_in: int
    w_in: int

    @property
    def h_out(self) -> int:
        return (self.h_in + 2 * self.pad - self.kernel) // self.stride + 1

    @property
    def w_out(self) -> int:
        return (self.w_in + 2 * self.pad - self.kernel) // self.stride + 1

    @property
    def weight(self) -> str:
        return f"{self.name}.weight"

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.cout, self.cin, self.kernel, self.kernel)

    @property
    def macs(self) -> int:
        return self.cout * self.cin * self.kernel * self.kernel * self.h_out * self.w_out


@dataclass(frozen=True)
class Step:
    """One step of the forward pass; `name` is also the name of the tensor it writes."""

    name: str
    op: str  # "conv", "maxpool", "avgpool" or "fc"
    src: str
    shape: tuple[int, ...]  # of the tensor it writes, without the batch dimension
    conv: Conv | None = None
    residual: str | None = None
    relu: bool = False

    @property
    def dst(self) -> str:
        return self.name

    @property
    def macs(self) -> int:
        if self.conv is not None:
            return self.conv.macs
        if self.op == "fc":
            return FC_IN * NUM_CLASSES
        return 0


FC_IN = WIDTHS[-1] * EXPANSION


def _build() -> tuple[list[Conv], list[Step]]:
    convs: list[Conv] = []
    steps: list[Step] = []

    def conv_step(name, bn, src, cin, cout, k, s, p, hw, relu, residual=None) -> Step:
        c = Conv(name, bn, cin, cout, k, s, p, hw, hw)
        convs.append(c)
        step = Step(name, "conv", src, (cout, c.h_out, c.w_out), c, residual, relu)
        steps.append(step)
        return step

    x = conv_step("conv1", "bn1", INPUT, IN_CHANNELS, 64, 7, 2, 3, IMAGE_SIZE, relu=True)
    k, s, p = MAXPOOL
    hw = (x.shape[1] + 2 * p - k) // s + 1
    steps.append(Step("maxpool", "maxpool", x.name, (64, hw, hw)))
    src, cin = "maxpool", 64
    for layer, (blocks, width) in enumerate(zip(LAYERS, WIDTHS, strict=True), start=1):
        for b in range(blocks):
            pre = f"layer{layer}.{b}"
            stride = 2 if (b == 0 and layer > 1) else 1
            cout = width * EXPANSION
            identity = src
            if b == 0:
                identity = conv_step(
                    f"{pre}.downsample.0", f"{pre}.downsample.1", src, cin, cout, 1, stride, 0, hw, False
                ).name
            t1 = conv_step(f"{pre}.conv1", f"{pre}.bn1", src, cin, width, 1, 1, 0, hw, True)
            t2 = conv_step(f"{pre}.conv2", f"{pre}.bn2", t1.name, width, width, 3, stride, 1, hw, True)
            hw = t2.shape[1]
            t3 = conv_step(f"{pre}.conv3", f"{pre}.bn3", t2.name, width, cout, 1, 1, 0, hw, True, identity)
            src, cin = t3.name, cout
    steps.append(Step("avgpool", "avgpool", src, (cin,)))
    steps.append(Step(LOGITS, "fc", "avgpool", (NUM_CLASSES,)))
    return convs, steps


CONVS, STEPS = _build()
STEP_BY_NAME = {s.name: s for s in STEPS}


def tensor_shapes() -> dict[str, tuple[int, ...]]:
    """Every tensor of the weight store, by torchvision's state-dict key, in execution order."""
    shapes: dict[str, tuple[int, ...]] = {}
    for c in CONVS:
        shapes[c.weight] = c.weight_shape
        for field in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{c.bn}.{field}"] = (c.cout,)
    shapes["fc.weight"] = (NUM_CLASSES, FC_IN)
    shapes["fc.bias"] = (NUM_CLASSES,)
    return shapes


TOTAL_MACS = sum(s.macs for s in STEPS)
TOTAL_FLOPS = 2 * TOTAL_MACS  # one multiply and one add per MAC; BN, ReLU, pooling are not counted
NUM_VALUES = sum(math.prod(shape) for shape in tensor_shapes().values())  # parameters + BN statistics
