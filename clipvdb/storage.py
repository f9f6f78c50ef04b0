"""A stage's stored vectors: written by binary COPY, read back as numpy, mapped into side tables.

`StageRows` is one slice of a stage table, the rows of one embedding space, dataset and split: the
unit an ingest writes, a search reads and a fit learns from (what sqlite-utils' `Table` is to a
table). Projections and learned maps keep a mapped copy of every stored vector in a side table
(`map_all`, `StageRows.add_mapped`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import psycopg

from . import db, queries
from .errors import EmptyStageError
from .stages import Stage

if TYPE_CHECKING:
    from .catalog import Space

MAP_BATCH = 5_000  # rows per COPY when a whole stage is mapped again


@dataclass(frozen=True)
class StageRows:
    stage: Stage
    space: int
    dataset: int
    split: str

    @property
    def params(self) -> dict:
        return {"space": self.space, "dataset": self.dataset, "split": self.split}

    def keys(self, conn: psycopg.Connection) -> set[str]:
        """Source keys of the images stored in this slice."""
        return {r[0] for r in conn.execute(queries.stored_keys(self.stage), self.params).fetchall()}

    def copy(self, conn: psycopg.Connection, image_ids: list[int], vectors: np.ndarray) -> int:
        """Bulk-load one batch of vectors by binary COPY; returns rows added.

        COPY goes straight into the stage table inside a savepoint; if a concurrent ingest stored
        some of these rows first (unique violation), the batch goes again through a staging table
        and INSERT ... ON CONFLICT DO NOTHING."""
        stage, kind = self.stage, self.stage.column_type
        try:
            with conn.transaction():
                db.copy_rows(
                    conn,
                    queries.copy_stage(stage),
                    ["int4", "int8", "int4", "text", kind],
                    (
                        (self.space, i, self.dataset, self.split, db.as_param(v, kind))
                        for i, v in zip(image_ids, vectors, strict=True)
                    ),
                )
            return len(image_ids)
        except psycopg.Error as exc:
            if not db.unique_violation(exc):
                raise
        conn.execute(queries.create_staging(stage))
        db.copy_rows(
            conn,
            queries.copy_staging(stage),
            ["int8", kind],
            ((i, db.as_param(v, kind)) for i, v in zip(image_ids, vectors, strict=True)),
        )
        with conn.cursor() as cur:
            cur.execute(queries.insert_from_staging(stage), (self.space,))
            added = cur.rowcount
        conn.execute(queries.truncate(queries.staging_name(stage)))
        return added

    def read(self, conn: psycopg.Connection, purpose: str = "read") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Image ids, labels and vectors (float32), ordered by image id; `purpose` names the job in
        the error when there are none."""
        cur = db.numpy_vectors(conn.cursor(binary=True))
        rows = cur.execute(queries.stage_vectors(self.stage), self.params).fetchall()
        if not rows:
            raise EmptyStageError(
                f"stage {self.stage.name} has no {self.split} rows to {purpose}; run 'clipvdb ingest' first"
            )
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        labels = np.array([r[1] for r in rows], dtype=np.int64)
        return ids, labels, np.stack([r[2] for r in rows])

    def add_mapped(
        self,
        conn: psycopg.Connection,
        table: str,
        column: str,
        image_ids: list[int],
        mapped: np.ndarray,
        column_type: str = "vector",
    ) -> None:
        """Mapped vectors of newly stored rows (ingest, between refits of a projection or a learned map)."""
        conn.execute(
            queries.insert_mapped(table, column, column_type),
            {**self.params, "ids": list(image_ids), "mapped": list(mapped)},
        )


@dataclass(frozen=True)
class Mapped:
    """What `map_all` wrote: rows, and how many distinct stored vectors they held (identical rows,
    an image stored twice, count once)."""

    rows: int
    distinct: int


def map_all(
    conn: psycopg.Connection,
    space: Space,
    apply: Callable[[np.ndarray], np.ndarray],
    table: str,
    column: str,
    column_type: str = "vector",
    *,
    dataset: int | None = None,
) -> Mapped:
    """Every stored embedding of the space (of one dataset, with `dataset`: a projected index's),
    mapped by `apply`, into `table`.`column` (a projected index's or a learned map's table) in place
    of those rows there, streamed in batches."""
    written = 0
    seen: set[int] = set()
    by_dataset = dataset is not None
    params = {"space": space.id, "dataset": dataset}
    conn.execute(queries.delete_space_rows(table, by_dataset=by_dataset), params)
    with db.numpy_vectors(conn.cursor(name=f"clipvdb_map_{table}", binary=True)) as rows:
        rows.execute(queries.all_embeddings(space.stage, by_dataset=by_dataset), params)
        while batch := rows.fetchmany(MAP_BATCH):
            stored = np.stack([r[4] for r in batch])
            seen.update(hash(v.tobytes()) for v in stored)
            mapped = apply(stored)
            db.copy_rows(
                conn,
                queries.copy_mapped(table, column),
                ["int4", "int8", "int4", "text", column_type],
                ((r[0], r[1], r[2], r[3], db.as_param(m, column_type)) for r, m in zip(batch, mapped, strict=True)),
            )
            written += len(batch)
    return Mapped(written, len(seen))
