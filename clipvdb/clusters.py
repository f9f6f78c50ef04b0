"""Clustering a stage's stored vectors: k-means, agglomerative or DBSCAN, stored in SQL.

scikit-learn does the fitting: one well-kept library for all three methods (k-means with Lloyd's
algorithm, Ward or other linkages, DBSCAN) and the reference scores the views are tested against.
faiss would be faster for k-means at scale, but offers neither of the other two. Agglomerative
clustering and DBSCAN compare every pair of points (memory and time grow with n^2), so above
`PAIRWISE_LIMIT` rows they need `sample`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psycopg
from PIL import Image, ImageDraw

from . import catalog, db, queries
from .errors import UsageError
from .options import CLUSTER_METHODS, ClusterOptions
from .session import Session
from .stages import Stage
from .storage import StageRows

PAIRWISE_LIMIT = 20_000


@dataclass
class Clustering:
    id: int
    stage: str
    method: str
    params: dict
    n: int
    n_clusters: int
    n_noise: int
    fit_seconds: float
    purity: float | None = None
    adjusted_rand_index: float | None = None
    normalized_mutual_info: float | None = None
    sizes: list[int] = field(default_factory=list)


def fit_labels(X: np.ndarray, method: str, params: dict) -> np.ndarray:
    """Cluster numbers from 0 per row (-1: DBSCAN noise)."""
    if method == "kmeans":
        from sklearn.cluster import KMeans  # scikit-learn: only when clustering

        k = int(params["k"])
        if k > len(X):
            raise UsageError(f"--k {k} is larger than the {len(X):,} stored rows; choose --k {len(X)} or fewer")
        model = KMeans(n_clusters=k, n_init=1, random_state=int(params.get("seed", 0)), algorithm="lloyd")
        return model.fit_predict(X)
    if len(X) > PAIRWISE_LIMIT:
        raise UsageError(
            f"{method} compares every pair of points: {len(X):,} rows is over {PAIRWISE_LIMIT:,}; "
            f"use --sample {PAIRWISE_LIMIT} (or fewer), or --method kmeans"
        )
    if method == "agglomerative":
        from sklearn.cluster import AgglomerativeClustering  # scikit-learn: only when clustering

        k = int(params["k"])
        if k > len(X):
            raise UsageError(f"--k {k} is larger than the {len(X):,} stored rows; choose --k {len(X)} or fewer")
        return AgglomerativeClustering(n_clusters=k, linkage=params.get("linkage", "ward")).fit_predict(X)
    if method == "dbscan":
        from sklearn.cluster import DBSCAN  # scikit-learn: only when clustering

        labels = DBSCAN(eps=float(params["eps"]), min_samples=int(params["min_samples"])).fit_predict(X)
        if (labels < 0).all():
            raise UsageError(
                f"DBSCAN with eps {params['eps']} and min_samples {params['min_samples']} found only noise in "
                f"{len(X):,} rows; raise --eps or lower --min-samples (nothing was stored)"
            )
        return labels
    raise UsageError(f"unknown method {method!r}; choose from {', '.join(CLUSTER_METHODS)}")


def centres_of(X: np.ndarray, labels: np.ndarray) -> dict[int, np.ndarray]:
    return {int(c): X[labels == c].mean(axis=0) for c in np.unique(labels) if c >= 0}


def cluster(session: Session, stage: Stage, options: ClusterOptions) -> Clustering:
    """Cluster one stage's stored vectors (the session's space, one dataset and split) and store the
    clustering; returns it with its purity, adjusted Rand index and NMI against the labels."""
    options.check()
    ds = session.dataset(options.dataset)
    with session.connection() as conn:
        space = session.require_space(conn, stage)
        cid = fit(conn, stage, space.id, ds.id, options.split, options.method, options.params(), sample=options.sample)
        return read(conn, cid)[0]


def fit(
    conn: psycopg.Connection,
    stage: Stage,
    space: int,
    dataset: int,
    split: str,
    method: str,
    params: dict,
    *,
    sample: int | None = None,
) -> int:
    """Fit and store a clustering; returns its id. Commits."""
    if method not in CLUSTER_METHODS:
        raise UsageError(f"unknown method {method!r}; choose from {', '.join(CLUSTER_METHODS)}")
    ids, _, X = StageRows(stage, space, dataset, split).read(conn, "cluster")
    conn.commit()
    db.one_connection_per_node(conn)  # the rows below go to a reference table and its children
    if sample is not None and sample < len(X):
        keep = np.sort(np.random.default_rng(int(params.get("seed", 0))).choice(len(X), sample, replace=False))
        ids, X = ids[keep], X[keep]
        params = {**params, "sample": sample}
    start = time.perf_counter()
    labels = fit_labels(X, method, params)
    seconds = time.perf_counter() - start
    centres = centres_of(X, labels)
    distance = np.full(len(X), np.nan)
    for c, centre in centres.items():
        member = labels == c
        distance[member] = np.linalg.norm(X[member] - centre, axis=1)
    clustering_id = db.scalar(
        conn,
        queries.INSERT_CLUSTERING,
        (stage.name, space, dataset, split, method, json.dumps(params), len(centres), int((labels < 0).sum()), seconds),
    )
    db.copy_rows(
        conn,
        queries.COPY_CLUSTER_MEMBERS,
        ["int4", "int8", "int4", "float8"],
        (
            (clustering_id, int(i), int(c), None if np.isnan(d) else float(d))
            for i, c, d in zip(ids, labels, distance, strict=True)
        ),
    )
    db.copy_rows(
        conn,
        queries.copy_centres(stage),
        ["int4", "int4", stage.column_type],
        ((clustering_id, c, db.as_param(v.astype(np.float32), stage.column_type)) for c, v in sorted(centres.items())),
    )
    conn.commit()
    return clustering_id


def read(conn: psycopg.Connection, clustering_id: int | None = None) -> list[Clustering]:
    """Stored clusterings with their scores (report_cluster_purity), newest first."""
    rows = conn.execute(
        queries.clusterings(one=clustering_id is not None), (clustering_id,) if clustering_id is not None else ()
    ).fetchall()
    conn.rollback()
    return [
        Clustering(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7] or 0.0, r[8], r[9], r[10], list(r[11] or []))
        for r in rows
    ]


TILE = 64
LABEL_W = 170


def grid(conn: psycopg.Connection, clustering_id: int, out: Path, per_cluster: int = 8) -> Path:
    """One PNG: a row per cluster (largest first), the member images nearest its centre, the row
    labelled with the majority class and purity."""
    found = conn.execute(queries.CLUSTERING_EXISTS, (clustering_id,)).fetchone()
    if found is None:
        raise UsageError(f"no clustering {clustering_id}; 'clipvdb cluster list' shows the stored ones")
    classes = conn.execute(queries.CLUSTER_CLASSES, (clustering_id,)).fetchall()
    canvas = Image.new("RGB", (LABEL_W + per_cluster * TILE, max(1, len(classes)) * TILE), "white")
    draw = ImageDraw.Draw(canvas)
    for row, (cluster, size, majority, purity) in enumerate(classes):
        y = row * TILE
        draw.text((4, y + 8), f"cluster {cluster} ({size})", fill="black")
        draw.text((4, y + 24), f"{majority[:16]}", fill="black")
        draw.text((4, y + 40), f"purity {purity:.2f}", fill="#555555")
        nearest = conn.execute(queries.NEAREST_MEMBERS, (clustering_id, cluster, per_cluster)).fetchall()
        for col, (image_id,) in enumerate(nearest):
            img = catalog.stored_image(conn, image_id).resize((TILE - 2, TILE - 2), Image.Resampling.NEAREST)
            canvas.paste(img, (LABEL_W + col * TILE + 1, y + 1))
    conn.rollback()
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out
