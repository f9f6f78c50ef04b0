"""Datasets, class names, image rows and embedding spaces: the bookkeeping around the vectors."""

from __future__ import annotations

import zlib

import psycopg

from . import db, queries
from .encoders import Encoder
from .errors import SourceError, UsageError
from .sources import Source
from .stages import STAGES, Stage

# The `first` stage uses no model: its vectors are the same whatever weights are loaded.
PIXELS_MODEL = "pixels"
PIXELS_WEIGHTS = "none"


def space_identity(stage: Stage, lm: Encoder | None) -> tuple[str, str]:
    if not stage.uses_clip:
        return PIXELS_MODEL, PIXELS_WEIGHTS
    if lm is None:
        raise UsageError(f"stage {stage.name} needs a model")
    return lm.name, lm.weights


def get_or_create_space(conn: psycopg.Connection, stage: Stage, lm: Encoder | None) -> int:
    model, weights = space_identity(stage, lm)
    row = conn.execute(
        """INSERT INTO embedding_spaces (model, weights, stage, dim) VALUES (%s, %s, %s, %s)
           ON CONFLICT (model, weights, stage) DO UPDATE SET dim = embedding_spaces.dim
           RETURNING id, dim""",
        (model, weights, stage.name, stage.dim),
    ).fetchone()
    assert row is not None  # INSERT ... ON CONFLICT DO UPDATE ... RETURNING always returns the row
    return row[0]


def find_space(conn: psycopg.Connection, stage: Stage, lm: Encoder | None) -> int | None:
    model, weights = space_identity(stage, lm)
    row = conn.execute(
        "SELECT id FROM embedding_spaces WHERE model = %s AND weights = %s AND stage = %s",
        (model, weights, stage.name),
    ).fetchone()
    return row[0] if row else None


def stages_with_rows(conn: psycopg.Connection) -> list[str]:
    """Names of the stages that hold any vectors, in forward-pass order."""
    have = {r[0] for r in conn.execute(queries.stages_with_rows()).fetchall()}
    return [n for n in STAGES if n in have]


def stored_spaces(conn: psycopg.Connection, stage: Stage) -> list[tuple[str, str, int]]:
    """(model, weights, rows) for every space of this stage that holds rows."""
    return conn.execute(queries.space_rows(stage)).fetchall()


def register_dataset(conn: psycopg.Connection, source: Source, name: str | None = None) -> int:
    """The dataset's id, created with its classes on first use; its classes must not change."""
    name = name or source.name
    row = conn.execute(
        """INSERT INTO datasets (name, source) VALUES (%s, %s)
           ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name RETURNING id""",
        (name, source.location),
    ).fetchone()
    assert row is not None  # INSERT ... ON CONFLICT DO UPDATE ... RETURNING always returns the row
    dataset_id = row[0]
    existing = conn.execute("SELECT name FROM classes WHERE dataset_id = %s ORDER BY label", (dataset_id,)).fetchall()
    existing_names = [r[0] for r in existing]
    if not existing_names:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO classes (dataset_id, label, name) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                [(dataset_id, i, c) for i, c in enumerate(source.classes)],
            )
    elif existing_names != source.classes:
        raise SourceError(
            f"dataset {name!r} already has classes {existing_names[:5]}...; {source.location} has "
            f"{source.classes[:5]}...; use --dataset NEWNAME for a different label set"
        )
    return dataset_id


def dataset_id(conn: psycopg.Connection, name: str | None) -> int:
    """The named dataset, or the only one when no name is given."""
    if name:
        row = conn.execute("SELECT id FROM datasets WHERE name = %s", (name,)).fetchone()
        if row is None:
            raise UsageError(f"no dataset named {name!r}; run 'clipvdb ingest --data SRC' first")
        return row[0]
    rows = conn.execute("SELECT id, name FROM datasets ORDER BY id").fetchall()
    if not rows:
        raise UsageError("the database holds no dataset yet; run 'clipvdb ingest --stage S --data SRC' first")
    if len(rows) > 1:
        names = ", ".join(r[1] for r in rows)
        raise UsageError(f"several datasets are stored ({names}); choose one with --dataset")
    return rows[0][0]


def class_names(conn: psycopg.Connection, dataset: int) -> list[str]:
    rows = conn.execute("SELECT name FROM classes WHERE dataset_id = %s ORDER BY label", (dataset,)).fetchall()
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
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (zlib.crc32(f"clipvdb:images:{dataset}:{split}".encode()),))
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
        "SELECT source, id FROM images WHERE dataset_id = %s AND split = %s AND source = ANY(%s)",
        (dataset, split, keys),
    ).fetchall()


def batch_image_ids(conn: psycopg.Connection, dataset: int, split: str, items, shas: list[bytes]) -> list[int]:
    """Image rows for one encoded batch (stored if new); their ids in the batch's order."""
    ids = upsert_images(conn, dataset, split, [(it.key, it.label, sha) for it, sha in zip(items, shas, strict=True)])
    return [ids[it.key] for it in items]
