"""Stage definitions: plain data, no torch (importing this module costs nothing).

The stages (the study's definitions; dimensions are RN50's):

- ``first``:  no CLIP at all; the image resized to 32x32, scaled to [0, 1], channel-first, flattened.
- ``second``: CLIP preprocessing, then the visual tower's stem, layer1, layer2, layer3; spatial mean.
- ``third``:  on through layer4; the attention-pool input exactly as the pool forms it (tokens,
              mean token prepended, positional embedding added); mean over tokens. No attention.
- ``origin``: the ordinary CLIP image embedding (attention-pool output); classified zero-shot.

The torch code that computes them is in encoder.py; one forward pass serves any set of stages.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from .errors import StageError

# pgvector indexes `vector` up to 2,000 dimensions. Wider stages are stored as halfvec (migration
# 0004): that type can be indexed up to 4,000 dimensions, and a 3,072-d row (6 KB) fits in a page, so
# it is never TOASTed (BENCHMARKS.md: faster loads and scans, the same 1-NN up to near-ties).
MAX_VECTOR_INDEX_DIM = 2000

ColumnType = Literal["vector", "halfvec"]


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
    def projection_table(self) -> str:
        return f"projections_{self.name}"

    @property
    def learned_table(self) -> str:
        return f"learned_{self.name}"

    @property
    def column_type(self) -> ColumnType:
        """The pgvector type of the stage's embedding column: 'vector', or 'halfvec' when wider
        than pgvector can index as vector."""
        return "halfvec" if self.dim > MAX_VECTOR_INDEX_DIM else "vector"

    @property
    def sql_type(self) -> str:
        return f"{self.column_type}({self.dim})"


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
STAGE_CHOICES = "first|second|third|origin|all, or a comma-separated list"


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


def needs_encoder(stages: Iterable[Stage]) -> bool:
    return any(s.uses_clip for s in stages)


@dataclass
class StageOutput:
    """Vectors per stage (float32, N x dim) and elapsed encoder ms to reach each stage (whole batch)."""

    vectors: dict[str, np.ndarray] = field(default_factory=dict)
    elapsed_ms: dict[str, float] = field(default_factory=dict)
