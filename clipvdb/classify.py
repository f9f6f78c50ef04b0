"""Classify images by nearest stored neighbour at each stage (origin: CLIP zero-shot).

A batch of query vectors goes to PostgreSQL as one statement: the vectors travel as one binary
vector[] parameter (text format costs about 4 ms per 3,072-d vector to print and parse), are
unnested, and each is answered by a LATERAL `ORDER BY embedding <-> q LIMIT k` through the stage's
ANN index, unless `exact` orders by a function form that no index serves. On a projected index
(projection.py) the LATERAL takes candidates by the projected vector and orders them by the exact
distance on the full embedding.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import psycopg

from . import catalog, db, indexes, projection, zeroshot
from .encoding import encode_items
from .errors import EmptyStageError, ImageError, SpaceMismatchError, UsageError
from .models import LoadedModel, announce
from .sources import Item
from .stages import Stage

DEFAULT_EF_SEARCH = 100
DEFAULT_CANDIDATES = 20  # re-ranked per query on a projected index (at least 4 k)


@dataclass
class Neighbor:
    image_id: int
    label: int
    source: str
    distance: float


@dataclass
class Prediction:
    image: str
    stage: str
    predicted: int
    predicted_class: str
    distance: float | None
    encode_ms: float
    query_ms: float
    neighbors: list[dict] = field(default_factory=list)
    true_label: int | None = None

    def as_dict(self) -> dict:
        return asdict(self)


# metric -> (operator, exact function form that no index can serve)
METRICS = {
    "l2": ("<->", "l2_distance({a}, {b})"),
    "cosine": ("<=>", "cosine_distance({a}, {b})"),
    "ip": ("<#>", "(-inner_product({a}, {b}))"),
}


@dataclass
class SearchSettings:
    k: int = 1
    exact: bool = False
    probes: int | None = None
    ef_search: int | None = None
    metric: str = "l2"
    candidates: int | None = None


def vote(neigh: list[Neighbor]) -> tuple[int, Neighbor]:
    """Majority label among the neighbours; ties go to the label with the nearest neighbour."""
    counts = Counter(n.label for n in neigh)
    top = max(counts.values())
    nearest = {}
    for n in neigh:
        if counts[n.label] == top and (n.label not in nearest or n.distance < nearest[n.label].distance):
            nearest[n.label] = n
    best = min(nearest.values(), key=lambda n: (n.distance, n.label))
    return best.label, best


class StageSearcher:
    """Answers nearest-neighbour queries for one stage, space and (dataset, split)."""

    def __init__(
        self, conn: psycopg.Connection, stage: Stage, lm: LoadedModel | None, dataset: int,
        split: str, settings: SearchSettings,
    ):  # fmt: skip
        self.conn, self.stage, self.dataset, self.split, self.settings = conn, stage, dataset, split, settings
        self.space = catalog.find_space(conn, stage, lm)
        self.rows = 0
        if self.space is not None:
            self.rows = conn.execute(
                f"""SELECT count(*) FROM {stage.table} e
                    WHERE e.space_id = %s AND e.dataset_id = %s AND e.split = %s""",
                (self.space, dataset, split),
            ).fetchone()[0]
        if self.rows == 0:
            self._raise_empty(lm)
        self.index = indexes.info(conn, stage)
        self.pgvector = db._version_tuple(db.check_pgvector(conn))
        self.projection = self._projection()
        self.sql = self._sql()

    def _projection(self) -> projection.Projection | None:
        """The stage's projection, when its index is projected and covers every row searched (a
        load interrupted after dropping the index leaves rows unprojected: then search the full
        vectors)."""
        s = self.settings
        if s.exact or s.metric != "l2" or not self.index.params.get("project") or not self.index.exists:
            return None
        covered = self.conn.execute(
            f"""SELECT count(*) FROM {projection.table(self.stage)}
                WHERE space_id = %s AND dataset_id = %s AND split = %s""",
            (self.space, self.dataset, self.split),
        ).fetchone()[0]
        if covered != self.rows:
            announce(
                f"stage {self.stage.name}: {self.rows - covered} of {self.rows} rows have no projection (an "
                "interrupted load?); searching the full vectors, which is slow; "
                f"run 'clipvdb index --stage {self.stage.name}' to rebuild the index"
            )
            return None
        return projection.load(self.conn, self.stage)

    @property
    def candidates(self) -> int:
        return self.settings.candidates or max(DEFAULT_CANDIDATES, 4 * self.settings.k)

    def _raise_empty(self, lm: LoadedModel | None) -> None:
        model, weights = catalog.space_identity(self.stage, lm)
        others = [f"{m}/{w} ({n} rows)" for m, w, n in catalog.stored_spaces(self.conn, self.stage)
                  if (m, w) != (model, weights)]  # fmt: skip
        hint = f"; stored rows at this stage come from {', '.join(others)}" if others else ""
        flags = (
            ""
            if not self.stage.uses_clip
            else f" --model {model} --pretrained {weights.split(':')[0] if weights.startswith('random') else weights}"
        )
        raise EmptyStageError(
            f"stage {self.stage.name} has no {self.split} rows for {model}/{weights}{hint}; "
            f"run 'clipvdb ingest --stage {self.stage.name} --data SRC{flags}' first"
        )

    def _sql(self) -> str:
        table = self.stage.table
        if self.settings.metric not in METRICS:
            raise UsageError(f"unknown metric {self.settings.metric!r}; choose from {', '.join(METRICS)}")
        op, exact_fn = METRICS[self.settings.metric]
        q = self.stage.query_expr("q.v")
        if self.settings.exact:
            # The function form matches no index operator, so this is always an exact scan.
            order = exact_fn.format(a="e.embedding", b=q)
        else:
            order = f"e.embedding {op} {q}"
        if self.projection is not None:
            # candidates through the small projected index, then the exact distance on the full vectors
            return f"""
            SELECT q.ord, n.image_id, i.label, i.source, n.distance
            FROM unnest(%(vectors)b::vector[], %(projected)b::vector[]) WITH ORDINALITY AS q(v, p, ord)
            CROSS JOIN LATERAL (
                SELECT e.image_id, e.embedding {op} {q} AS distance
                FROM (
                    SELECT c.space_id, c.image_id FROM {projection.table(self.stage)} c
                    WHERE c.space_id = %(space)s AND c.dataset_id = %(dataset)s AND c.split = %(split)s
                    ORDER BY c.proj <-> (q.p)::vector({self.projection.dim})
                    LIMIT %(candidates)s
                ) c
                JOIN {table} e ON e.space_id = c.space_id AND e.image_id = c.image_id
                ORDER BY distance
                LIMIT %(k)s
            ) n
            JOIN images i ON i.id = n.image_id
            ORDER BY q.ord, n.distance"""
        return f"""
            SELECT q.ord, n.image_id, i.label, i.source, n.distance
            FROM unnest(%(vectors)b::vector[]) WITH ORDINALITY AS q(v, ord)
            CROSS JOIN LATERAL (
                SELECT e.image_id, e.embedding {op} {q} AS distance
                FROM {table} e
                WHERE e.space_id = %(space)s AND e.dataset_id = %(dataset)s AND e.split = %(split)s
                ORDER BY {order}
                LIMIT %(k)s
            ) n
            JOIN images i ON i.id = n.image_id
            ORDER BY q.ord, n.distance"""

    def _apply_settings(self) -> None:
        """Index settings for this transaction, in one round trip."""
        s = self.settings
        if s.exact:
            return
        settings: list[tuple[str, str]] = []
        if self.index.kind == "ivfflat":
            lists = int(self.index.params.get("lists", 1))
            settings.append(("ivfflat.probes", str(s.probes or indexes.default_probes(lists))))
        if self.index.kind == "hnsw":
            settings.append(("hnsw.ef_search", str(s.ef_search or DEFAULT_EF_SEARCH)))
        if self.pgvector >= (0, 8, 0):
            settings += [("ivfflat.iterative_scan", "relaxed_order"), ("hnsw.iterative_scan", "relaxed_order")]
        if settings:
            calls = ", ".join("set_config(%s, %s, true)" for _ in settings)
            self.conn.execute(f"SELECT {calls}", [x for pair in settings for x in pair])

    def check(self, vectors: np.ndarray) -> None:
        if vectors.ndim != 2 or vectors.shape[1] != self.stage.dim:
            raise SpaceMismatchError(
                f"query vectors have {vectors.shape[-1]} dimensions; stage {self.stage.name} stores "
                f"{self.stage.dim}-dimensional vectors"
            )

    def search(self, vectors: np.ndarray) -> tuple[list[list[Neighbor]], float]:
        """Neighbours for each query vector, and the wall ms of the one round trip."""
        self.check(vectors)
        start = time.perf_counter()
        params = {"vectors": list(vectors.astype(np.float32)), "space": self.space, "dataset": self.dataset,
                  "split": self.split, "k": self.settings.k}  # fmt: skip
        if self.projection is not None:
            params.update(projected=list(self.projection.apply(vectors)), candidates=self.candidates)
        with self.conn.transaction():
            self._apply_settings()
            rows = self.conn.execute(self.sql, params).fetchall()
        elapsed = (time.perf_counter() - start) * 1000
        out: list[list[Neighbor]] = [[] for _ in range(len(vectors))]
        for ord_, image_id, label, source, distance in rows:
            out[ord_ - 1].append(Neighbor(image_id, label, source, float(distance)))
        return out, elapsed


def classify_files(
    url: str,
    paths: list[str],
    stages: list[Stage],
    lm: LoadedModel | None,
    settings: SearchSettings,
    *,
    dataset_name: str | None = None,
    split: str = "train",
    template: str = "study",
) -> list[Prediction]:
    """Predictions for each image and stage, neighbour queries one image at a time."""
    for p in paths:
        path = Path(p)
        if not path.exists():
            raise UsageError(f"image not found: {p}")
        if path.is_dir():
            raise UsageError(f"{p} is a directory; pass image files (e.g. {p}/*.png)")
    if settings.k < 1:
        raise UsageError("--k must be at least 1")
    items = [Item(key=str(p), label=-1, path=Path(p)) for p in paths]
    with db.open_db(url) as conn:
        dataset = catalog.dataset_id(conn, dataset_name)
        classes = catalog.class_names(conn, dataset)
        searchers = {s.name: StageSearcher(conn, s, lm, dataset, split, settings) for s in stages if s.name != "origin"}
        conn.commit()
        text = zeroshot.text_embeddings(lm, classes, template) if any(s.name == "origin" for s in stages) else None
        results: list[Prediction] = []
        for batch in encode_items(items, stages, lm, batch_size=32, workers=0, hash_items=False):
            if batch.failed:
                raise ImageError(batch.failed[0][1])
            n = len(batch.items)
            for s in stages:
                encode_ms = batch.elapsed_ms.get(s.name, 0.0) / n
                vecs = batch.vectors[s.name]
                for row, item in enumerate(batch.items):
                    results.append(
                        _predict_one(item.key, s, vecs[row : row + 1], encode_ms, searchers, text, classes, settings.k)
                    )
    return results


def _predict_one(key, stage, vec, encode_ms, searchers, text, classes, k) -> Prediction:
    if stage.name == "origin":
        start = time.perf_counter()
        label, dist = zeroshot.classify(vec, text)
        query_ms = (time.perf_counter() - start) * 1000
        return Prediction(key, "origin", int(label[0]), classes[int(label[0])], float(dist[0]), encode_ms, query_ms)
    neigh, query_ms = searchers[stage.name].search(vec)
    label, best = vote(neigh[0])
    return Prediction(
        key, stage.name, label, classes[label], best.distance, encode_ms, query_ms,
        neighbors=[{"image_id": n.image_id, "label": n.label, "class": classes[n.label],
                    "source": n.source, "distance": n.distance} for n in neigh[0]],
    )  # fmt: skip
