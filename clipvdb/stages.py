"""Stage definitions: plain data, no torch (importing this module costs nothing).

The stages (the study's definitions, for RN50; a model declares its own widths with `declare`):

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

# Every stage is stored as halfvec with STORAGE PLAIN: a row stays in its table page (a 3,072-d row
# is 6 KB; a 1,024-d one 2 KB, three to a page where vector(1,024) took a page each), pgvector indexes
# halfvec up to 4,000 dimensions, and half precision changed none of the nearest neighbors measured
# (BENCHMARKS.md, items 8 and 9). Projections and learned maps of up to 2,000 dimensions index as
# vector.
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
        """The pgvector type of the stage's embedding column (migration 0012: halfvec for all)."""
        return "halfvec"

    @property
    def sql_type(self) -> str:
        return f"{self.column_type}({self.dim})"


DEPTHS = {"first": 0, "second": 1, "third": 2, "origin": 3}
DESCRIPTIONS = {
    "first": "raw pixels, 32x32x3 in [0, 1]",
    "second": "about half the network (RN50: mean of layer3)",
    "third": "nearly all of it (RN50: mean of the attention-pool input tokens)",
    "origin": "the model's own output (CLIP: the image embedding, classified zero-shot)",
}
FIRST_DIM = 3 * 32 * 32


def declare(widths: dict[str, int]) -> dict[str, Stage]:
    """A model's stages: each stage it computes with its width, and stage first (pixels, no model),
    in forward-pass order. An encoder declares its stages this way; the storage follows them."""
    unknown = set(widths) - set(DEPTHS)
    if unknown:
        raise StageError(f"unknown stage {sorted(unknown)[0]!r}; stages are {', '.join(DEPTHS)}")
    declared = {"first": FIRST_DIM, **{n: int(d) for n, d in widths.items() if n != "first"}}
    return {n: Stage(n, declared[n], DEPTHS[n], n != "first", DESCRIPTIONS[n]) for n in DEPTHS if n in declared}


# RN50's stages: the widths the migrations give the stage tables
STAGES: dict[str, Stage] = declare({"second": 1024, "third": 2048, "origin": 1024})
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
