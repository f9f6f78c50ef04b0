"""kNN search over one stage's stored vectors: settings, set-up, the batched query, the vote.

A batch of query vectors goes to PostgreSQL as one statement (queries.knn): the vectors travel as
one binary vector[] parameter (text format costs about 4 ms per 3,072-d vector to print and parse),
are unnested, and each is answered by a LATERAL `ORDER BY embedding <-> q LIMIT k` through the
stage's ANN index, unless `exact` orders by a function form that no index serves. On a projected
index (projection.py) the LATERAL takes the rows of the nearest distinct projected vectors as
candidates (identical rows count once: queries.candidate_rows) and orders them by the exact
distance on the full embedding. k neighbors are k rows, an image stored twice counting twice, and
rows at equal distance are ordered by image id, on one node and on Citus alike.

On Citus, which refuses that LATERAL over a distributed table, the batch's vectors go by binary COPY
into a reference table and one statement runs the same LATERAL on every shard (`_search_shards`,
migrations 0011 and 0013).

A searcher's set-up is one statement: the space, the row counts (stage_counts, kept by triggers),
the recorded index and whether it exists. No table is scanned before the query (on Citus the
set-up also reads knn_anchors, one row per shard).
"""

from __future__ import annotations

import dataclasses
import math
import secrets
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg

from . import config, db, indexes, learned, projection, queries
from .catalog import Space
from .errors import DatabaseError, EmptyStageError, SpaceMismatchError, UsageError
from .learned import LearnedMap
from .stages import Stage

# How the k neighbors' labels become one label (`vote`):
# - majority: the most frequent label, ties to the label of the nearest neighbor;
# - weighted: each neighbor votes 1 / distance;
# - dino: each neighbor votes exp(cosine similarity / 0.07), DINO's weighted k-NN.
VOTES: tuple[str, ...] = ("majority", "weighted", "dino")
DINO_TEMPERATURE = 0.07


@dataclass(frozen=True)
class SearchSettings:
    """Everything that changes a kNN answer. `ks`: more k values to score from the same search
    (evaluate stores each query's max(k, *ks) nearest neighbors, and report_accuracy_by_k gives
    the accuracy at each k under each vote)."""

    k: int = config.DEFAULT_K
    exact: bool = False
    probes: int | None = None
    ef_search: int | None = None
    metric: queries.Metric = "l2"
    candidates: int | None = None
    learned: bool = False
    vote: str = "majority"
    ks: tuple[int, ...] = ()

    def check(self) -> None:
        if self.k < 1 or any(k < 1 for k in self.ks):
            raise UsageError("--k must be at least 1")
        if self.metric not in queries.METRICS:
            raise UsageError(f"unknown metric {self.metric!r}; choose from {', '.join(queries.METRICS)}")
        if self.vote not in VOTES:
            raise UsageError(f"unknown vote {self.vote!r}; choose from {', '.join(VOTES)}")

    @property
    def similarity(self) -> bool:
        """Whether each neighbor's cosine similarity is needed: for the dino vote, or to store the
        neighbors of an evaluate that scores several k."""
        return self.vote == "dino" or bool(self.ks)

    @property
    def depth(self) -> int:
        """Neighbors fetched per query: enough for k and every k in ks."""
        return max((self.k, *self.ks))

    @property
    def n_candidates(self) -> int:
        return self.candidates or max(config.DEFAULT_CANDIDATES, 4 * self.depth)


def settings_with(settings: SearchSettings | None, changes: dict[str, Any]) -> SearchSettings:
    """`settings` with the SearchSettings fields among a Store method's keywords (taken out of
    `changes`): Store.evaluate(exact=True) as it was called before settings=SearchSettings(exact=True),
    kept for a release with a warning."""
    given = {f.name: changes.pop(f.name) for f in dataclasses.fields(SearchSettings) if f.name in changes}
    for name in given:
        warnings.warn(
            f"{name}= is now settings=SearchSettings({name}=...); {name}= goes in the next release",
            DeprecationWarning,
            stacklevel=3,
        )
    return dataclasses.replace(settings or SearchSettings(), **given)


@dataclass
class Neighbor:
    image_id: int
    label: int
    source: str
    distance: float
    similarity: float = float("nan")  # cosine similarity to the query (the dino vote's)


def vote(neigh: list[Neighbor], how: str = "majority") -> tuple[int, Neighbor]:
    """The label the neighbors vote for, and the nearest neighbor of that label. Every neighbor
    votes, each copy of an image stored more than once included. Ties go to the label with the
    nearest neighbor, at equal distance to the lower label."""
    nearest: dict[int, Neighbor] = {}
    for n in neigh:
        if n.label not in nearest or n.distance < nearest[n.label].distance:
            nearest[n.label] = n
    score: dict[int, float] = {}
    for n in neigh:
        if how == "majority":
            weight = 1.0
        elif how == "weighted":
            weight = 1.0 / max(n.distance, 1e-12)
        else:
            weight = math.exp(n.similarity / DINO_TEMPERATURE)
        score[n.label] = score.get(n.label, 0.0) + weight
    top = max(score.values())
    best = min((nearest[label] for label, s in score.items() if s == top), key=lambda n: (n.distance, n.label))
    return best.label, best


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


class KnnSearcher:
    """Answers nearest-neighbor queries for one stage, space and (dataset, split)."""

    def __init__(
        self,
        conn: psycopg.Connection,
        stage: Stage,
        identity: tuple[str, str],
        dataset: int,
        split: str,
        settings: SearchSettings,
        *,
        iterative_scan: bool = True,
        notice: Callable[[str], None] | None = None,
    ):
        settings.check()
        self.iterative_scan = iterative_scan
        self.stage, self.dataset, self.split, self.settings = stage, dataset, split, settings
        model, weights = identity
        row = conn.execute(
            queries.SEARCHER_SETUP,
            {
                "model": model,
                "weights": weights,
                "stage": stage.name,
                "dataset": dataset,
                "split": split,
                "full_index": queries.index_name(stage, "", ""),
                "proj_index": queries.index_name(stage, "", "", projected=True),
            },
        ).fetchone()
        assert row is not None
        self.space, self.rows, projected_rows, kind, params, full_exists, proj_exists, self.distributed = row
        if self.space is None or self.rows == 0:
            raise_empty(conn, stage, identity, split)
        space = Space(self.space, stage, model, weights)
        self.learned: LearnedMap | None = None
        if settings.learned:
            self._set_up_learned(conn, space)
            return
        default_kind, default_params = indexes.default_index(stage, self.rows)
        self.index_kind: str = kind or default_kind
        self.index_params: dict = dict(params if kind else {**default_params, "metric": "l2"})
        projected = bool(self.index_params.get("project"))
        self.index_exists = bool(proj_exists if projected else full_exists)
        self.projection: projection.Projection | None = None
        if projected and self.index_exists and not settings.exact and settings.metric == "l2":
            # A load interrupted after dropping the index leaves rows unprojected: then the full
            # vectors are searched, and the user is told how to rebuild.
            if projected_rows != self.rows:
                (notice or _stderr)(
                    f"stage {stage.name}: {self.rows - projected_rows} of {self.rows} rows have no projection (an "
                    "interrupted load?); searching the full vectors, which is slow; "
                    f"run 'clipvdb index --stage {stage.name}' to rebuild the index"
                )
            else:
                self.projection = projection.load(conn, space, dataset)
        projected_dim = self.projection.dims if self.projection is not None else None
        if self.distributed:
            self._set_up_shards(conn, projected_dim=projected_dim)
        else:
            self.sql = queries.knn(
                stage,
                settings.metric,
                exact=settings.exact,
                projected_dim=projected_dim,
                similarity=settings.similarity,
            )

    def _set_up_shards(self, conn: psycopg.Connection, **dims: int | None) -> None:
        """On Citus: the per-shard statement and the anchors (knn_anchors: one id value per shard of
        images, which routes a search task to that shard). Anchors that miss a shard or share one
        (the shards were re-cut) are replaced, in the caller's transaction: Store commits it."""
        s = self.settings
        shards = db.shard_count(conn, "images")
        self.shard_sql, self.shard_tables = queries.knn_shard(
            self.stage, s.metric, exact=s.exact, similarity=s.similarity, shards=shards, **dims
        )
        for attempt in range(2):
            self.anchors = [r[0] for r in conn.execute(queries.KNN_ANCHORS).fetchall()]
            reached = db.scalar(conn, queries.KNN_ANCHOR_SHARDS, (self.anchors,))
            if len(self.anchors) == reached == shards:
                return
            if attempt == 0:
                with conn.transaction():
                    conn.execute(queries.CLEAR_KNN_ANCHORS)
                    conn.execute(queries.FILL_KNN_ANCHORS)
        raise DatabaseError(
            f"{len(self.anchors)} search anchors reach {reached} of the {shards} shards of images after a refill; "
            "'clipvdb db nodes status' shows which shards have no placement"
        )

    def _set_up_learned(self, conn: psycopg.Connection, space: Space) -> None:
        """Search the space's learned space (learned.py): its map, its table and ivfflat index."""
        if self.settings.metric != "l2":
            raise UsageError("--learned searches by L2 distance in the learned space; drop --metric")
        lmap = self.learned = learned.require(conn, space)
        covered = db.scalar(
            conn,
            queries.learned_count(self.stage),
            {"space": self.space, "dataset": self.dataset, "split": self.split},
        )
        if covered != self.rows:
            raise UsageError(
                f"the learned map of stage {self.stage.name} covers {covered} of {self.rows} rows; "
                f"run 'clipvdb learn --stage {self.stage.name}' again"
            )
        self.index_kind = "ivfflat"
        self.index_params = {"lists": int(lmap.params.get("lists", 1)), "shards": int(lmap.params.get("shards", 1))}
        self.index_exists, self.projection = True, None
        s = self.settings
        if self.distributed:
            self._set_up_shards(conn, learned_dim=lmap.dims)
        else:
            self.sql = queries.knn(self.stage, exact=s.exact, learned_dim=lmap.dims, similarity=s.similarity)

    def index_settings(self) -> list[tuple[str, str]]:
        s = self.settings
        if s.exact:
            return []
        out: list[tuple[str, str]] = []
        if self.index_kind == "ivfflat":
            lists = int(self.index_params.get("lists", 1))
            projected = self.projection is not None or self.learned is not None
            # lists are per index (per shard on Citus); the floor of scanned rows is for the whole
            # search, so that the shards together scan what one index would
            shards = int(self.index_params.get("shards", 1))
            probes = s.probes or indexes.default_probes(lists, projected=projected, rows=self.rows, shards=shards)
            out.append(("ivfflat.probes", str(probes)))
        if self.index_kind == "hnsw":
            ef_search = s.ef_search or self.index_params.get("ef_search") or config.DEFAULT_EF_SEARCH
            out.append(("hnsw.ef_search", str(ef_search)))
        if self.iterative_scan:  # pgvector >= 0.8: keep scanning until k rows pass the filter
            out += [("ivfflat.iterative_scan", "relaxed_order"), ("hnsw.iterative_scan", "relaxed_order")]
        return out

    def check(self, vectors: np.ndarray) -> None:
        if vectors.ndim != 2 or vectors.shape[1] != self.stage.dim:
            raise SpaceMismatchError(
                f"query vectors have {vectors.shape[-1]} dimensions; stage {self.stage.name} stores "
                f"{self.stage.dim}-dimensional vectors"
            )

    def query_params(self, vectors: np.ndarray) -> dict:
        """The parameters of a batch's search: the query vectors (or their images under a learned
        map), their projections for a projected index, and where to look."""
        self.check(vectors)
        # typed as the stage stores them: a vector query against a halfvec stage would be cast again
        # for every row compared (an exact scan of stage first: 50,000 casts per query)
        typed = [db.as_param(v, self.stage.column_type) for v in vectors.astype(np.float32)]
        params = {
            "vectors": typed,
            "space": self.space,
            "dataset": self.dataset,
            "split": self.split,
            "k": self.settings.depth,
        }
        if self.learned is not None:
            params = {**params, "projected": list(self.learned.apply(vectors))}
            del params["vectors"]
        elif self.projection is not None:
            params.update(projected=list(self.projection.apply(vectors)), candidates=self.settings.n_candidates)
        return params

    def search(self, conn: psycopg.Connection, vectors: np.ndarray) -> tuple[list[list[Neighbor]], float]:
        """Neighbors for each query vector, and the wall ms of the one statement (with its settings)."""
        params = self.query_params(vectors)
        settings = self.index_settings()
        start = time.perf_counter()
        out: list[list[Neighbor]] = [[] for _ in range(len(vectors))]
        if self.distributed:
            self._search_shards(conn, params, settings, out)
            return out, (time.perf_counter() - start) * 1000
        with conn.transaction():
            if settings:
                conn.execute(queries.set_configs(len(settings)), [x for pair in settings for x in pair])
            # never a prepared statement: after five runs PostgreSQL may switch to a generic plan, which
            # cannot see the LIMIT values and was measured 3.5x slower per batch (160 -> 550 ms)
            for row in conn.execute(self.sql, params, prepare=False):
                sim = float(row[5]) if len(row) > 5 and row[5] is not None else float("nan")
                out[row[0] - 1].append(Neighbor(row[1], row[2], row[3], float(row[4]), sim))
        return out, (time.perf_counter() - start) * 1000

    def _shard_candidates(self, candidates: int) -> int:
        """Distinct candidates each shard re-ranks: its share of the whole search's, at least k. A
        shard ranks its own rows only, so a row's rank there is about its rank over every row
        divided by the shards: the shards' shares together re-rank what one node would."""
        shards = max(1, len(self.anchors))
        return max(self.settings.depth, math.ceil(candidates / shards)) if candidates else 0

    def copy_batch(self, conn: psycopg.Connection, batch: int, params: dict) -> None:
        """A batch's query vectors into knn_queries (on Citus), as `query_params` made them: the
        vector in the stage's type, or the learned image, and the projection."""
        full: list = params.get("vectors") or []
        mapped: list = params.get("projected") or []
        learned_space = self.learned is not None
        kind = self.stage.column_type
        db.copy_rows(
            conn,
            queries.COPY_KNN_QUERIES,
            ["int8", "int4", "vector", "halfvec", "halfvec"],
            (
                (
                    batch,
                    i + 1,
                    mapped[i] if learned_space else (full[i] if kind == "vector" else None),
                    None if learned_space or kind == "vector" else full[i],
                    db.as_param(mapped[i], "halfvec") if mapped and not learned_space else None,
                )
                for i in range(max(len(full), len(mapped)))
            ),
        )

    def call_args(self, batch: int, params: dict, settings: list[tuple[str, str]]) -> tuple:
        """The arguments of clipvdb_knn_shard (and clipvdb_knn_shard_plan) after the anchor."""
        return (
            batch,
            self.shard_sql,
            self.shard_tables,
            params["k"],
            self._shard_candidates(params.get("candidates", 0)),
            self.space,
            self.dataset,
            self.split,
            [x for pair in settings for x in pair],
        )

    def _search_shards(
        self,
        conn: psycopg.Connection,
        params: dict,
        settings: list[tuple[str, str]],
        out: list[list[Neighbor]],
    ) -> None:
        """On Citus: the batch's vectors by binary COPY into knn_queries (a reference table, so a
        copy on every worker), then one statement that runs the single node's LATERAL top-k on
        every shard (queries.KNN_SHARDS); the shards' top k merged here by (distance, image id),
        the single node's order. The transaction rolls back: the query rows never outlive the
        search."""
        batch = secrets.randbits(62)
        with conn.transaction(force_rollback=True):
            self.copy_batch(conn, batch, params)
            rows = conn.execute(queries.KNN_SHARDS, self.call_args(batch, params, settings), prepare=False).fetchall()
        for ord_, image_id, label, source, dist, sim in sorted(rows, key=lambda r: (r[0], r[4], r[1])):
            if len(out[ord_ - 1]) < params["k"]:
                out[ord_ - 1].append(
                    Neighbor(image_id, label, source, float(dist), float(sim) if sim is not None else float("nan"))
                )


def raise_empty(conn: psycopg.Connection, stage: Stage, identity: tuple[str, str], split: str) -> None:
    model, weights = identity
    others = [
        f"{m}/{w} ({n} rows)"
        for m, w, n in conn.execute(queries.space_rows(stage)).fetchall()
        if (m, w) != (model, weights)
    ]
    hint = f"; stored rows at this stage come from {', '.join(others)}" if others else ""
    if not stage.uses_clip:
        flags = ""
    else:
        flags = f" --model {model} --pretrained {weights.split(':')[0] if weights.startswith('random') else weights}"
    raise EmptyStageError(
        f"stage {stage.name} has no {split} rows for {model}/{weights}{hint}; "
        f"run 'clipvdb ingest --stage {stage.name} --data SRC{flags}' first"
    )
