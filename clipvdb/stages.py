"""Stage definitions and the stage encoder: embeddings from different depths of a CLIP ResNet.

The stages (the study's definitions; dimensions are RN50's):

- ``first``:  no CLIP at all; the image resized to 32x32, scaled to [0, 1], channel-first, flattened.
- ``second``: CLIP preprocessing, then the visual tower's stem, layer1, layer2, layer3; spatial mean.
- ``third``:  on through layer4; the attention-pool input exactly as the pool forms it (tokens,
              mean token prepended, positional embedding added); mean over tokens. No attention.
- ``origin``: the ordinary CLIP image embedding (attention-pool output); classified zero-shot.

One forward pass serves any set of stages: it stops at the deepest stage asked for.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch

from .errors import StageError

# pgvector indexes `vector` up to 2,000 dimensions. Wider stages are stored as halfvec (migration
# 0004): that type can be indexed up to 4,000 dimensions, and a 3,072-d row (6 KB) fits in a page, so
# it is never TOASTed (BENCHMARKS.md: faster loads and scans, the same 1-NN up to near-ties).
MAX_VECTOR_INDEX_DIM = 2000


@dataclass(frozen=True)
class Stage:
    name: str
    dim: int
    depth: int
    uses_clip: bool
    description: str

    @property
    def table(self) -> str:
        return f"embeddings_{self.name}"

    @property
    def column_type(self) -> str:
        """The pgvector type of the stage's embedding column: 'vector', or 'halfvec' when wider
        than pgvector can index as vector."""
        return "halfvec" if self.dim > MAX_VECTOR_INDEX_DIM else "vector"

    @property
    def sql_type(self) -> str:
        return f"{self.column_type}({self.dim})"

    def query_expr(self, param: str) -> str:
        """A query vector (sent as vector) cast to the column's type, so operators and indexes match."""
        return f"({param})::{self.sql_type}"


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage("first", 3072, 0, False, "raw pixels, 32x32x3 in [0, 1]"),
        Stage("second", 1024, 1, True, "mean of layer3 (stem..layer3)"),
        Stage("third", 2048, 2, True, "mean of attention-pool input tokens (..layer4)"),
        Stage("origin", 1024, 3, True, "CLIP image embedding (attention-pool output)"),
    )
}
STAGE_NAMES: tuple[str, ...] = tuple(STAGES)


def parse_stages(value: str | Iterable[str]) -> list[Stage]:
    """'all', one name, or a comma-separated list, in forward-pass order."""
    names = value.split(",") if isinstance(value, str) else list(value)
    names = [n.strip().lower() for n in names if n.strip()]
    if not names:
        raise StageError(f"no stage given; choose from {', '.join(STAGE_NAMES)} or all")
    if "all" in names:
        return list(STAGES.values())
    unknown = [n for n in names if n not in STAGES]
    if unknown:
        raise StageError(f"unknown stage {unknown[0]!r}; choose from {', '.join(STAGE_NAMES)} or all")
    return sorted({STAGES[n] for n in names}, key=lambda s: s.depth)


def first_stage_vectors(pixels: torch.Tensor) -> np.ndarray:
    """`first` from a batch of 32x32 [0, 1] tensors (N, 3, 32, 32): flattened channel-first."""
    return pixels.reshape(pixels.shape[0], -1).to(torch.float32).cpu().numpy()


def attnpool_tokens(attnpool: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The attention pool's input tokens, (HW+1, N, C), formed exactly as AttentionPool2d does."""
    x = x.reshape(x.shape[0], x.shape[1], x.shape[2] * x.shape[3]).permute(2, 0, 1)
    x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0)
    return x + attnpool.positional_embedding[:, None, :].to(x.dtype)


def supports_depth_stages(visual: torch.nn.Module) -> bool:
    return all(hasattr(visual, a) for a in ("stem", "layer3", "layer4", "attnpool"))


@dataclass
class StageOutput:
    """Vectors per stage (float32, N x dim) and elapsed encoder ms to reach each stage (whole batch)."""

    vectors: dict[str, np.ndarray] = field(default_factory=dict)
    elapsed_ms: dict[str, float] = field(default_factory=dict)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def run_stages(
    visual: torch.nn.Module, images: torch.Tensor, stages: Iterable[Stage], device: torch.device
) -> StageOutput:
    """One forward pass through a CLIP ResNet's visual tower that stops at the deepest stage asked
    for and captures every requested CLIP stage on the way. `images` are CLIP-preprocessed."""
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

    deepest = max(STAGES[n].depth for n in wanted)
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
    if deepest <= STAGES["second"].depth:
        return out
    x = visual.layer4(x)
    if "third" in wanted:
        out.vectors["third"] = attnpool_tokens(visual.attnpool, x).mean(dim=0).float().cpu().numpy()
        _sync(device)
        out.elapsed_ms["third"] = (time.perf_counter() - start) * 1000
    if deepest <= STAGES["third"].depth:
        return out
    out.vectors["origin"] = visual.attnpool(x).float().cpu().numpy()
    out.elapsed_ms["origin"] = (time.perf_counter() - start) * 1000
    return out


def stage_dims(visual: torch.nn.Module | None, image_size: int = 224) -> dict[str, int]:
    """Dimensions per stage for a given visual tower (RN50's when `visual` is None)."""
    dims = {"first": STAGES["first"].dim}
    if visual is None:
        return {n: s.dim for n, s in STAGES.items()}
    device = next(visual.parameters()).device
    probe = torch.zeros(1, 3, image_size, image_size, device=device)
    names = list(STAGES.values()) if supports_depth_stages(visual) else [STAGES["origin"]]
    out = run_stages(visual, probe, names, device)
    dims.update({n: v.shape[1] for n, v in out.vectors.items()})
    return dims
