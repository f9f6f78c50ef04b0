"""The stage encoder: embeddings from different depths of a CLIP ResNet's visual tower (torch).

Stage definitions are in stages.py. `run_stages` runs one forward pass that stops at the deepest
stage asked for and captures every requested CLIP stage on the way.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import torch

from .errors import StageError
from .stages import DEPTHS, Stage, StageOutput


def attnpool_tokens(attnpool: Any, x: torch.Tensor) -> torch.Tensor:
    """The attention pool's input tokens, (HW+1, N, C), formed exactly as AttentionPool2d does."""
    x = x.reshape(x.shape[0], x.shape[1], x.shape[2] * x.shape[3]).permute(2, 0, 1)
    x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0)
    return x + attnpool.positional_embedding[:, None, :].to(x.dtype)


def supports_depth_stages(visual: torch.nn.Module) -> bool:
    return all(hasattr(visual, a) for a in ("stem", "layer3", "layer4", "attnpool"))


def stage_widths(visual: Any) -> dict[str, int]:
    """The widths of the stages a visual tower computes, read from its layers (no forward pass): a
    CLIP ResNet computes second (layer3's channels), third (layer4's) and origin; any other tower
    origin alone."""
    widths = {"origin": int(visual.output_dim)}
    if supports_depth_stages(visual):
        widths["second"] = int(visual.layer3[-1].bn3.num_features)
        widths["third"] = int(visual.attnpool.positional_embedding.shape[1])
    return widths


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def run_stages(visual: Any, images: torch.Tensor, stages: Iterable[Stage], device: torch.device) -> StageOutput:
    """One forward pass through a CLIP ResNet's visual tower that stops at the deepest stage asked
    for and captures every requested CLIP stage on the way. `images` are CLIP-preprocessed.
    `elapsed_ms` per stage is the time of the pass up to that stage (cumulative)."""
    wanted = {s.name for s in stages if s.uses_clip}
    out = StageOutput()
    if not wanted:
        return out
    if not supports_depth_stages(visual):
        if wanted - {"origin"}:
            raise StageError(
                f"stages {', '.join(sorted(wanted - {'origin'}))} need a CLIP ResNet "
                "(RN50, RN101, RN50x4, ...); this model has no ResNet layers; use --stage origin or first"
            )
        start = time.perf_counter()
        x = visual(images.to(device))
        _sync(device)
        out.vectors["origin"] = x.float().cpu().numpy()
        out.elapsed_ms["origin"] = (time.perf_counter() - start) * 1000
        return out

    deepest = max(DEPTHS[n] for n in wanted)
    dtype = visual.conv1.weight.dtype
    start = time.perf_counter()
    x = images.to(device=device, dtype=dtype)
    if next(visual.parameters()).is_contiguous(memory_format=torch.channels_last):
        x = x.contiguous(memory_format=torch.channels_last)
    x = visual.stem(x)
    x = visual.layer1(x)
    x = visual.layer2(x)
    x = visual.layer3(x)
    if "second" in wanted:
        out.vectors["second"] = x.mean(dim=(2, 3)).float().cpu().numpy()
        out.elapsed_ms["second"] = (time.perf_counter() - start) * 1000
    if deepest <= DEPTHS["second"]:
        return out
    x = visual.layer4(x)
    if "third" in wanted:
        out.vectors["third"] = attnpool_tokens(visual.attnpool, x).mean(dim=0).float().cpu().numpy()
        _sync(device)
        out.elapsed_ms["third"] = (time.perf_counter() - start) * 1000
    if deepest <= DEPTHS["third"]:
        return out
    out.vectors["origin"] = visual.attnpool(x).float().cpu().numpy()
    out.elapsed_ms["origin"] = (time.perf_counter() - start) * 1000
    return out
