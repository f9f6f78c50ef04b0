"""Items to per-stage vectors, in batches: images decoded in DataLoader workers, one forward pass."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .errors import ImageError
from .images import array_to_image, first_stage_tensor, load_image
from .models import LoadedModel
from .sources import Item
from .stages import Stage, StageOutput, first_stage_vectors, run_stages


class _ItemDataset(Dataset):
    def __init__(self, items: list[Item], preprocess, need_first: bool, hash_items: bool):
        self.items = items
        self.preprocess = preprocess
        self.need_first = need_first
        self.hash_items = hash_items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        item = self.items[i]
        out: dict = {"index": i, "error": None, "first": None, "clip": None, "sha": b""}
        try:
            img = array_to_image(item.array) if item.array is not None else load_image(item.path, item.key)
            if self.need_first:
                out["first"] = first_stage_tensor(img)
            if self.preprocess is not None:
                out["clip"] = self.preprocess(img)
            if self.hash_items:
                out["sha"] = item.sha256()
        except ImageError as exc:
            out["error"] = str(exc)
        except Exception as exc:  # one bad file must not stop the batch
            out["error"] = f"{item.key}: cannot be read ({exc.__class__.__name__}: {exc})"
        return out


def _collate(rows: list[dict]) -> list[dict]:
    return rows


@dataclass
class EncodedBatch:
    items: list[Item]
    sha: list[bytes]
    vectors: dict[str, np.ndarray]
    elapsed_ms: dict[str, float]
    failed: list[tuple[Item, str]] = field(default_factory=list)


def default_workers() -> int:
    return min(4, max(0, (os.cpu_count() or 1) - 1))


def encode_items(
    items: list[Item],
    stages: list[Stage],
    lm: LoadedModel | None,
    batch_size: int = 64,
    workers: int | None = None,
    hash_items: bool = True,
) -> Iterator[EncodedBatch]:
    """Yield one EncodedBatch per batch: vectors for the items that decoded and are finite."""
    need_first = any(not s.uses_clip for s in stages)
    clip_stages = [s for s in stages if s.uses_clip]
    preprocess = lm.preprocess if clip_stages else None
    ds = _ItemDataset(items, preprocess, need_first, hash_items)
    workers = default_workers() if workers is None else workers
    loader = DataLoader(
        ds, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=_collate,
        persistent_workers=False, prefetch_factor=2 if workers else None,
    )  # fmt: skip
    for rows in loader:
        good = [r for r in rows if r["error"] is None]
        failed = [(items[r["index"]], r["error"]) for r in rows if r["error"] is not None]
        out = StageOutput()
        if good:
            if need_first:
                out.vectors["first"] = first_stage_vectors(torch.stack([r["first"] for r in good]))
                out.elapsed_ms["first"] = 0.0
            if clip_stages:
                assert lm is not None
                clip_out = run_stages(lm.visual, torch.stack([r["clip"] for r in good]), clip_stages, lm.device)
                out.vectors.update(clip_out.vectors)
                out.elapsed_ms.update(clip_out.elapsed_ms)
        # An image whose vector is NaN or infinite at any stage is refused; the rest go on.
        finite = np.ones(len(good), dtype=bool)
        for v in out.vectors.values():
            finite &= np.isfinite(v).all(axis=1)
        for r, ok in zip(good, finite, strict=True):
            if not ok:
                failed.append((items[r["index"]], f"{items[r['index']].key}: the encoder gave NaN or infinite values"))
        keep = [r for r, ok in zip(good, finite, strict=True) if ok]
        vectors = {n: v[finite] for n, v in out.vectors.items()}
        yield EncodedBatch(
            items=[items[r["index"]] for r in keep],
            sha=[r["sha"] for r in keep],
            vectors=vectors,
            elapsed_ms=out.elapsed_ms,
            failed=failed,
        )


def embed_files(paths: list[str], stages: list[Stage], lm: LoadedModel | None) -> dict[str, np.ndarray]:
    """Vectors per stage for image files, in the order given; ImageError on the first bad file."""
    from pathlib import Path

    from .errors import UsageError

    for p in paths:
        if not Path(p).is_file():
            raise UsageError(f"image not found: {p}" if not Path(p).exists() else f"{p} is not a file")
    items = [Item(key=str(p), label=-1, path=Path(p)) for p in paths]
    parts: dict[str, list[np.ndarray]] = {s.name: [] for s in stages}
    for batch in encode_items(items, stages, lm, batch_size=32, workers=0, hash_items=False):
        if batch.failed:
            raise ImageError(batch.failed[0][1])
        for name, v in batch.vectors.items():
            parts[name].append(v)
    return {n: np.concatenate(v) for n, v in parts.items()}
