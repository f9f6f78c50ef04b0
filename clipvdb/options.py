"""The options of each job, one frozen object per job: the CLI builds it from its flags (cli.py's
option decorators), the Store from its keywords, and the job reads it. An option has one name at
every layer. The search's own options are `knn.SearchSettings`.

Standard library only: the CLI builds these before anything heavy is imported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .errors import UsageError


def _quiet(*_: object) -> None:
    pass


@dataclass(frozen=True)
class Watch:
    """How a job tells its caller where it is: `progress(advance, total)` as work is done (the first
    call may advance 0 to give the total), `say(line)` for a line worth printing on the way (a running
    accuracy)."""

    progress: Callable[[int, int], None] = _quiet
    say: Callable[[str], None] = _quiet

    @classmethod
    def of(cls, progress: Callable[[int, int], None] | None = None, say: Callable[[str], None] | None = None) -> Watch:
        """A watch from callbacks that may be None (ignored)."""
        return cls(progress or _quiet, say or _quiet)


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
