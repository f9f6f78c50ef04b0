"""Datasets, class names, image rows and embedding spaces: the bookkeeping around the vectors."""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import psycopg
from PIL import Image

from . import db, queries
from .encoder import Encoder
from .errors import SourceError, StageError, UsageError
from .images import array_to_image, load_image
from .sources import Source, open_source
from .stages import STAGES, Stage

# The `first` stage uses no model: its vectors are the same whatever weights are loaded.
PIXELS_MODEL = "pixels"
PIXELS_WEIGHTS = "none"


@dataclass(frozen=True)
class Space:
    """An embedding space: one model's (one weights') vectors at one stage, stored in the stage's
    table beside other spaces' of any width, with its own index, projection and learned map. `stage`
    carries the space's width; stage first (pixels) is one space whatever the model."""

    id: int
    stage: Stage
    model: str = PIXELS_MODEL
    weights: str = PIXELS_WEIGHTS
    rows: int = 0

    @property
    def label(self) -> str:
        return self.stage.name if self.model == PIXELS_MODEL else f"{self.model} {self.stage.name}"


def stored_spaces(conn: psycopg.Connection, stages: Iterable[Stage] | None = None) -> list[Space]:
    """Every space holding rows (at `stages`, by name), in forward-pass order, then by id."""
    names = None if stages is None else {s.name for s in stages}
    return [
        Space(i, dataclasses.replace(STAGES[stage], dim=dim), model, weights, rows)
        for i, model, weights, stage, dim, rows in conn.execute(queries.STORED_SPACES).fetchall()
        if names is None or stage in names
    ]


def stored_space_datasets(conn: psycopg.Connection, stages: Iterable[Stage] | None = None) -> list[tuple[Space, int]]:
    """Every (space, dataset id) holding rows, the unit an ANN index covers: `stored_spaces`' order,
    then by dataset id; the space's `rows` are the dataset's."""
    rows: dict[int, list[tuple[int, int]]] = {}
    for space_id, dataset, n in conn.execute(queries.STORED_SPACE_DATASETS).fetchall():
        rows.setdefault(space_id, []).append((dataset, int(n)))
    return [
        (dataclasses.replace(sp, rows=n), dataset)
        for sp in stored_spaces(conn, stages)
        for dataset, n in rows.get(sp.id, [])
    ]


def space_identity(stage: Stage, encoder: Encoder | None) -> tuple[str, str]:
    if not stage.uses_clip:
        return PIXELS_MODEL, PIXELS_WEIGHTS
    if encoder is None:
        raise UsageError(f"stage {stage.name} needs a model")
    return encoder.name, encoder.weights


def get_or_create_space(conn: psycopg.Connection, stage: Stage, encoder: Encoder | None) -> Space:
    model, weights = space_identity(stage, encoder)
    row = conn.execute(
        queries.UPSERT_SPACE,
        (model, weights, stage.name, stage.dim),
    ).fetchone()
    assert row is not None  # INSERT ... ON CONFLICT DO UPDATE ... RETURNING always returns the row
    if row[1] != stage.dim:
        raise StageError(
            f"{model}/{weights} stage {stage.name} was stored as {row[1]}-d vectors and is now {stage.dim}-d; "
            "the model's stages changed under the same weights identity: store it under other weights"
        )
    return Space(row[0], stage, model, weights)


def find_space(conn: psycopg.Connection, stage: Stage, encoder: Encoder | None) -> int | None:
    model, weights = space_identity(stage, encoder)
    row = conn.execute(
        queries.FIND_SPACE,
        (model, weights, stage.name),
    ).fetchone()
    return row[0] if row else None


def stages_with_rows(conn: psycopg.Connection) -> list[str]:
    """Names of the stages that hold any vectors, in forward-pass order."""
    have = {r[0] for r in conn.execute(queries.STAGES_WITH_ROWS).fetchall()}
    return [n for n in STAGES if n in have]


def register_dataset(conn: psycopg.Connection, source: Source, name: str | None = None) -> int:
    """The dataset's id, created with its classes on first use; its classes must not change."""
    name = name or source.name
    row = conn.execute(
        queries.UPSERT_DATASET,
        (name, source.location),
    ).fetchone()
    assert row is not None  # INSERT ... ON CONFLICT DO UPDATE ... RETURNING always returns the row
    dataset_id = row[0]
    existing = conn.execute(queries.CLASS_NAMES, (dataset_id,)).fetchall()
    existing_names = [r[0] for r in existing]
    if not existing_names:
        with conn.cursor() as cur:
            cur.executemany(
                queries.INSERT_CLASS,
                [(dataset_id, i, c) for i, c in enumerate(source.classes)],
            )
    elif existing_names != source.classes:
        raise SourceError(
            f"dataset {name!r} already has classes {existing_names[:5]}...; {source.location} has "
            f"{source.classes[:5]}...; use --dataset NEWNAME for a different label set"
        )
    return dataset_id


def mark_changed(conn: psycopg.Connection, dataset: int) -> None:
    """The dataset's images changed now: the runs evaluated before are no longer current."""
    conn.execute(queries.MARK_CHANGED, (dataset,))


def dataset_id(conn: psycopg.Connection, name: str | None) -> int:
    """The named dataset, or the only one when no name is given."""
    if name:
        row = conn.execute(queries.DATASET_BY_NAME, (name,)).fetchone()
        if row is None:
            raise UsageError(f"no dataset named {name!r}; run 'clipvdb ingest --data SRC' first")
        return row[0]
    rows = conn.execute(queries.DATASETS).fetchall()
    if not rows:
        raise UsageError("the database holds no dataset yet; run 'clipvdb ingest --stage S --data SRC' first")
    if len(rows) > 1:
        names = ", ".join(r[1] for r in rows)
        raise UsageError(f"several datasets are stored ({names}); choose one with --dataset")
    return rows[0][0]


def dataset_names(conn: psycopg.Connection) -> dict[int, str]:
    """Every stored dataset's name by its id."""
    return dict(conn.execute(queries.DATASETS).fetchall())


def dataset_name(conn: psycopg.Connection, dataset: int) -> str:
    return db.scalar(conn, queries.DATASET_NAME, (dataset,))


def sample_images(conn: psycopg.Connection, n: int = 8) -> list[tuple[int, str]]:
    """(image id, class name) of the first `n` stored images outside the training split."""
    return [(r[0], r[1]) for r in conn.execute(queries.SAMPLE_IMAGES, (n,)).fetchall()]


def class_names(conn: psycopg.Connection, dataset: int) -> list[str]:
    rows = conn.execute(queries.CLASS_NAMES, (dataset,)).fetchall()
    return [r[0] for r in rows]


def upsert_images(
    conn: psycopg.Connection, dataset: int, split: str, rows: list[tuple[str, int, bytes]]
) -> dict[str, int]:
    """Insert (key, label, sha256) rows that are not stored yet; return key -> image id for all."""
    if not rows:
        return {}
    keys = [r[0] for r in rows]
    distributed = db.distributed(conn)
    if distributed:
        # Citus keeps no unique constraint on (dataset, split, source) (it must include the
        # distribution column): ingests of one dataset and split take turns per batch instead.
        conn.execute(queries.ADVISORY_XACT_LOCK, (zlib.crc32(f"clipvdb:images:{dataset}:{split}".encode()),))
    found = dict(_find_images(conn, dataset, split, keys))
    missing = [r for r in rows if r[0] not in found]
    if missing:
        conn.execute(
            queries.insert_images(on_conflict=not distributed),
            (dataset, split, [r[0] for r in missing], [r[1] for r in missing], [r[2] for r in missing]),
        )
        found.update(_find_images(conn, dataset, split, [r[0] for r in missing]))
    return found


def _find_images(conn: psycopg.Connection, dataset: int, split: str, keys: list[str]) -> list[tuple[str, int]]:
    return conn.execute(
        queries.FIND_IMAGES,
        (dataset, split, keys),
    ).fetchall()


def batch_image_ids(conn: psycopg.Connection, dataset: int, split: str, items, shas: list[bytes]) -> list[int]:
    """Image rows for one encoded batch (stored if new); their ids in the batch's order."""
    ids = upsert_images(conn, dataset, split, [(it.key, it.label, sha) for it, sha in zip(items, shas, strict=True)])
    return [ids[it.key] for it in items]


@lru_cache(maxsize=8)
def _source(location: str) -> Source:
    return open_source(location)


@lru_cache(maxsize=8)
def _cifar_index(location: str, split: str) -> dict[str, np.ndarray]:
    return {it.key: it.array for it in _source(location).items(split) if it.array is not None}


def stored_image(conn: psycopg.Connection, image_id: int) -> Image.Image:
    """The pixels of a stored image, re-read from its source (a file, or a CIFAR-10 record)."""
    row = conn.execute(queries.IMAGE_SOURCE, (image_id,)).fetchone()
    if row is None:
        raise UsageError(f"no stored image {image_id}")
    location, split, key = row
    root = Path(location)
    if root.is_dir() and (root / key).is_file():
        return load_image(root / key)
    if _source(location).kind == "cifar10-python":
        return array_to_image(_cifar_index(location, split)[key])
    raise UsageError(f"image {image_id} ({key}) is no longer readable at {location}")
