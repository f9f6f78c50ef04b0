"""The compact residual CNN that `clipvdb train` fits: its layers, its checkpoint file, and its stages.

A checkpoint is a model like RN50: `--model PATH` (or the name of a checkpoint in the home's models
folder) loads it as an encoder. Its stages mirror the study's:

- ``first``:  pixels, as for every model.
- ``second``: after the stem and two of the three residual blocks (about half the network's compute);
              spatial mean.
- ``third``:  after the last block, max-pooled: the features the classifier reads, scaled to unit
              length, so that their L2 distance orders as their cosine similarity (the usual way to
              compare a network's features by nearest neighbor).
- ``origin``: the network's own classifier (its logits); the prediction is their argmax, the
              no-database answer, as zero-shot is for CLIP.

The forward pass stops after the deepest stage asked for. A checkpoint is one torch file holding only
tensors and plain values (loaded with ``weights_only=True``): the architecture, the weights, the
input normalisation, the class names and the training record. Its identity is the SHA-256 of the file.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .errors import UsageError, WeightsError
from .images import first_stage_pixels
from .stages import DEPTHS, Stage, StageOutput, declare

FORMAT = "clipvdb-cnn/1"
TUNED_FORMAT = "clipvdb-efficientnet/1"  # an EfficientNet-Lite fine-tuned by `clipvdb train --base`
DEFAULT_WIDTHS = (48, 96, 192)
STEM_WIDTH = 24
LOGIT_SCALE = 0.125  # a small output scale keeps the high one-cycle learning rate stable


class ResidualBlock(nn.Module):
    """conv, max-pool (halves the side), BN, GELU; then a residual conv-BN-GELU at the new size."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.bn1(F.max_pool2d(self.conv1(x), 2)))
        return x + F.gelu(self.bn2(self.conv2(x)))


class CompactNet(nn.Module):
    """Stem (3x3 conv) then three residual blocks (32 -> 16 -> 8 -> 4 pixels), max pool, linear."""

    def __init__(self, widths: Sequence[int] = DEFAULT_WIDTHS, n_classes: int = 10):
        super().__init__()
        if len(widths) != 3 or min(widths) < 1:
            raise UsageError(f"--widths takes three positive channel counts (e.g. 48,96,192), not {widths}")
        self.widths = tuple(int(w) for w in widths)
        self.stem = nn.Sequential(nn.Conv2d(3, STEM_WIDTH, 3, padding=1, bias=False), nn.BatchNorm2d(STEM_WIDTH))
        self.blocks = nn.ModuleList(
            ResidualBlock(a, b) for a, b in zip((STEM_WIDTH, *self.widths[:-1]), self.widths, strict=True)
        )
        self.head = nn.Linear(self.widths[-1], n_classes, bias=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.stem(x))
        for block in self.blocks:
            x = block(x)
        return F.adaptive_max_pool2d(x, 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)) * LOGIT_SCALE

    def stages(self, x: torch.Tensor, wanted: set[str]) -> dict[str, tuple[torch.Tensor, float]]:
        """The wanted stages' vectors (and ms since the start), stopping after the deepest one."""
        deepest = max(DEPTHS[n] for n in wanted)
        start = time.perf_counter()
        out: dict[str, tuple[torch.Tensor, float]] = {}
        x = F.gelu(self.stem(x))
        x = self.blocks[1](self.blocks[0](x))
        if "second" in wanted:
            out["second"] = (x.mean(dim=(2, 3)), (time.perf_counter() - start) * 1000)
        if deepest <= DEPTHS["second"]:
            return out
        feats = F.adaptive_max_pool2d(self.blocks[2](x), 1).flatten(1)
        if "third" in wanted:
            out["third"] = (F.normalize(feats, dim=1), (time.perf_counter() - start) * 1000)
        if deepest <= DEPTHS["third"]:
            return out
        out["origin"] = (self.head(feats) * LOGIT_SCALE, (time.perf_counter() - start) * 1000)
        return out


@dataclass
class Checkpoint:
    """What a checkpoint file holds."""

    name: str
    widths: tuple[int, ...]
    classes: list[str]
    mean: list[float]
    std: list[float]
    state_dict: dict[str, torch.Tensor]
    record: dict[str, Any]

    def save(self, path: Path) -> str:
        """Write the file (atomically: a temporary file renamed) and return its SHA-256."""
        payload = {
            "format": FORMAT,
            "name": self.name,
            "widths": list(self.widths),
            "classes": list(self.classes),
            "mean": list(self.mean),
            "std": list(self.std),
            "state_dict": {k: v.detach().cpu().contiguous() for k, v in self.state_dict.items()},
            "record": self.record,
        }
        return save_payload(payload, path)

    def network(self) -> CompactNet:
        net = CompactNet(self.widths, len(self.classes))
        net.load_state_dict(self.state_dict)
        return net.eval()


def file_sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def read_payload(path: Path) -> dict[str, Any]:
    """What a checkpoint file holds, checked: a one-line WeightsError when clipvdb did not write it."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a file that is not a checkpoint
        raise WeightsError(
            f"cannot read {path} as a clipvdb checkpoint ({exc.__class__.__name__}); "
            "make one with 'clipvdb train --data SRC --out PATH'"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") not in (FORMAT, TUNED_FORMAT):
        raise WeightsError(
            f"{path} is not a clipvdb checkpoint ({FORMAT} or {TUNED_FORMAT}); "
            "make one with 'clipvdb train --data SRC --out PATH'"
        )
    return payload


def read_checkpoint(path: Path, payload: dict[str, Any] | None = None) -> Checkpoint:
    """A compact CNN's checkpoint file (or its payload, read_payload's), checked."""
    payload = read_payload(path) if payload is None else payload
    if payload["format"] != FORMAT:
        raise WeightsError(f"{path} holds a fine-tuned {payload.get('variant')}, not a compact CNN")
    return Checkpoint(
        name=str(payload["name"]),
        widths=tuple(int(w) for w in payload["widths"]),
        classes=[str(c) for c in payload["classes"]],
        mean=[float(m) for m in payload["mean"]],
        std=[float(s) for s in payload["std"]],
        state_dict=payload["state_dict"],
        record=dict(payload["record"]),
    )


def save_payload(payload: dict[str, Any], path: Path) -> str:
    """Write a checkpoint file atomically (a temporary file renamed); its SHA-256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    torch.save(payload, tmp)
    tmp.replace(path)
    return file_sha256(path)


CHUNK_PIXELS = 300_000  # input pixels per pass of NetworkEncoder.encode (5 images at 224 px)


def images_per_pass(height: int, width: int) -> int:
    """How many images of this size NetworkEncoder.encode puts through the network at once."""
    return max(1, CHUNK_PIXELS // (height * width))


class NetworkEncoder:
    """An image network in a weights file as an encoder (the trained CNN, EfficientNet-Lite): its
    identity the file's SHA-256; a batch scaled per channel, (pixels / 255 - mean) / std; the stages
    asked for from `net.stages(x, wanted)`, a pass that stops at the deepest one; no text tower.
    A subclass sets `net`, `stages`, `_mean` and `_std`."""

    is_random = False
    net: torch.nn.Module
    stages: dict[str, Stage]
    _mean: torch.Tensor
    _std: torch.Tensor

    def __init__(self, name: str, path: Path, device: str | None = None):
        self.name = name
        self.path = Path(path)
        self.sha256 = file_sha256(self.path)
        self.weights = f"sha256:{self.sha256}"
        self.device = torch.device("cpu" if device in (None, "auto") else device)

    @staticmethod
    def per_channel(values) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float32)[:, None, None]

    def to_input(self, batch: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.require(batch, np.uint8, ["C", "W"])).permute(0, 3, 1, 2).to(torch.float32).div_(255)
        return x.sub_(self._mean).div_(self._std).to(self.device)

    @torch.inference_mode()
    def encode(self, batch: np.ndarray, stages: list[Stage]) -> StageOutput:
        """The batch goes through the network a chunk at a time, CHUNK_PIXELS of input each: a
        chunk's activations stay in the CPU's caches, where a whole batch's at 224 px would not
        (EfficientNet-Lite0 at 224 px: about 1.6x the images/s of one pass over 64 images)."""
        out = StageOutput()
        wanted = {s.name for s in stages if s.uses_clip}
        if not wanted:
            return out
        step = images_per_pass(batch.shape[1], batch.shape[2])
        parts: dict[str, list[np.ndarray]] = {}
        for start in range(0, len(batch), step):
            chunk = self.to_input(batch[start : start + step])
            for name, (v, ms) in self.net.stages(chunk, wanted).items():  # type: ignore[operator]
                parts.setdefault(name, []).append(v.float().cpu().numpy())
                out.elapsed_ms[name] = out.elapsed_ms.get(name, 0.0) + ms
        out.vectors = {name: np.concatenate(vs) for name, vs in parts.items()}
        return out

    def encode_text(self, texts: list[str]) -> np.ndarray:
        raise UsageError(f"{self.name} has no text tower: text search needs a CLIP model (--model RN50)")


class TrainedEncoder(NetworkEncoder):
    """A checkpoint as an encoder: stages second, third and origin at the network's own widths."""

    def __init__(self, path: Path, device: str | None = None, payload: dict[str, Any] | None = None):
        self.checkpoint = read_checkpoint(Path(path), payload)
        super().__init__(self.checkpoint.name, path, device)
        self.classes = self.checkpoint.classes
        self.net = self.checkpoint.network().to(self.device)
        w = self.checkpoint.widths
        self.stages = declare({"second": w[1], "third": w[2], "origin": len(self.classes)})
        self._mean, self._std = self.per_channel(self.checkpoint.mean), self.per_channel(self.checkpoint.std)

    def prepare(self, img: Image.Image) -> np.ndarray:
        return first_stage_pixels(img)

    def class_vectors(self, classes: list[str]) -> np.ndarray:
        """One row per class in origin's space: the classifier's own class as a unit vector, so the
        nearest row by cosine is the argmax of the logits."""
        index = {c: i for i, c in enumerate(self.classes)}
        unknown = [c for c in classes if c not in index]
        if unknown:
            raise UsageError(
                f"{self.name}'s classifier knows {', '.join(self.classes)}; it cannot answer at stage origin for "
                f"{', '.join(unknown[:3])}: use --stage first, second or third"
            )
        rows = np.zeros((len(classes), len(self.classes)), dtype=np.float32)
        rows[np.arange(len(classes)), [index[c] for c in classes]] = 1.0
        return rows
