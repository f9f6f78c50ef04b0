"""clipvdb: classify images by nearest-neighbor search over per-stage CLIP embeddings in PostgreSQL.

    import clipvdb
    store = clipvdb.Store()
    store.ingest("cifar10/", stages="first", split="train")
    preds = store.classify(["cat.png"], stage="first")

Names are imported on first use, so `import clipvdb` (and the CLI's --help) stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Store": "store",
    "Session": "session",
    "Dataset": "session",
    "IngestOptions": "options",
    "EvaluateOptions": "options",
    "TrainOptions": "options",
    "ClusterOptions": "options",
    "IndexOptions": "options",
    "LearnOptions": "options",
    "Watch": "options",
    "SearchSettings": "knn",
    "KnnSearcher": "knn",
    "Prediction": "predict",
    "EvalRun": "evaluate",
    "IngestResult": "ingest",
    "LoadResult": "ingest",
    "IndexInfo": "indexes",
    "Hit": "retrieval",
    "Grid": "retrieval",
    "Clustering": "clusters",
    "LearnedMap": "learned",
    "ExperimentResult": "experiment",
    "Stage": "stages",
    "STAGES": "stages",
    "TinyEncoder": "encoder",
    "ClipvdbError": "errors",
}
__all__ = [
    "__version__",
    "Store",
    "Session",
    "Dataset",
    "IngestOptions",
    "EvaluateOptions",
    "TrainOptions",
    "ClusterOptions",
    "IndexOptions",
    "LearnOptions",
    "Watch",
    "SearchSettings",
    "KnnSearcher",
    "Prediction",
    "EvalRun",
    "IngestResult",
    "LoadResult",
    "IndexInfo",
    "Hit",
    "Grid",
    "Clustering",
    "LearnedMap",
    "ExperimentResult",
    "Stage",
    "STAGES",
    "TinyEncoder",
    "ClipvdbError",
]

if TYPE_CHECKING:
    from .clusters import Clustering
    from .encoder import TinyEncoder
    from .errors import ClipvdbError
    from .evaluate import EvalRun
    from .experiment import ExperimentResult
    from .indexes import IndexInfo
    from .ingest import IngestResult, LoadResult
    from .knn import KnnSearcher, SearchSettings
    from .learned import LearnedMap
    from .options import (
        ClusterOptions,
        EvaluateOptions,
        IndexOptions,
        IngestOptions,
        LearnOptions,
        TrainOptions,
        Watch,
    )
    from .predict import Prediction
    from .retrieval import Grid, Hit
    from .session import Dataset, Session
    from .stages import STAGES, Stage
    from .store import Store


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'clipvdb' has no attribute {name!r}")
