"""Projected indexes: a PCA basis fitted to a stage's stored vectors, and the projected copies.

With `clipvdb index --project D`, the stage's ANN index is built on projections_<stage>.proj, the
D-dimensional principal components of each stored embedding. A neighbor query takes a few dozen
candidates through that small index and orders them by the exact distance on the full embedding
(knn.py). On stage first (3,072 dims) the exact nearest neighbor of every CIFAR-10 test image
was among the 20 nearest by a 128-d projection (35.30 % = exact), at a twenty-fourth of the
per-distance cost; the default is 64-d, whose cheaper scans buy more ivfflat probes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import psycopg

from . import db, queries, storage
from .catalog import Space
from .errors import EmptyStageError, UsageError
from .linear_map import LinearMap, packed, unpacked
from .stages import MAX_VECTOR_INDEX_DIM
from .storage import StageRows

FIT_ROWS = 20_000  # rows sampled to fit the basis; the covariance of more changes little


@dataclass
class Projection(LinearMap):
    """A projected index's PCA basis: `matrix` holds the principal components, strongest first."""

    variance_kept: float


def fit(conn: psycopg.Connection, space: Space, dataset: int, dim: int, *, max_rows: int = FIT_ROWS) -> Projection:
    """Principal components of the space's vectors stored in the dataset (a repeatable sample above
    `max_rows`)."""
    stage = space.stage
    limit = min(stage.dim, MAX_VECTOR_INDEX_DIM)
    if not 1 <= dim <= limit:
        raise UsageError(f"--project must be between 1 and {limit} for stage {stage.name}; got {dim}")
    stored = db.scalar(conn, queries.rows_of_space_in(stage), (space.id, dataset))
    if stored == 0:
        raise EmptyStageError(f"stage {stage.name} has no rows to fit a projection to; run 'clipvdb ingest' first")
    percent = None if stored <= max_rows else 100.0 * max_rows / stored
    # binary: parsing the text form of 20,000 wide vectors takes the client longer than the fit
    rows = (
        db.numpy_vectors(conn.cursor(binary=True))
        .execute(queries.sample_embeddings(stage, percent), {"space": space.id, "dataset": dataset})
        .fetchall()
    )
    X = np.stack([r[0] for r in rows])
    mean = X.mean(axis=0)
    Xc = X - mean
    if len(X) < stage.dim:
        # fewer rows than dimensions: the eigenvectors of the rows' Gram matrix, mapped back (a thin
        # SVD of 2,000 x 3,072 took 10-15 s here; this takes well under one)
        kernel = (Xc @ Xc.T).astype(np.float64)
        total = float(np.trace(kernel))
        values, small = top_eigenvectors(kernel, min(dim, len(X)))
        values, small = values[:dim], small[:dim]
        scale = np.sqrt(np.clip(values, 1e-12, None))
        basis = (small @ Xc.astype(np.float64)) / scale[:, None]
        basis[values <= 1e-9 * max(total, 1e-30)] = 0.0
    else:
        gram = (Xc.T @ Xc).astype(np.float64)
        total = float(np.trace(gram))
        values, basis = top_eigenvectors(gram, dim)
    values = values.clip(min=0)
    components = np.zeros((dim, stage.dim), dtype=np.float32)  # rank below dim: zero rows
    components[: min(dim, len(basis))] = basis[:dim]
    kept = float(values[:dim].sum() / total) if total > 0 else 1.0
    return Projection(stage.name, mean.astype(np.float32), components, len(X), kept)


def top_eigenvectors(gram: np.ndarray, dim: int, *, iterations: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """The `dim` largest eigenvalues of a symmetric PSD matrix and their eigenvectors (rows),
    strongest first. For a few components of a wide matrix: subspace iteration with a Rayleigh-Ritz
    step (0.4 s for 128 of 3,072, against 2.7 s for numpy's full eigh; the subspace matched the full
    decomposition's to 0.999 after 6 iterations on CIFAR-10 pixels). Otherwise the full eigh."""
    n = gram.shape[0]
    k = dim + max(16, dim // 4)
    if 2 * k >= n:
        values, vectors = np.linalg.eigh(gram)
        return values[::-1], vectors[:, ::-1].T
    y = gram @ np.random.default_rng(0).standard_normal((n, k))
    for _ in range(iterations):
        y, _ = np.linalg.qr(y)
        y = gram @ y
    q, _ = np.linalg.qr(y)
    values, small = np.linalg.eigh(q.T @ gram @ q)
    return values[::-1], (q @ small)[:, ::-1].T


def save(conn: psycopg.Connection, space: Space, dataset: int, proj: Projection) -> storage.Mapped:
    """Store the basis and (re)write the projection of every row of the space in the dataset: the
    rows written and the distinct vectors among them.
    The caller (indexes.build) has dropped the projected index."""
    conn.execute(
        queries.SAVE_PROJECTION,
        (
            space.id,
            dataset,
            proj.dims,
            packed(proj.mean),
            packed(proj.matrix),
            proj.fitted_rows,
            proj.variance_kept,
        ),
    )
    stage = space.stage
    written = storage.map_all(
        conn, space, proj.apply, stage.projection_table, "proj", queries.PROJECTION_TYPE, dataset=dataset
    )
    db.recount(conn, stage.name)
    return written


def load(conn: psycopg.Connection, space: Space, dataset: int) -> Projection | None:
    """The basis of the projected index of the space's rows of the dataset, if it has one."""
    stage = space.stage
    row = conn.execute(queries.LOAD_PROJECTION, (space.id, dataset)).fetchone()
    if row is None:
        return None
    dims, mean, matrix, fitted, kept = row
    return Projection(stage.name, unpacked(mean, stage.dim), unpacked(matrix, dims, stage.dim), fitted, kept)


def remove(conn: psycopg.Connection, space: Space, dataset: int) -> None:
    """Forget the projection of the space's rows of the dataset (a full-width index replaces it;
    indexes.build has dropped the projected index)."""
    conn.execute(
        queries.delete_space_rows(space.stage.projection_table, by_dataset=True),
        {"space": space.id, "dataset": dataset},
    )
    conn.execute(queries.DELETE_PROJECTION, (space.id, dataset))
    db.recount(conn, space.stage.name)


def add(conn: psycopg.Connection, rows: StageRows, proj: Projection, image_ids: list[int], vectors: np.ndarray) -> None:
    """Projections of newly stored rows, with the stored basis (ingest, between refits)."""
    proj.add(conn, rows, rows.stage.projection_table, "proj", image_ids, vectors, queries.PROJECTION_TYPE)
