"""The demo: ingest a training subset, evaluate a test subset, report, plot, on the embedded database.

It uses real CIFAR-10 and the OpenAI weights when it can get them. Offline with nothing given it
falls back to a synthetic 10-class set and random weights, and says so loudly: random-weight
results are never presented as CLIP results.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import db, models, plots, reports, synthetic
from .classify import SearchSettings
from .embedded import home_dir
from .errors import SourceError, WeightsError
from .evaluate import EvalResult, evaluate
from .ingest import IngestResult, ingest
from .sources import Source, open_source
from .stages import Stage

BANNER = "!" * 78


@dataclass
class DemoResult:
    source: str
    weights: str
    notices: list[str] = field(default_factory=list)
    ingest: IngestResult | None = None
    evaluation: EvalResult | None = None
    report: dict | None = None
    plots: list[Path] = field(default_factory=list)


def pick_source(data: str | None, n_train: int, n_test: int) -> tuple[Source, list[str]]:
    if data:
        return open_source(data), []
    try:
        return open_source("cifar10"), []
    except SourceError as exc:
        root = home_dir() / "cache" / "synthetic"
        per = {"train": math.ceil(n_train / len(synthetic.CLASSES)), "test": math.ceil(n_test / len(synthetic.CLASSES))}
        synthetic.generate(root, per)
        notice = (f"NO REAL DATA: CIFAR-10 could not be had ({exc}). Using a SYNTHETIC 10-class set "
                  f"generated in {root}.")  # fmt: skip
        return open_source(root), [notice]


def pick_model(
    model: str, pretrained: str | None, device: str, stages: list[Stage]
) -> tuple[models.LoadedModel | None, list[str]]:
    if not any(s.uses_clip for s in stages):
        return None, []
    if pretrained:
        return models.load_model(model, pretrained, device), []
    try:
        return models.load_model(model, models.DEFAULT_PRETRAINED, device), []
    except WeightsError as exc:
        lm = models.load_model(model, models.RANDOM, device, quiet=True)
        return lm, [f"NO CLIP WEIGHTS: {exc}. The CLIP stages below use RANDOM weights: their "
                    "accuracy says nothing about CLIP. Only stage 'first' (raw pixels) is meaningful."]  # fmt: skip


def run_demo(
    url: str,
    *,
    data: str | None,
    n_train: int,
    n_test: int,
    stages: list[Stage],
    out: Path,
    model: str,
    pretrained: str | None,
    device: str,
    say: Callable[[str], None],
    progress: Callable[[str], tuple] | None = None,
) -> DemoResult:
    source, notices = pick_source(data, n_train, n_test)
    lm, model_notices = pick_model(model, pretrained, device, stages)
    notices += model_notices
    for n in notices:
        say(f"{BANNER}\n{n}\n{BANNER}")
    db.upgrade(url)
    result = DemoResult(
        source=source.location, weights=lm.weights if lm else "none (stage first only)", notices=notices
    )
    say(f"data: {source.location}  weights: {result.weights}")
    bar, update = progress("ingest") if progress else (None, None)
    with bar if bar else _null():
        result.ingest = ingest(url, source, stages, lm, split="train", limit=n_train, progress=update)
    say(f"ingested {result.ingest.total} training images in {result.ingest.seconds:.1f} s")
    bar, update = progress("evaluate") if progress else (None, None)
    with bar if bar else _null():
        result.evaluation = evaluate(url, source, stages, lm, SearchSettings(), split="test", num=n_test,
                                     display_freq=0, progress=update)  # fmt: skip
    result.report = reports.report(url, result.evaluation.run_id)
    result.plots = plots.plot(url, out, result.evaluation.run_id)
    return result


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False
