"""Evaluate: classify a labelled split, store every prediction, report accuracy and time per stage.

The study's perf_test.py options: --num, --batch-size, --display-freq. A run is stored as
'running' and only marked 'complete' at the end, so the report views never show half a run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import psycopg

from . import catalog, db, zeroshot
from .classify import SearchSettings, StageSearcher, vote
from .encoding import encode_items
from .errors import DatabaseError
from .models import LoadedModel
from .sources import Source
from .stages import Stage

ReportFn = Callable[[str], None]
ProgressFn = Callable[[int, int], None]


@dataclass
class StageTotals:
    n: int = 0
    correct: int = 0
    encode_ms: float = 0.0
    query_ms: float = 0.0

    @property
    def accuracy(self) -> float:
        return 100.0 * self.correct / self.n if self.n else 0.0


@dataclass
class EvalResult:
    run_id: int
    dataset: str
    split: str
    stages: dict[str, StageTotals] = field(default_factory=dict)
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {
            "run_id": self.run_id, "dataset": self.dataset, "split": self.split,
            "seconds": round(self.seconds, 3),
            "stages": {n: {"n": t.n, "correct": t.correct, "accuracy_pct": round(t.accuracy, 2),
                           "encode_s": round(t.encode_ms / 1000, 3), "query_s": round(t.query_ms / 1000, 3)}
                       for n, t in self.stages.items()},
            "failed": [{"item": k, "reason": r} for k, r in self.failed],
        }  # fmt: skip


def _store(conn: psycopg.Connection, rows: list[tuple]) -> None:
    with conn.cursor() as cur:
        with cur.copy(
            "COPY predictions (run_id, stage, image_id, predicted, true_label, distance, neighbor_id, "
            "encode_ms, query_ms) FROM STDIN WITH (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["int4", "text", "int8", "int4", "int4", "float8", "int8", "float8", "float8"])
            for r in rows:
                copy.write_row(r)


def evaluate(
    url: str,
    source: Source,
    stages: list[Stage],
    lm: LoadedModel | None,
    settings: SearchSettings,
    *,
    split: str = "test",
    against: str = "train",
    num: int | None = None,
    batch_size: int = 64,
    workers: int | None = None,
    display_freq: int = 10,
    dataset_name: str | None = None,
    template: str = "study",
    report: ReportFn | None = None,
    progress: ProgressFn | None = None,
) -> EvalResult:
    start = time.perf_counter()
    items = source.items(split)
    if num is not None:
        items = items[:num]
    with db.open_db(url) as conn:
        dataset = catalog.register_dataset(conn, source, dataset_name)
        classes = catalog.class_names(conn, dataset)
        searchers = {
            s.name: StageSearcher(conn, s, lm, dataset, against, settings) for s in stages if s.name != "origin"
        }
        text = zeroshot.text_embeddings(lm, classes, template) if any(s.name == "origin" for s in stages) else None
        params = {"exact": settings.exact, "probes": settings.probes, "ef_search": settings.ef_search,
                  "num": num, "batch_size": batch_size, "against": against, "template": template,
                  "index": {n: {"kind": s.index.kind, **s.index.params} for n, s in searchers.items()}}  # fmt: skip
        model = lm.name if lm is not None else catalog.PIXELS_MODEL
        weights = lm.weights if lm is not None else catalog.PIXELS_WEIGHTS
        run_id = conn.execute(
            """INSERT INTO eval_runs (dataset_id, split, stages, model, weights, k, params)
               VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id""",
            (dataset, split, [s.name for s in stages], model, weights, settings.k, json.dumps(params)),
        ).fetchone()[0]
        conn.commit()
        result = EvalResult(run_id, dataset_name or source.name, split, {s.name: StageTotals() for s in stages})
        try:
            done = 0
            if progress:
                progress(0, len(items))
            for b, batch in enumerate(encode_items(items, stages, lm, batch_size=batch_size, workers=workers)):
                result.failed.extend((it.key, reason) for it, reason in batch.failed)
                if batch.items:
                    image_ids = catalog.batch_image_ids(conn, dataset, split, batch.items, batch.sha)
                    rows = _predict_batch(run_id, batch, stages, searchers, text, image_ids, result)
                    _store(conn, rows)
                    conn.commit()
                done += len(batch.items) + len(batch.failed)
                if progress:
                    progress(len(batch.items) + len(batch.failed), len(items))
                if report and display_freq and (b + 1) % display_freq == 0:
                    report(f"[{done}/{len(items)}] " + "  ".join(
                        f"{n}: {t.accuracy:.2f}%" for n, t in result.stages.items()))  # fmt: skip
            conn.execute("UPDATE eval_runs SET status = 'complete', finished_at = now() WHERE id = %s", (run_id,))
            conn.commit()
        except BaseException as exc:
            _mark_failed(url, run_id)
            if isinstance(exc, psycopg.OperationalError):
                raise DatabaseError(
                    f"lost the database connection during evaluate run {run_id} ({db.first_line(exc)}); "
                    "the run is left out of the reports; run evaluate again"
                ) from exc
            raise
    result.seconds = time.perf_counter() - start
    return result


def _mark_failed(url: str, run_id: int) -> None:
    try:
        with db.connection(url, vector=False) as conn:
            conn.execute("UPDATE eval_runs SET status = 'failed', finished_at = now() WHERE id = %s", (run_id,))
            conn.commit()
    except Exception:
        pass  # the connection may be what failed; a 'running' run is excluded from the views too


def _predict_batch(run_id, batch, stages: list[Stage], searchers, text, image_ids, result: EvalResult) -> list[tuple]:
    n = len(batch.items)
    labels = np.array([it.label for it in batch.items])
    rows: list[tuple] = []
    for s in stages:
        encode_ms = batch.elapsed_ms.get(s.name, 0.0) / n
        vecs = batch.vectors[s.name]
        if s.name == "origin":
            t0 = time.perf_counter()
            pred, dist = zeroshot.classify(vecs, text)
            query_ms = (time.perf_counter() - t0) * 1000 / n
            neighbor = [None] * n
        else:
            neigh, batch_ms = searchers[s.name].search(vecs)
            query_ms = batch_ms / n
            voted = [vote(nb) for nb in neigh]
            pred = np.array([v[0] for v in voted])
            dist = np.array([v[1].distance for v in voted])
            neighbor = [v[1].image_id for v in voted]
        t = result.stages[s.name]
        t.n += n
        t.correct += int((pred == labels).sum())
        t.encode_ms += encode_ms * n
        t.query_ms += query_ms * n
        for i in range(n):
            rows.append((run_id, s.name, image_ids[i], int(pred[i]), int(labels[i]), float(dist[i]),
                         neighbor[i], encode_ms, query_ms))  # fmt: skip
    return rows
