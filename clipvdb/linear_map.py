"""A stored linear map of one stage's vectors, x -> (x - mean) @ matrix.T, kept with the mapped copy
of every stored row in a table of its own. Two kinds: the PCA basis of a projected index
(projection.py; copies in projections_<stage>.proj) and a learned metric (learned.py; copies in
learned_<stage>.vec). Both are stored as little-endian float32 bytes."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import psycopg
from threadpoolctl import ThreadpoolController

from .storage import StageRows


@dataclass
class LinearMap:
    stage: str
    mean: np.ndarray  # (stage dim,)
    matrix: np.ndarray  # (dims, stage dim), strongest direction first
    fitted_rows: int

    @property
    def dims(self) -> int:
        return int(self.matrix.shape[0])

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        # One BLAS thread: a threaded product this small leaves OpenBLAS's workers spinning for about
        # 0.1 s after each call, taking a core from the server answering the query (BENCHMARKS.md,
        # item 1: 10 CPU seconds per 100 batches, and the server's own CPU time rose by 60 %).
        with one_blas_thread():
            return ((np.asarray(vectors, dtype=np.float32) - self.mean) @ self.matrix.T).astype(np.float32)

    def add(
        self,
        conn: psycopg.Connection,
        rows: StageRows,
        table: str,
        column: str,
        image_ids: list[int],
        vectors: np.ndarray,
        column_type: str = "vector",
    ) -> None:
        """The mapped copies of newly stored rows, with the stored map (ingest, between fits)."""
        rows.add_mapped(conn, table, column, image_ids, self.apply(vectors), column_type)


def packed(a: np.ndarray) -> bytes:
    """An array as the stored form: little-endian float32 bytes."""
    return np.asarray(a).astype("<f4").tobytes()


def unpacked(data: bytes, *shape: int) -> np.ndarray:
    """The stored form back as a float32 array of `shape`."""
    return np.frombuffer(data, dtype="<f4").astype(np.float32).reshape(shape)


def one_blas_thread():
    """A context in which BLAS runs on one thread (why: LinearMap.apply)."""
    return _blas().limit(limits=1, user_api="blas")


@functools.cache
def _blas() -> ThreadpoolController:
    return ThreadpoolController()
