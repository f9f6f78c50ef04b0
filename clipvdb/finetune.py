"""`clipvdb train --base efficientnet-lite0`: fine-tune an ImageNet EfficientNet-Lite's top on one
labelled split, so that its stages' nearest neighbors follow the data's classes.

The network's last TUNED_STAGES block stages and its head convolution are trained, through a linear
classifier over the pooled head that is dropped afterwards; the blocks before them stay as ImageNet
trained them and run in inference form (batch norms folded, no gradients), about half of a step's
time. Each epoch reads the split afresh in the decoding workers as the encoder will see it (resized
to the input size), in a new order, each image mirrored at random and shifted by up to a sixteenth
of its side (reflect padding). SGD with Nesterov momentum, a one-cycle learning rate, label
smoothing and dropout on the pooled head. Only the split named is read: the test split never
reaches the weights.

The checkpoint (trained_model.TUNED_FORMAT) holds the whole network as the variant's checkpoint
has it; `--model PATH` (or its name) loads it as the variant with its own name and identity (the
file's SHA-256): the same stages and widths, classified by nearest stored neighbors.
"""

from __future__ import annotations

import datetime as dt
import math
import platform
import time
from collections.abc import Generator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .clip_model import keep_freed_memory
from .efficientnet_model import BN_MOMENTUM, VARIANTS, EfficientNetEncoder, EfficientNetLite, block_plan
from .encoder import input_size
from .errors import SourceError, UsageError
from .options import TrainOptions, Watch
from .pipeline import _Job, decoded_batches, default_workers
from .sources import Source
from .trained_model import TUNED_FORMAT, save_payload
from .training import MOMENTUM, PROBE_STEPS, TrainResult, one_cycle_sgd, probe_seconds

TUNED_STAGES = 2  # of the seven block stages, the last ones trained (lite0: 5 of its 16 blocks)
DEFAULT_BATCH_SIZE = 64
DEFAULT_LR = 0.05
WEIGHT_DECAY = 5e-5
LABEL_SMOOTHING = 0.1
DROPOUT = 0.2  # on the pooled head, before the classifier
SHIFT = 1 / 16  # of the side: the largest shift of an image
CALIBRATION_BATCHES = 50  # batches whose mean statistics the tuned batch norms keep for inference


class Tuner(nn.Module):
    """The variant's network split in two: the frozen blocks in inference form, then the trained top
    (its last TUNED_STAGES block stages and the head as the checkpoint has them, batch norms
    included) and a classifier over the pooled head."""

    def __init__(self, state: dict[str, torch.Tensor], n_classes: int):
        super().__init__()
        plan = block_plan(state)
        last = plan[-1][5]
        self.start = min(i for i, b in enumerate(plan) if b[5] > last - TUNED_STAGES)
        self.frozen = EfficientNetLite(state)
        self.frozen.requires_grad_(False)
        self.net = EfficientNetLite(state, fold=False)  # its first blocks unused: the frozen ones run
        self.classifier = nn.Linear(self.net._conv_head.out_channels, n_classes)

    def trained(self) -> list[nn.Module]:
        return [*self.net._blocks[self.start :], self.net._conv_head, self.net._bn1, self.classifier]

    def norms(self) -> list[nn.BatchNorm2d]:
        return [m for part in self.trained() for m in part.modules() if isinstance(m, nn.BatchNorm2d)]

    def train_top(self, mode: bool = True) -> None:
        self.eval()
        for m in self.trained():
            m.train(mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            x = F.relu6(self.frozen._bn0(self.frozen._conv_stem(x)))
            for block in self.frozen._blocks[: self.start]:
                x = block(x)
        for block in self.net._blocks[self.start :]:
            x = block(x)
        pooled = F.relu6(self.net._bn1(self.net._conv_head(x))).mean((2, 3))
        return self.classifier(F.dropout(pooled, DROPOUT, self.classifier.training))


def base_encoder(base: str, device: str | None) -> EfficientNetEncoder:
    """The network `--base` names, at the input size it asks for (efficientnet-lite0@160)."""
    variant, _, size = base.partition("@")
    if variant not in VARIANTS:
        raise UsageError(f"--base takes {', '.join(VARIANTS)} (@SIZE for another input size), not {base!r}")
    return EfficientNetEncoder(variant, device, size=input_size(base, size) if size else None)


def _shifted(batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each image mirrored with probability 1/2 and shifted by up to SHIFT of its side."""
    n, side = len(batch), batch.shape[1]
    pad = max(1, round(side * SHIFT))
    padded = np.pad(batch, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
    flip = rng.random(n) < 0.5
    dx, dy = rng.integers(0, 2 * pad + 1, (2, n))
    out = np.empty_like(batch)
    for i in range(n):
        img = padded[i, dy[i] : dy[i] + side, dx[i] : dx[i] + side]
        out[i] = img[:, ::-1] if flip[i] else img
    return out


def calibrate(tuner: Tuner, batches: Generator[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Give the tuned batch norms the plain mean statistics of up to CALIBRATION_BATCHES training
    batches through the trained weights. Their running statistics move by 1 % a step, as the
    checkpoint's were trained: after a short run they would still be mostly ImageNet's while the
    weights around them are not."""
    norms = tuner.norms()
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # a cumulative mean
    tuner.train_top()
    with torch.no_grad():
        for n, (x, _) in enumerate(batches):
            tuner(x)
            if n + 1 == CALIBRATION_BATCHES:
                break
    batches.close()  # its decoding workers end here
    for bn in norms:
        bn.momentum = BN_MOMENTUM


def finetune(
    source: Source, out: Path, options: TrainOptions, *, device: str | None = None, watch: Watch | None = None
) -> TrainResult:
    """Fine-tune `options.base` on `options.split` of `source` and write the checkpoint to `out`.
    `watch.progress(advance, total, loss=...)` after every step; `watch.say` gets the epochs the
    budget picked."""
    options.check()
    assert options.base is not None
    watch = watch or Watch()
    t_start = time.perf_counter()
    keep_freed_memory()
    torch.manual_seed(options.seed)
    encoder = base_encoder(options.base, device)
    items = source.items(options.split)
    items = items[: options.limit] if options.limit else items
    if len({it.label for it in items}) < 2:
        raise SourceError(
            f"split {options.split!r} of {source.location} holds fewer than two classes: a classifier needs two or more"
        )
    batch_size = min(options.batch_size or DEFAULT_BATCH_SIZE, len(items))
    lr = options.lr or DEFAULT_LR
    workers = default_workers() if options.workers is None else options.workers
    state = torch.load(encoder.path, map_location="cpu", weights_only=True)
    tuner = Tuner(state, len(source.classes)).to(encoder.device).to(memory_format=torch.channels_last)
    params = [p for m in tuner.trained() for p in m.parameters()]
    skipped: set[int] = set()

    def batches(epoch: int) -> Generator[tuple[torch.Tensor, torch.Tensor]]:
        """The epoch's full batches (the last partial one dropped: batch norm wants full batches)."""
        rng = np.random.default_rng([options.seed, epoch + 1])  # the probe's is epoch -1
        order = rng.permutation(len(items))
        job = _Job([items[i] for i in order], need_first=False, prepare=encoder.prepare, hash_items=False)
        pixels: list[np.ndarray] = []
        labels: list[int] = []
        for d in decoded_batches(job, batch_size, workers):
            skipped.update(int(order[i]) for i, _ in d.failed)
            if d.prepared is None:
                continue
            pixels.extend(d.prepared)
            labels.extend(job.items[i].label for i in d.index)
            while len(pixels) >= batch_size:
                x = encoder.to_input(_shifted(np.stack(pixels[:batch_size]), rng))
                yield x.contiguous(memory_format=torch.channels_last), torch.tensor(labels[:batch_size])
                del pixels[:batch_size], labels[:batch_size]

    def make_optimizer(total: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.OneCycleLR]:
        return one_cycle_sgd(
            params, lr, total, weight_decay=WEIGHT_DECAY, pct_start=0.15, div_factor=10.0, final_div_factor=100.0
        )

    def step(opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
        logits = tuner(x)
        y = y.to(logits.device)
        loss = F.cross_entropy(logits, y, label_smoothing=LABEL_SMOOTHING)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach()), int((logits.argmax(1) == y).sum())

    per_epoch = max(1, len(items) // batch_size)
    epochs, budget = options.epochs, options.minutes if options.epochs is None else None
    tuner.train_top()
    if epochs is None:
        probe_opt, _ = make_optimizer(PROBE_STEPS + 1)
        probe = batches(-1)
        first = next(probe, None)
        probe.close()  # its decoding workers end here
        if first is None:
            raise SourceError(f"fewer than {batch_size} images of split {options.split!r} could be decoded")
        x0, y0 = first
        step_s = probe_seconds(lambda _: step(probe_opt, x0, y0), [tuner])
        left = options.minutes * 60 - (time.perf_counter() - t_start) - 5.0  # the checkpoint and the slack
        epochs = max(1, math.floor(left / (step_s * per_epoch)))
        ms = step_s * 1000 / batch_size
        watch.say(f"{len(items):,} images, {ms:.2f} ms per image: {epochs} epochs fit in {options.minutes:g} min")
    total = epochs * per_epoch
    opt, sched = make_optimizer(total)
    losses: list[float] = []
    correct = seen = done = 0
    t_train = time.perf_counter()
    for e in range(epochs):
        epoch_loss, correct, seen = 0.0, 0, 0
        for x, y in batches(e):
            if done == total:
                break
            loss, right = step(opt, x, y)
            sched.step()
            done += 1
            epoch_loss += loss
            correct += right
            seen += len(y)
            watch.progress(len(y), total * batch_size, loss=loss)
        losses.append(epoch_loss / max(1, seen // batch_size))
    train_seconds = time.perf_counter() - t_train
    if not seen:
        raise SourceError(f"fewer than {batch_size} images of split {options.split!r} could be decoded")
    calibrate(tuner, batches(epochs))
    tuner.train_top(False)
    name = options.model_name()
    record = {
        "base": options.base,
        "base_sha256": encoder.sha256,
        "tuned_from_block": tuner.start,
        "split": options.split,
        "source": source.location,
        "images": len(items) - len(skipped),
        "skipped": len(skipped),
        "seed": options.seed,
        "epochs": epochs,
        "budget_minutes": budget,
        "steps": done,
        "batch_size": batch_size,
        "lr": lr,
        "momentum": MOMENTUM,
        "weight_decay": WEIGHT_DECAY,
        "label_smoothing": LABEL_SMOOTHING,
        "dropout": DROPOUT,
        "loss_per_epoch": losses,
        "train_accuracy": correct / max(seen, 1),
        "train_seconds": train_seconds,
        "device": str(encoder.device),
        "torch": str(torch.__version__),
        "machine": platform.machine(),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    payload = {
        "format": TUNED_FORMAT,
        "name": name,
        "variant": encoder.variant,
        "size": encoder.size,
        "classes": list(source.classes),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in tuner.net.state_dict().items()},
        "record": record,
    }
    sha = save_payload(payload, out)
    return TrainResult(
        path=str(out),
        sha256=sha,
        name=name,
        images=len(items) - len(skipped),
        skipped=len(skipped),
        epochs=epochs,
        steps=done,
        seconds=time.perf_counter() - t_start,
        train_seconds=train_seconds,
        images_per_s=done * batch_size / train_seconds,
        final_loss=losses[-1],
        train_accuracy=correct / max(seen, 1),
        widths=[],
        classes=list(source.classes),
        loss_per_epoch=losses,
        base=options.base,
    )
