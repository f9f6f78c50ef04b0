"""The options of each job, one frozen object per job: the CLI builds it from its flags (cli.py's
option decorators), the Store from its keywords, and the job reads it. An option has one name at
every layer. The search's own options are `knn.SearchSettings`.

Standard library only: the CLI builds these before anything heavy is imported.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from . import config
from .errors import UsageError


def _quiet(*_: object, **__: object) -> None:
    pass


# keywords of the Store's jobs that changed name: old -> new, the old one kept for a release
RENAMED = {"num": "limit"}


def gathered[T](options: T | None, kind: type[T], changes: dict[str, Any]) -> T:
    """`options` (default: `kind()`) with `changes`, its fields by name: what a Store method's keywords
    give. An old name warns and maps to its new one; an unknown one is a UsageError."""
    for old, new in RENAMED.items():
        if old in changes:
            warnings.warn(f"{old}= is now {new}=; {old}= goes in the next release", DeprecationWarning, stacklevel=3)
            changes[new] = changes.pop(old)
    names = {f.name for f in fields(kind)}  # type: ignore[arg-type]
    unknown = sorted(set(changes) - names)
    if unknown:
        raise UsageError(f"unknown keyword {unknown[0]!r}; {kind.__name__} has {', '.join(sorted(names))}")
    return replace(options or kind(), **changes)  # type: ignore[type-var]


@dataclass(frozen=True)
class Watch:
    """How a job tells its caller where it is: `progress(advance, total)` as work is done (the first
    call may advance 0 to give the total; training adds `loss=`), `say(line)` for a line worth
    printing on the way (a running accuracy, the epochs a time budget picked)."""

    progress: Callable[..., None] = _quiet
    say: Callable[[str], None] = _quiet

    @classmethod
    def of(cls, progress: Callable[..., None] | None = None, say: Callable[[str], None] | None = None) -> Watch:
        """A watch from callbacks that may be None (ignored)."""
        return cls(progress or _quiet, say or _quiet)


@dataclass(frozen=True)
class SessionOptions:
    """A Store's (and its Session's) home, model and connections, as the CLI's global options give them."""

    home: Path | str | None = None  # None: CLIPVDB_HOME, else the user data directory
    model: str = config.DEFAULT_MODEL  # a model name, a checkpoint path, or "tiny"
    pretrained: str | None = None  # the weights' tag (None: the model's default)
    device: str = config.DEFAULT_DEVICE
    pool_size: int = config.DEFAULT_POOL_SIZE
    migrate: bool = True  # bring an older schema to head on first use


@dataclass(frozen=True)
class IngestOptions:
    """`clipvdb ingest`: which images of the source, in what batches, into which dataset."""

    split: str = "train"
    limit: int | None = None  # only the first N images of the split
    batch_size: int | None = None  # None: 256 for stage first alone, else 64 (config)
    workers: int | None = None  # image-decoding worker processes; None: cores - 1, at most 4
    dataset: str | None = None  # None: named after the source
    strict: bool = False  # stop at the first bad image instead of skipping it
    build_index: bool = True  # rebuild each stage's index afterwards

    def check(self) -> None:
        for name in ("limit", "batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
        if self.workers is not None and self.workers < 0:
            raise UsageError("--workers must be 0 or more")


@dataclass(frozen=True)
class LoadOptions:
    """`Store.load_vectors`: where vectors computed elsewhere go, in what batches, and the index after."""

    split: str = "train"
    dataset: str | None = None  # None: named after the source
    batch: int = 5000  # rows per COPY transaction
    build_index: bool = True  # rebuild the stage's index afterwards
    index: tuple[str, dict] | None = None  # (kind, indexes.SPEC_KEYS) instead of the size rule's

    def check(self) -> None:
        if self.batch < 1:
            raise UsageError("batch must be at least 1")


@dataclass(frozen=True)
class ClassifyOptions:
    """`clipvdb classify`: which stored split to search, the zero-shot prompts, images per batch."""

    dataset: str | None = None  # None: the only one
    against: str = "train"  # the stored split searched
    prompts: str = "study"  # stage origin's class prompts
    batch_size: int = 32

    def check(self) -> None:
        if self.batch_size < 1:
            raise UsageError("--batch-size must be at least 1")


@dataclass(frozen=True)
class EvaluateOptions:
    """`clipvdb evaluate`: which images to classify against which stored split, and how in parallel."""

    split: str = "test"
    against: str = "train"  # the stored split searched
    limit: int | None = None  # only the first N images of the split (the study's --num)
    batch_size: int | None = None  # images per search statement; None: 100, 400 on Citus (config)
    workers: int | None = None  # image-decoding worker processes; None: cores - 1, at most 4
    connections: int = 2  # database connections searching batches at once
    display_freq: int = 0  # print the running accuracy every F batches (0: never)
    dataset: str | None = None  # None: named after the source
    prompts: str = "study"  # zero-shot prompts at origin

    def check(self) -> None:
        for name in ("limit", "batch_size", "connections"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
        if self.workers is not None and self.workers < 0:
            raise UsageError("--workers must be 0 or more")
        if self.display_freq < 0:
            raise UsageError("--display-freq must be 0 or more")


@dataclass(frozen=True)
class TrainOptions:
    """`clipvdb train`: the network (a compact CNN from scratch, or `base` fine-tuned), its training
    schedule and the images it reads."""

    split: str = "train"  # the split trained on (no other is read)
    name: str | None = None  # the model's name, carried by its stored vectors (model_name())
    base: str | None = None  # None: the compact CNN from scratch; efficientnet-lite0[@SIZE]: fine-tuned
    widths: tuple[int, ...] = (48, 96, 192)  # channels of the compact CNN's three residual blocks
    epochs: int | None = None  # None: as many as fit in `minutes`
    minutes: float = 13.0  # the time budget that picks the epochs
    batch_size: int | None = None  # None: the network's own (training.py, finetune.py)
    lr: float | None = None  # the peak learning rate; None: the network's own
    seed: int = 0
    limit: int | None = None  # train on the first N images of the split
    workers: int | None = None  # decoding processes; None: one per core

    def model_name(self) -> str:
        """`name`, or cnn from scratch, or the base's short name and size (lite0-tuned, lite0-160-tuned)."""
        if self.name:
            return self.name
        if not self.base:
            return "cnn"
        variant, _, size = self.base.partition("@")
        return "-".join([variant.removeprefix("efficientnet-"), *([size] if size else []), "tuned"])

    def check(self) -> None:
        if self.epochs is not None and self.epochs < 1:
            raise UsageError("--epochs must be at least 1")
        if self.minutes <= 0:
            raise UsageError("--minutes must be positive")
        if self.limit is not None and self.limit < 1:
            raise UsageError("--limit must be at least 1")
        if self.batch_size is not None and self.batch_size < 2:
            raise UsageError("--batch-size must be at least 2")
        if self.lr is not None and self.lr <= 0:
            raise UsageError("--lr must be positive")
        if not self.widths or min(self.widths) < 1:
            raise UsageError("--widths takes positive channel counts, e.g. 48,96,192")


CLUSTER_METHODS = ("kmeans", "agglomerative", "dbscan")


@dataclass(frozen=True)
class ClusterOptions:
    """`clipvdb cluster fit`: the method and its parameters, and which stored rows."""

    method: str = "kmeans"  # one of CLUSTER_METHODS
    k: int = 10  # clusters (kmeans, agglomerative)
    eps: float = 0.5  # DBSCAN radius
    min_samples: int = 5  # DBSCAN core size
    linkage: str = "ward"  # agglomerative linkage
    split: str = "train"  # the stored split clustered
    dataset: str | None = None  # None: the only one
    sample: int | None = None  # cluster a seeded random sample of N rows
    seed: int = 0

    def check(self) -> None:
        if self.method not in CLUSTER_METHODS:
            raise UsageError(f"unknown method {self.method!r}; choose from {', '.join(CLUSTER_METHODS)}")
        if self.k < 1 and self.method != "dbscan":
            raise UsageError("--k must be at least 1")

    def params(self) -> dict:
        """The parameters its method uses, as the clustering records them."""
        if self.method == "dbscan":
            return {"seed": self.seed, "eps": self.eps, "min_samples": self.min_samples}
        if self.method == "agglomerative":
            return {"seed": self.seed, "k": self.k, "linkage": self.linkage}
        return {"seed": self.seed, "k": self.k}


INDEX_KINDS = ("ivfflat", "hnsw", "none")


@dataclass(frozen=True)
class IndexOptions:
    """`clipvdb index`: the kind and parameters of a stage's ANN index; what is not given comes from
    the stage's size rule (kind None: the rule chooses, and records that it did)."""

    kind: str | None = None  # one of INDEX_KINDS
    project: int | None = None  # index a D-dimensional PCA projection (0: the full vectors)
    lists: int | None = None  # ivfflat lists
    m: int | None = None  # hnsw m
    ef_construction: int | None = None  # hnsw ef_construction
    metric: str = "l2"  # l2, cosine or ip
    dataset: str | None = None  # rebuild this dataset's indexes only (default: every dataset's)
    model: str | None = None  # rebuild this model's indexes only, by its stored name (default: every model's)

    def given(self) -> dict:
        """The parameters given here, by name (the rest stay the rule's)."""
        named = {"project": self.project, "lists": self.lists, "m": self.m, "ef_construction": self.ef_construction}
        return {k: v for k, v in named.items() if v is not None}

    def check(self) -> None:
        if self.kind is not None and self.kind not in INDEX_KINDS:
            raise UsageError(f"unknown index kind {self.kind!r}; choose from {', '.join(INDEX_KINDS)}")


@dataclass(frozen=True)
class DuplicatesOptions:
    """`clipvdb duplicates`: which pairs to look for, and how near is near."""

    within: str | None = None  # pairs within this split
    across: bool = False  # test images against train
    threshold: float | None = None  # the largest distance of a pair (None: the ratio test)
    ratio: float = config.DUPLICATE_RATIO  # nearest over the next farther image's distance, at most
    dataset: str | None = None

    def check(self) -> None:
        if self.across == (self.within is not None):
            raise UsageError("choose one: --within SPLIT (pairs in one split) or --across (test images against train)")
        if self.threshold is not None and self.threshold < 0:
            raise UsageError(f"--threshold must be at least 0; got {self.threshold}")
        if not 0 < self.ratio <= 1:
            raise UsageError(f"--ratio must be in (0, 1]; got {self.ratio}")


LEARN_METHODS = ("nca", "mlp", "lda", "pca")


@dataclass(frozen=True)
class LearnOptions:
    """`clipvdb learn`: the learned metric's method, its dimensions and budget, and which dataset."""

    method: str = "nca"  # one of LEARN_METHODS
    dims: int | None = None  # None: 128; lda: classes - 1
    seconds: float = 120.0  # nca's and mlp's training budget
    dataset: str | None = None  # None: the only one
    seed: int = 0

    def check(self) -> None:
        if self.method not in LEARN_METHODS:
            raise UsageError(f"unknown --method {self.method!r}; choose from {', '.join(LEARN_METHODS)}")


@dataclass(frozen=True)
class ExperimentOptions:
    """`clipvdb experiment search`: the stored-set sizes, the queries, and the index settings tried."""

    sizes: tuple[int, ...] = (1000, 5000, 20000, 50000)
    queries: int = 100  # stored vectors beyond the largest size, used as queries
    probes: tuple[int, ...] = (1, 5, 10)  # ivfflat probes to try
    ef_search: tuple[int, ...] = (40, 100)  # hnsw ef_search values to try
    metric: str = "l2"  # l2, cosine or ip

    def check(self) -> None:
        for name in ("sizes", "probes", "ef_search"):
            values = getattr(self, name)
            if not values or min(values) < 1:
                raise UsageError(f"--{name.replace('_', '-')} takes positive integers")
        if self.queries < 1:
            raise UsageError("--queries must be at least 1")
