"""Named errors of the clipvdb library. The CLI turns each into a one-line message."""


class ClipvdbError(Exception):
    """Base class. `exit_code` is what the CLI exits with: 1 runtime, 2 usage."""

    exit_code = 1


class UsageError(ClipvdbError):
    """The caller asked for something that cannot work as asked (bad path, unknown name)."""

    exit_code = 2


class DatabaseError(ClipvdbError):
    """The database cannot be reached or lacks what clipvdb needs."""


class ExtensionError(DatabaseError):
    """pgvector is missing or too old."""


class SchemaError(DatabaseError):
    """The schema is not at the revision this version of clipvdb expects."""


class WeightsError(ClipvdbError):
    """Model weights cannot be loaded."""


class StageError(UsageError):
    """An unknown stage, or a stage the chosen model cannot compute."""


class SourceError(UsageError):
    """A data source that cannot be read."""


class ImageError(ClipvdbError):
    """One image that cannot be decoded or encoded."""


class EmptyStageError(ClipvdbError):
    """Nothing stored to search at this stage, for these weights."""


class SpaceMismatchError(ClipvdbError):
    """A query vector from another embedding space than the stored rows."""


class SkippedImagesError(ClipvdbError):
    """An ingest finished, but some inputs were skipped (exit code 3)."""

    exit_code = 3


class DiskFullError(DatabaseError):
    """The database server's disk is full (SQLSTATE 53100): free space, then run the command again."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread by the CLI's handler: cancelled like Ctrl-C (the open
    batch rolls back), exit code 143."""


class WorkerError(ClipvdbError):
    """A decoding worker process died (killed, or out of memory)."""
