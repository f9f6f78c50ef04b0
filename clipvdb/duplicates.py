"""Near-duplicate images: stored images much nearer to another stored image than to any other, at one stage.

Within a split (two training images that are one photo), or across (`--across`: test images with a
training near-duplicate, the leaks that flatter a nearest-neighbour accuracy most). Each image of the
split scanned is searched for its nearest images of the other (the stage's default search, batched).
The default rule is a ratio test: a pair is kept when the image's nearest is at most
`config.DUPLICATE_RATIO` of the distance to the next farther image (identical copies skipped) and no
farther than the scan's median nearest distance; an identical image always. A plain distance
(`--threshold`) is the other rule. Scale-free, the ratio serves pixels and every model's stage; on
CIFAR-10's pixels a bare distance cannot tell a copy from a plain background (many pairs of blue sky
are as near as a photo and its re-encoded copy), the ratio can. The pairs replace the space's earlier
pairs for the same dataset and splits in duplicate_pairs; report_duplicates shows them.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psycopg
from PIL import Image, ImageDraw

from . import catalog, db, queries, reports
from .errors import UsageError
from .knn import SearchSettings
from .options import DuplicatesOptions
from .records import Record
from .retrieval import CAPTION, TILE
from .session import Session
from .stages import Stage
from .storage import StageRows

BATCH = 500  # queries per search statement
NEIGHBORS = 8  # searched per image: the nearest, and past its identical copies the next farther one


@dataclass
class Pair(Record):
    image_id: int
    split: str
    source: str
    class_name: str
    other_id: int
    other_split: str
    other_source: str
    other_class: str
    distance: float
    same_label: bool


@dataclass
class Duplicates(Record):
    """What a scan found: the pairs, nearest first, and how the threshold was chosen."""

    stage: str
    model: str
    dataset: str
    split: str  # the split scanned
    other_split: str  # the split searched for each image's nearest
    scanned: int
    threshold: float
    threshold_rule: str
    median_nearest: float
    pairs: list[Pair] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # pairs per "split-other_split"
    images_with_duplicate: int = 0
    different_label: int = 0
    seconds: float = 0.0

    @property
    def test_images_with_train_duplicate(self) -> int | None:
        return self.images_with_duplicate if (self.split, self.other_split) == ("test", "train") else None

    def as_dict(self) -> dict:
        out = super().as_dict()
        out["test_images_with_train_duplicate"] = self.test_images_with_train_duplicate
        return out


def find(session: Session, stage: Stage, options: DuplicatesOptions) -> Duplicates:
    """Scan `within` a split (pairs of its images) or `across` (test images against train)."""
    options.check()
    split, other = ("test", "train") if options.across else (options.within, options.within)
    assert split is not None and other is not None
    start = time.perf_counter()
    ds = session.dataset(options.dataset)
    with session.connection() as conn:
        space = session.require_space(conn, stage)
        ids, _, vectors = StageRows(stage, space.id, ds.id, split).read(conn, "scan for duplicates")
    searcher = session.searcher(stage, ds.id, other, SearchSettings(k=NEIGHBORS))
    # (image, its nearest other image, their distance, the distance to the nearest farther image)
    nearest: list[tuple[int, int, float, float]] = []
    with session.connection() as conn:
        for s in range(0, len(ids), BATCH):
            found, _ = searcher.search(conn, vectors[s : s + BATCH])
            for image_id, neighbors in zip(ids[s : s + BATCH], found, strict=True):
                others = [n for n in neighbors if n.image_id != image_id]
                if others:
                    d = float(others[0].distance)
                    farther = next((float(n.distance) for n in others if n.distance > d), float("inf"))
                    nearest.append((int(image_id), others[0].image_id, d, farther))
    if not nearest:
        raise UsageError(f"split {other!r} of {ds.name!r} has no other image at stage {stage.name} to compare with")
    median = float(np.median([n[2] for n in nearest]))
    if options.threshold is None:
        ratio = options.ratio
        rule = f"at most {ratio:g} x the distance to the next farther image, and the median nearest ({median:.4g})"
        limits = [0.0 if d == 0 else min(ratio * far, median) for _, _, d, far in nearest]
    else:
        rule, limits = "given", [options.threshold] * len(nearest)
    kept: dict[tuple[int, int], tuple[float, float]] = {}
    for (a, b, d, _), limit in zip(nearest, limits, strict=True):
        if d <= limit:
            key = (a, b) if options.across else (min(a, b), max(a, b))  # within a split: each pair once
            kept[key] = (d, limit)
    with session.connection() as conn:
        with conn.transaction():
            conn.execute(queries.DELETE_DUPLICATES, (space.id, ds.id, split, other))
            with conn.cursor() as cur:
                cur.executemany(
                    queries.INSERT_DUPLICATE,
                    [(space.id, ds.id, a, split, b, other, d, limit) for (a, b), (d, limit) in kept.items()],
                )
        rows = conn.execute(queries.DUPLICATE_PAIRS, (space.id, ds.id, split, other)).fetchall()
    pairs = [Pair(*r) for r in rows]
    return Duplicates(
        stage=stage.name,
        model=space.model,
        dataset=ds.name,
        split=split,
        other_split=other,
        scanned=len(ids),
        threshold=options.threshold if options.threshold is not None else median,
        threshold_rule=rule,
        median_nearest=median,
        pairs=pairs,
        counts=dict(Counter(f"{p.split}-{p.other_split}" for p in pairs)),
        images_with_duplicate=len(
            {p.image_id for p in pairs} | (set() if options.across else {p.other_id for p in pairs})
        ),
        different_label=sum(not p.same_label for p in pairs),
        seconds=time.perf_counter() - start,
    )


def gallery(session: Session, found: Duplicates, out: Path | str, *, limit: int = 60, per_row: int = 4) -> Path:
    """A PNG of the nearest `limit` pairs, `per_row` pairs a row: each image beside its duplicate,
    captioned with split, class and distance."""
    out = Path(out)
    shown = found.pairs[:limit]
    if not shown:
        raise UsageError("no pairs to draw: raise --threshold, or scan another split")
    rows = (len(shown) + per_row - 1) // per_row
    canvas = Image.new("RGB", (per_row * (2 * TILE + 8), rows * (TILE + 2 * CAPTION)), "white")
    draw = ImageDraw.Draw(canvas)
    with session.connection() as conn:
        for i, p in enumerate(shown):
            x, y = (i % per_row) * (2 * TILE + 8), (i // per_row) * (TILE + 2 * CAPTION)
            for j, (image_id, split, cls) in enumerate(
                ((p.image_id, p.split, p.class_name), (p.other_id, p.other_split, p.other_class))
            ):
                img = catalog.stored_image(conn, image_id)
                canvas.paste(img.resize((TILE - 4, TILE - 4), Image.Resampling.NEAREST), (x + j * TILE + 2, y + 2))
                draw.text(
                    (x + j * TILE + 3, y + TILE), f"{split} {cls[:9]}", fill="black" if p.same_label else "#b00020"
                )
            draw.text((x + 3, y + TILE + 12), f"d={p.distance:.3g}", fill="#555555")
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out


def leaked(conn: psycopg.Connection, dataset: int) -> set[int]:
    """Test images of the dataset that an --across scan (at any stage or model) found with a training
    near-duplicate."""
    return {r[0] for r in conn.execute(queries.LEAKED_IMAGES, (dataset,)).fetchall()}


def without_leaks(session: Session, run_id: int, model_no: int = 0) -> dict:
    """A run's accuracy per stage (of the run's model_no-th model) without the test images that an
    --across scan found with a training near-duplicate: {"leaked": n, "stages": {stage: {n, correct,
    accuracy_pct}}}."""
    with session.connection() as conn:
        dataset = db.scalar(conn, queries.DATASET_OF_RUN, (run_id,))
        found = leaked(conn, dataset)
        where = {"run": run_id, "model_no": model_no, "leaked": list(found)}
        counts = conn.execute(queries.ACCURACY_WITHOUT, where).fetchall()
    stages = {s: {"n": n, "correct": c, "accuracy_pct": round(100.0 * c / n, 2) if n else None} for s, n, c in counts}
    return {"leaked": len(found), "stages": stages}


def stored(session: Session, limit: int) -> tuple[list[dict], list[dict]]:
    """Per stored scan its counts, and the nearest `limit` pairs (report_duplicates)."""
    with session.connection() as conn:
        return reports.rows(conn, queries.WEB_DUPLICATE_SCANS), reports.rows(conn, queries.WEB_DUPLICATES, (limit,))
