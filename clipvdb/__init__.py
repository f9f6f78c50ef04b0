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

__version__ = "0.2.0"

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
    "ClassifyOptions": "options",
    "ExperimentOptions": "options",
    "LoadOptions": "options",
    "SessionOptions": "options",
    "Report": "reports",
    "RunSummary": "reports",
    "RunDetail": "reports",
    "Status": "reports",
    "DataOverview": "reports",
    "Sample": "reports",
    "ExperimentRow": "reports",
    "ClusterRow": "reports",
    "NodesStatus": "nodes",
    "Rebalance": "nodes",
    "Record": "records",
    "SearchSettings": "knn",
    "KnnSearcher": "knn",
    "Prediction": "predict",
    "EvalRun": "evaluate",
    "IngestResult": "ingest",
    "Edit": "edits",
    "DatasetInfo": "edits",
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
    "ClassifyOptions",
    "ExperimentOptions",
    "LoadOptions",
    "SessionOptions",
    "Report",
    "RunSummary",
    "RunDetail",
    "Status",
    "DataOverview",
    "Sample",
    "ExperimentRow",
    "ClusterRow",
    "NodesStatus",
    "Rebalance",
    "Record",
    "SearchSettings",
    "KnnSearcher",
    "Prediction",
    "EvalRun",
    "IngestResult",
    "Edit",
    "DatasetInfo",
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
    from .edits import DatasetInfo, Edit
    from .encoder import TinyEncoder
    from .errors import ClipvdbError
    from .evaluate import EvalRun
    from .experiment import ExperimentResult
    from .indexes import IndexInfo
    from .ingest import IngestResult, LoadResult
    from .knn import KnnSearcher, SearchSettings
    from .learned import LearnedMap
    from .nodes import NodesStatus, Rebalance
    from .options import (
        ClassifyOptions,
        ClusterOptions,
        EvaluateOptions,
        ExperimentOptions,
        IndexOptions,
        IngestOptions,
        LearnOptions,
        LoadOptions,
        SessionOptions,
        TrainOptions,
        Watch,
    )
    from .predict import Prediction
    from .records import Record
    from .reports import ClusterRow, DataOverview, ExperimentRow, Report, RunDetail, RunSummary, Sample, Status
    from .retrieval import Grid, Hit
    from .session import Dataset, Session
    from .stages import STAGES, Stage
    from .store import Store


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'clipvdb' has no attribute {name!r}")
