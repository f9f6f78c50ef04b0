"""Loading CLIP models and weights through open_clip, with an honest identity for the weights.

- ``openai`` (or any open_clip tag): open_clip's own loader; downloads and caches when the network
  allows, uses the local cache otherwise, and never falls back to random weights.
- a file path: an OpenAI TorchScript archive or an open_clip state dict, loaded by open_clip.
- ``random``: random initialisation with a fixed seed, announced on stderr.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import logging
import os
import socket
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .config import DEFAULT_MODEL, DEFAULT_PRETRAINED, ENV_KEEP_FREED_MEMORY
from .errors import UsageError, WeightsError
from .forward_pass import run_stages, stage_widths
from .stages import Stage, StageOutput, declare

RANDOM = "random"
RANDOM_SEED = 0
HUB_HOST = "huggingface.co"


@dataclass
class LoadedModel:
    """A CLIP model with its preprocessing, tokenizer and the identity of its weights."""

    name: str
    weights: str
    model: Any
    preprocess: Any
    tokenizer: Any
    device: torch.device
    quick_gelu: bool = False

    @property
    def visual(self) -> torch.nn.Module:
        return self.model.visual

    @functools.cached_property
    def stages(self) -> dict[str, Stage]:
        return declare(stage_widths(self.visual))

    @property
    def is_random(self) -> bool:
        return self.weights.startswith("random")

    # The preprocessing split at ToTensor: the PIL steps (resize, centre crop, RGB) run in the
    # decoding workers and give uint8; ToTensor's division and Normalize run on the whole batch.
    # Same operations in the same order as open_clip's transform, so the same floats.
    @functools.cached_property
    def _split_preprocess(self) -> tuple[list, tuple[float, ...], tuple[float, ...]]:
        from torchvision import transforms as T  # torchvision: only once a CLIP model is loaded

        steps = list(self.preprocess.transforms)
        cut = next(i for i, t in enumerate(steps) if isinstance(t, T.ToTensor))
        norm = next(t for t in steps[cut:] if isinstance(t, T.Normalize))
        return steps[:cut], tuple(norm.mean), tuple(norm.std)

    def prepare(self, img: Image.Image) -> np.ndarray:
        for step in self._split_preprocess[0]:
            img = step(img)
        return np.asarray(img, dtype=np.uint8)

    def to_input(self, batch: np.ndarray) -> torch.Tensor:
        """A (N, H, W, 3) uint8 batch as the model's normalised float input (N, 3, H, W)."""
        _, mean, std = self._split_preprocess
        x = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).to(torch.float32).div(255)
        m = torch.tensor(mean, dtype=x.dtype)[:, None, None]
        s = torch.tensor(std, dtype=x.dtype)[:, None, None]
        return x.sub_(m).div_(s)

    def encode(self, batch: np.ndarray, stages: list[Stage]) -> StageOutput:
        return run_stages(self.visual, self.to_input(batch), stages, self.device)

    @torch.inference_mode()
    def encode_text(self, texts: list[str]) -> np.ndarray:
        tokens = self.tokenizer(texts).to(self.device)
        return self.model.encode_text(tokens).float().cpu().numpy()


def pick_device(requested: str | None = None) -> torch.device:
    """cuda, then mps, then cpu; or what was asked for."""
    if requested and requested != "auto":
        try:
            device = torch.device(requested)
        except RuntimeError as exc:
            raise UsageError(f"unknown device {requested!r}; use cpu, cuda, cuda:N or mps") from exc
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UsageError("--device cuda was asked for, but no CUDA device is available")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def file_identity(path: Path) -> str:
    with open(path, "rb") as fh:
        return f"sha256:{hashlib.file_digest(fh, 'sha256').hexdigest()[:16]}"


def openai_architecture(name: str, tag: str | None = None) -> bool:
    """Whether `name` (with `tag`, or any of its tags) was trained with QuickGELU. open_clip's plain
    `RN50` config uses nn.GELU, but OpenAI trained every CLIP model with QuickGELU, and open_clip's
    factory only logs the mismatch: the text tower would run the wrong activation."""
    import open_clip  # open_clip (and its timm, huggingface imports): only when a CLIP model is loaded

    tags = [tag] if tag else open_clip.list_pretrained_tags_by_model(name)
    return any(bool((open_clip.get_pretrained_cfg(name, t) or {}).get("quick_gelu")) for t in tags)


def is_torchscript_archive(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in zf.namelist())


def hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        return False
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _hub_offline():
    """Make huggingface_hub use its local cache only (it otherwise retries for most of a minute)."""
    try:
        from huggingface_hub import constants  # optional: open_clip works without it
    except ImportError:
        yield
        return
    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def announce(message: str) -> None:
    print(message, file=sys.stderr)


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)


@functools.cache
def keep_freed_memory() -> bool:
    """Have glibc's malloc serve large blocks from the heap and keep what is freed, for the CPU
    encoder's activations. By default every block over 32 MB is a fresh mmap that the kernel fills
    with zeros page by page on first touch, and is unmapped again when freed: RN50 at batch 64 took
    4.5 million page faults per 192 images. With this the warm encoder ran 2.20x as fast (12.9 ->
    28.3 images/s), with bit-identical embeddings and the same peak RSS (BENCHMARKS.md, item 3).
    The process keeps its peak heap until it exits. Linux with glibc only; the
    CLIPVDB_KEEP_FREED_MEMORY=0 environment variable turns it off."""
    if sys.platform != "linux" or os.environ.get(ENV_KEEP_FREED_MEMORY, "1") == "0":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30))
    except (OSError, AttributeError):  # not glibc
        return False


def load_model(
    name: str = DEFAULT_MODEL,
    pretrained: str = DEFAULT_PRETRAINED,
    device: str | torch.device | None = None,
    *,
    channels_last: bool | None = None,
    quiet: bool = False,
) -> LoadedModel:
    """Load `name` with `pretrained` weights (a tag, a checkpoint path, or 'random').

    `channels_last` defaults to on for CPU: it measured 0.62x the time of NCHW for RN50 at batch 32
    with identical embeddings (BENCHMARKS.md, item 3)."""
    import open_clip  # open_clip (and its timm, huggingface imports): only when a CLIP model is loaded

    logging.getLogger("root").setLevel(logging.CRITICAL)
    dev = device if isinstance(device, torch.device) else pick_device(device)
    if name not in open_clip.list_models():
        raise UsageError(f"unknown model {name!r}; open_clip knows e.g. RN50, RN101, RN50x4, ViT-B-32")
    path = Path(pretrained).expanduser()
    quick_gelu = openai_architecture(
        name, pretrained if pretrained in open_clip.list_pretrained_tags_by_model(name) else None
    )
    if pretrained == RANDOM:
        torch.manual_seed(RANDOM_SEED)
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None, force_quick_gelu=quick_gelu)
        weights = f"random:seed={RANDOM_SEED}"
        if not quiet:
            announce(
                f"clipvdb: using RANDOM weights for {name} (seed {RANDOM_SEED}): "
                "embeddings are not CLIP's; for tests and timing only"
            )
    elif path.is_file():
        weights = file_identity(path)
        try:
            if is_torchscript_archive(path):
                model = open_clip.load_openai_model(str(path), precision="fp32", device="cpu")
                preprocess = open_clip.image_transform(model.visual.image_size, is_train=False)
                quick_gelu = True  # load_openai_model builds the QuickGELU architecture
            else:
                model, _, preprocess = open_clip.create_model_and_transforms(
                    name, pretrained=str(path), force_quick_gelu=quick_gelu
                )
        except Exception as exc:
            raise WeightsError(
                f"cannot load {path} as {name} weights ({exc.__class__.__name__}: "
                f"{str(exc).splitlines()[0][:160]}); pass a checkpoint for {name} or the matching --model"
            ) from exc
    elif pretrained in open_clip.list_pretrained_tags_by_model(name):
        online = hub_reachable()
        try:
            with contextlib.nullcontext() if online else _hub_offline():
                model, _, preprocess = open_clip.create_model_and_transforms(
                    name, pretrained=pretrained, force_quick_gelu=quick_gelu
                )
        except Exception as exc:
            why = "download failed" if online else "no network and not in the local cache"
            raise WeightsError(
                f"cannot get {name} '{pretrained}' weights ({why}); download them where the network "
                f"allows, then pass --pretrained PATH to the checkpoint (or --pretrained random for tests)"
            ) from exc
        weights = pretrained
    elif pretrained and (os.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors"))):
        raise UsageError(f"checkpoint file not found: {pretrained}")
    else:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
        raise UsageError(
            f"unknown --pretrained {pretrained!r} for {name}; use a tag ({tags}), a checkpoint path, or random"
        )
    model.eval()
    model.to(dev)
    if dev.type == "cpu":
        keep_freed_memory()
    if channels_last is None:
        channels_last = dev.type == "cpu"
    if channels_last:
        model.visual.to(memory_format=torch.channels_last)
    tokenizer = open_clip.get_tokenizer(name)
    return LoadedModel(
        name=name,
        weights=weights,
        model=model,
        preprocess=preprocess,
        tokenizer=tokenizer,
        device=dev,
        quick_gelu=quick_gelu,
    )
