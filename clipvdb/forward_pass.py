"""The per-stage forward pass: embeddings from different depths of a CLIP visual tower (torch).

Stage definitions are in stages.py. `run_stages` runs one forward pass that stops at the deepest
stage asked for and captures every requested CLIP stage on the way.

- A CLIP ResNet (RN50, RN101, ...): second is the spatial mean after layer3, third the mean of the
  attention pool's input tokens after layer4, origin the attention pool's output.
- A CLIP vision transformer (ViT-B-32, ...): second is the token mean after half the transformer
  blocks, third the token mean after all of them (before the final norm and projection), origin
  the image embedding.
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


def supports_transformer_stages(visual: torch.nn.Module) -> bool:
    return all(hasattr(visual, a) for a in ("_embeds", "_pool", "transformer", "proj")) and hasattr(
        visual.transformer, "resblocks"
    )


def stage_widths(visual: Any) -> dict[str, int]:
    """The widths of the stages a visual tower computes, read from its layers (no forward pass): a
    CLIP ResNet computes second (layer3's channels), third (layer4's) and origin; a CLIP vision
    transformer second and third at its width and origin; any other tower origin alone."""
    widths = {"origin": int(visual.output_dim)}
    if supports_depth_stages(visual):
        widths["second"] = int(visual.layer3[-1].bn3.num_features)
        widths["third"] = int(visual.attnpool.positional_embedding.shape[1])
    elif supports_transformer_stages(visual):
        widths["second"] = widths["third"] = int(visual.transformer.width)
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
    if supports_transformer_stages(visual):
        return _transformer_stages(visual, images, wanted, device)
    if not supports_depth_stages(visual):
        if wanted - {"origin"}:
            raise StageError(
                f"stages {', '.join(sorted(wanted - {'origin'}))} need a CLIP ResNet or vision transformer "
                "(RN50, ViT-B-32, ...); this model has neither; use --stage origin or first"
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


def _transformer_stages(visual: Any, images: torch.Tensor, wanted: set[str], device: torch.device) -> StageOutput:
    """The vision transformer's pass, stopped after half the blocks when second is the deepest stage
    asked for. The same operations in the same order as the tower's own forward, so origin is its
    output."""
    out = StageOutput()
    deepest = max(DEPTHS[n] for n in wanted)
    blocks = visual.transformer.resblocks
    half = len(blocks) // 2
    start = time.perf_counter()
    x = visual._embeds(images.to(device=device, dtype=visual.conv1.weight.dtype))
    batch_first = getattr(visual.transformer, "batch_first", True)
    if not batch_first:
        x = x.transpose(0, 1).contiguous()
    token_axis = 1 if batch_first else 0
    for i, block in enumerate(blocks):
        x = block(x, attn_mask=None)
        if i + 1 == half and "second" in wanted:
            out.vectors["second"] = x.mean(dim=token_axis).float().cpu().numpy()
            out.elapsed_ms["second"] = (time.perf_counter() - start) * 1000
            if deepest <= DEPTHS["second"]:
                return out
    if not batch_first:
        x = x.transpose(0, 1)
    if "third" in wanted:
        out.vectors["third"] = x.mean(dim=1).float().cpu().numpy()
        _sync(device)
        out.elapsed_ms["third"] = (time.perf_counter() - start) * 1000
    if deepest <= DEPTHS["third"]:
        return out
    pooled, _ = visual._pool(x)
    if visual.proj is not None:
        pooled = pooled @ visual.proj
    out.vectors["origin"] = pooled.float().cpu().numpy()
    out.elapsed_ms["origin"] = (time.perf_counter() - start) * 1000
    return out
