"""`clipvdb train`: fit the compact residual CNN (trained_model.py) on one labelled split.

The recipe is the usual fast one for small images: a stem whose filters whiten 3x3 patches (fitted
to the split, then frozen), random horizontal flips and 2-pixel translations (reflect padding), SGD
with Nesterov momentum, a one-cycle learning rate (linear up for a quarter of
the steps, linear down to zero), label smoothing and weight decay. With no `epochs` given, a short
timing probe (its weights and random state thrown away) picks as many epochs as fit in `minutes`.
Only the split named is read: the test split never reaches the weights.
"""

from __future__ import annotations

import datetime as dt
import math
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .clip_model import keep_freed_memory
from .errors import SourceError
from .options import TrainOptions, Watch
from .pipeline import _Job, decoded_batches, default_workers
from .sources import Source
from .trained_model import Checkpoint, CompactNet

DEFAULT_BATCH_SIZE = 512
DEFAULT_LR = 0.4  # the peak of the one-cycle schedule
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4
LABEL_SMOOTHING = 0.2
SHIFT = 2  # pixels each way of the random translation
PROBE_STEPS = 14
PROBE_TIMED = 6  # the first steps grow the heap (keep_freed_memory): not timed

Progress = Callable[..., None]


@dataclass
class TrainResult:
    path: str
    sha256: str
    name: str
    images: int
    skipped: int
    epochs: int
    steps: int
    seconds: float
    train_seconds: float
    images_per_s: float
    final_loss: float
    train_accuracy: float
    widths: list[int]
    classes: list[str]
    loss_per_epoch: list[float] = field(default_factory=list)
    base: str | None = None  # the network fine-tuned (finetune.py); None: trained from scratch

    def as_dict(self) -> dict:
        return asdict(self)


def load_split(
    source: Source, split: str, limit: int | None = None, workers: int | None = None
) -> tuple[np.ndarray, np.ndarray, int]:
    """(N, 32, 32, 3) uint8 pixels and labels of a split, decoded in worker processes; and how many
    images could not be decoded (skipped)."""
    items = source.items(split)[:limit] if limit else source.items(split)
    if not items:
        raise SourceError(f"{source.location} has no images in split {split!r}")
    job = _Job(items, need_first=True, prepare=None, hash_items=False)
    pixels: list[np.ndarray] = []
    labels: list[int] = []
    skipped = 0
    for d in decoded_batches(job, 1000, default_workers(encoding=False) if workers is None else workers):
        skipped += len(d.failed)
        if d.first is not None:
            pixels.append(d.first)
            labels.extend(items[i].label for i in d.index)
    if not pixels:
        raise SourceError(f"no image of split {split!r} in {source.location} could be decoded")
    return np.concatenate(pixels), np.asarray(labels, dtype=np.int64), skipped


class _Augmenter:
    """Each epoch's images: flipped at random and shifted by up to SHIFT pixels (reflect padding),
    decided by a generator seeded from (seed, epoch), so a run is reproducible."""

    def __init__(self, images: torch.Tensor, seed: int):
        self.padded = F.pad(images.float(), (SHIFT,) * 4, mode="reflect").to(torch.uint8)
        self.n, self.seed = len(images), seed

    def epoch(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        flip = torch.rand(self.n, generator=g) < 0.5
        dx = torch.randint(0, 2 * SHIFT + 1, (self.n,), generator=g)
        dy = torch.randint(0, 2 * SHIFT + 1, (self.n,), generator=g)
        out = torch.empty((self.n, 3, 32, 32), dtype=torch.uint8)
        for x in range(2 * SHIFT + 1):
            for y in range(2 * SHIFT + 1):
                idx = torch.nonzero((dx == x) & (dy == y)).flatten()
                out[idx] = self.padded[idx, :, y : y + 32, x : x + 32]
        out[flip] = out[flip].flip(3)
        return out, torch.randperm(self.n, generator=g)


def whiten_stem(net: CompactNet, x: torch.Tensor, eps: float = 5e-4) -> None:
    """Set the stem's filters to whiten 3x3 patches (the top half of the patch covariance's
    eigenvectors, each scaled by 1/sqrt(eigenvalue), and their negatives) and freeze them: the
    first layer starts out decorrelating its input, which speeds up a short training."""
    conv = net.stem[0]
    assert isinstance(conv, torch.nn.Conv2d)
    half = conv.out_channels // 2
    patches = F.unfold(x, conv.kernel_size).transpose(1, 2).reshape(-1, x.shape[1] * 9).double()
    cov = torch.cov(patches.T)
    values, vectors = torch.linalg.eigh(cov)
    values, vectors = values.flip(0)[:half], vectors.flip(1)[:, :half].T
    filters = (vectors / torch.sqrt(values + eps)[:, None]).reshape(half, x.shape[1], *conv.kernel_size)
    with torch.no_grad():
        conv.weight.copy_(torch.cat([filters, -filters]).float())
    conv.weight.requires_grad_(False)


def probe_seconds(step: Callable[[int], object], modules: list[torch.nn.Module]) -> float:
    """Seconds per training step: `step(i)` run PROBE_STEPS times from the start state, the last
    PROBE_TIMED timed; then the modules' state and torch's random states (the CPU's and each GPU's)
    are restored, so the probe leaves no trace in the training that follows."""
    states = [{k: v.clone() for k, v in m.state_dict().items()} for m in modules]
    t_probe = 0.0
    with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
        for i in range(PROBE_STEPS):
            if i == PROBE_STEPS - PROBE_TIMED:
                t_probe = time.perf_counter()
            step(i)
    seconds = (time.perf_counter() - t_probe) / PROBE_TIMED
    for m, state in zip(modules, states, strict=True):
        m.load_state_dict(state)
    return seconds


def one_cycle_sgd(
    params: list[torch.nn.Parameter],
    lr: float,
    total_steps: int,
    *,
    weight_decay: float,
    pct_start: float,
    div_factor: float,
    final_div_factor: float,
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.OneCycleLR]:
    """SGD with Nesterov momentum under a one-cycle learning rate: linear up from lr / div_factor for
    pct_start of the steps to `lr`, then linear down to lr / div_factor / final_div_factor."""
    opt = torch.optim.SGD(params, lr=lr, momentum=MOMENTUM, nesterov=True, weight_decay=weight_decay)
    if round(pct_start * total_steps, 9) == 1:
        # a warm-up of exactly one step, which OneCycleLR divides by zero: start the descent at once
        pct_start = 0.5 / total_steps
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt,
        max_lr=lr,
        total_steps=total_steps,
        pct_start=pct_start,
        anneal_strategy="linear",
        div_factor=div_factor,
        final_div_factor=final_div_factor,
        cycle_momentum=False,
    )
    return opt, sched


def _steps_per_epoch(n: int, batch_size: int) -> int:
    return max(1, n // batch_size)  # the last partial batch is dropped (BN wants full batches)


def train(
    source: Source, out: Path, options: TrainOptions, *, device: str | None = None, watch: Watch | None = None
) -> TrainResult:
    """Train on `options.split` of `source` and write the checkpoint to `out`. `watch.progress(advance,
    total, loss=...)` is called after every step; `watch.say` gets the epochs the budget picked."""
    options.check()
    watch = watch or Watch()
    split, name, seed = options.split, options.model_name(), options.seed
    lr = options.lr or DEFAULT_LR
    epochs, minutes = options.epochs, options.minutes
    t_start = time.perf_counter()
    keep_freed_memory()
    torch.manual_seed(seed)
    dev = torch.device("cpu" if device in (None, "auto") else device)
    pixels, labels, skipped = load_split(source, split, options.limit, options.workers)
    n_classes = len(source.classes)
    present = np.unique(labels)
    if len(present) < 2:
        raise SourceError(f"split {split!r} of {source.location} holds one class only: a classifier needs two or more")
    batch_size = min(options.batch_size or DEFAULT_BATCH_SIZE, len(labels))
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()
    mean = (images.float().mean(dim=(0, 2, 3)) / 255).tolist()
    std = (images.float().std(dim=(0, 2, 3)) / 255).clamp_min(1e-3).tolist()
    mean_t = torch.tensor(mean, device=dev)[None, :, None, None] * 255
    std_t = torch.tensor(std, device=dev)[None, :, None, None] * 255
    targets = torch.from_numpy(labels)
    augment = _Augmenter(images, seed)
    net = CompactNet(options.widths, n_classes)
    sample = images[torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:5000]]
    whiten_stem(net, (sample.float() - mean_t.cpu()) / std_t.cpu())
    net = net.to(dev).to(memory_format=torch.channels_last)

    def make_optimizer(total_steps: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.OneCycleLR]:
        params = [p for p in net.parameters() if p.requires_grad]
        return one_cycle_sgd(
            params, lr, total_steps, weight_decay=WEIGHT_DECAY, pct_start=0.25, div_factor=8.0, final_div_factor=1e4
        )

    def step(opt: torch.optim.Optimizer, xb: torch.Tensor, yb: torch.Tensor) -> tuple[float, int]:
        x = ((xb.to(dev, non_blocking=True).float() - mean_t) / std_t).contiguous(memory_format=torch.channels_last)
        y = yb.to(dev, non_blocking=True)
        logits = net(x)
        loss = F.cross_entropy(logits, y, label_smoothing=LABEL_SMOOTHING)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach()), int((logits.argmax(1) == y).sum())

    per_epoch = _steps_per_epoch(len(labels), batch_size)
    budget = minutes if epochs is None else None  # recorded: the epochs came from the time budget
    if epochs is None:
        probe_opt, _ = make_optimizer(PROBE_STEPS + 1)
        xs, order = augment.epoch(-1)

        def probe_step(i: int) -> None:
            j = i % per_epoch
            idx = order[j * batch_size : (j + 1) * batch_size]
            step(probe_opt, xs[idx], targets[idx])

        step_s = probe_seconds(probe_step, [net])
        left = minutes * 60 - (time.perf_counter() - t_start) - 5.0  # the checkpoint and the slack
        epochs = max(1, math.floor(left / (step_s * per_epoch + 1.0)))  # + about 1 s of augmentation per epoch
        ms = step_s * 1000 / batch_size
        watch.say(f"{len(labels):,} images, {ms:.2f} ms per image: {epochs} epochs fit in {minutes:g} min")
    total = epochs * per_epoch
    opt, sched = make_optimizer(total)
    losses: list[float] = []
    correct = seen = 0
    t_train = time.perf_counter()
    net.train()
    for e in range(epochs):
        xs, order = augment.epoch(e)
        epoch_loss, correct, seen = 0.0, 0, 0
        for i in range(per_epoch):
            idx = order[i * batch_size : (i + 1) * batch_size]
            loss, right = step(opt, xs[idx], targets[idx])
            sched.step()
            epoch_loss += loss
            correct += right
            seen += len(idx)
            watch.progress(len(idx), total * batch_size, loss=loss)
        losses.append(epoch_loss / per_epoch)
    train_seconds = time.perf_counter() - t_train
    net.eval()
    record = {
        "split": split,
        "source": source.location,
        "images": int(len(labels)),
        "skipped": skipped,
        "seed": seed,
        "epochs": epochs,
        "budget_minutes": budget,
        "steps": total,
        "batch_size": batch_size,
        "lr": lr,
        "momentum": MOMENTUM,
        "weight_decay": WEIGHT_DECAY,
        "label_smoothing": LABEL_SMOOTHING,
        "shift": SHIFT,
        "loss_per_epoch": losses,
        "train_accuracy": correct / max(seen, 1),
        "train_seconds": train_seconds,
        "device": str(dev),
        "torch": str(torch.__version__),
        "machine": platform.machine(),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    ckpt = Checkpoint(name, tuple(options.widths), list(source.classes), mean, std, net.state_dict(), record)
    sha = ckpt.save(out)
    seconds = time.perf_counter() - t_start
    return TrainResult(
        path=str(out),
        sha256=sha,
        name=name,
        images=int(len(labels)),
        skipped=skipped,
        epochs=epochs,
        steps=total,
        seconds=seconds,
        train_seconds=train_seconds,
        images_per_s=total * batch_size / train_seconds,
        final_loss=losses[-1],
        train_accuracy=correct / max(seen, 1),
        widths=list(options.widths),
        classes=list(source.classes),
        loss_per_epoch=losses,
    )
