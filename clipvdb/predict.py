"""One prediction path, batched, for classify and evaluate: a stage's vectors to labels.

Stages first, second and third vote among their k nearest stored neighbors (knn.py); origin is
CLIP's zero-shot: the nearest class prompt by cosine distance (zeroshot.py), or by neighbors too
for an encoder whose outputs are not the data's classes (encoder.by_neighbors).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
import psycopg

from . import zeroshot
from .encoder import by_neighbors
from .knn import KnnSearcher, Neighbor, SearchSettings, vote
from .session import Session
from .stages import Stage


def predictors(
    session: Session,
    stages: list[Stage],
    settings: SearchSettings,
    where: tuple[int, str],
    classes: list[str],
    prompts: str,
) -> tuple[dict[str, KnnSearcher], np.ndarray | None]:
    """What answers each stage: a searcher over `where` (dataset id, stored split) for every stage
    classified by neighbors, and the class rows (`prompts`) for an origin answered zero-shot (None
    when no stage is)."""
    encoder = session.encoder_for(stages)
    by_knn = [s for s in stages if by_neighbors(s, encoder)]
    searchers = {s.name: session.searcher(s, *where, settings) for s in by_knn}
    zero_shot = encoder is not None and any(s.name == "origin" and s not in by_knn for s in stages)
    return searchers, zeroshot.text_embeddings(encoder, classes, prompts) if encoder and zero_shot else None


@dataclass
class Prediction:
    """One image at one stage. `distance` is to the nearest neighbor of the predicted label;
    `nearest_distance` to the nearest neighbor of any label (they differ only when k > 1).
    For origin both are the cosine distance to the best class prompt."""

    image: str
    stage: str
    predicted: int
    predicted_class: str
    distance: float | None
    nearest_distance: float | None
    encode_ms: float
    query_ms: float
    neighbors: list[dict] = field(default_factory=list)
    true_label: int | None = None

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class BatchPredictions:
    stage: str
    labels: np.ndarray
    distance: np.ndarray
    nearest_distance: np.ndarray
    neighbor_id: list[int | None]
    neighbors: list[list[Neighbor]]
    batch_ms: float


def predict_batch(
    conn: psycopg.Connection | None,
    stage: Stage,
    vectors: np.ndarray,
    searcher: KnnSearcher | None,
    text: np.ndarray | None,
) -> BatchPredictions:
    """Labels for a batch of one stage's vectors: one SQL statement, or (origin without a searcher:
    zero-shot) one product with the class rows `text`."""
    if searcher is None and stage.name == "origin":
        assert text is not None
        t0 = time.perf_counter()
        labels, dist = zeroshot.classify(vectors, text)
        ms = (time.perf_counter() - t0) * 1000
        return BatchPredictions(stage.name, labels, dist, dist, [None] * len(labels), [[] for _ in labels], ms)
    assert searcher is not None and conn is not None
    neigh, ms = searcher.search(conn, vectors)
    k, how = searcher.settings.k, searcher.settings.vote
    voted = [vote(nb[:k], how) for nb in neigh]
    return BatchPredictions(
        stage.name,
        labels=np.array([v[0] for v in voted], dtype=np.int64),
        distance=np.array([v[1].distance for v in voted]),
        nearest_distance=np.array([nb[0].distance for nb in neigh]),
        neighbor_id=[v[1].image_id for v in voted],
        neighbors=neigh,
        batch_ms=ms,
    )


def as_predictions(keys: list[str], b: BatchPredictions, classes: list[str], encode_ms: float) -> list[Prediction]:
    """Per-image Prediction objects (classify's output) from a batch."""
    n = len(keys)
    return [
        Prediction(
            key,
            b.stage,
            int(b.labels[i]),
            classes[int(b.labels[i])],
            float(b.distance[i]),
            float(b.nearest_distance[i]),
            encode_ms,
            b.batch_ms / n,
            neighbors=[
                {
                    "image_id": x.image_id,
                    "label": x.label,
                    "class": classes[x.label],
                    "source": x.source,
                    "distance": x.distance,
                }
                for x in b.neighbors[i]
            ],
        )
        for i, key in enumerate(keys)
    ]
