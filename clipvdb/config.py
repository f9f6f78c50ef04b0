"""Configuration: every environment variable and every default, defined once.

The CLI's options read the same variables (click's envvar=); the library reads them here when a
caller passes nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_DATABASE_URL = "CLIPVDB_DATABASE_URL"
ENV_HOME = "CLIPVDB_HOME"
ENV_MODEL = "CLIPVDB_MODEL"
ENV_PRETRAINED = "CLIPVDB_PRETRAINED"
ENV_DEVICE = "CLIPVDB_DEVICE"
ENV_DEBUG = "CLIPVDB_DEBUG"
ENV_SHARED_BUFFERS = "CLIPVDB_SHARED_BUFFERS"
ENV_KEEP_FREED_MEMORY = "CLIPVDB_KEEP_FREED_MEMORY"  # 0: leave glibc's malloc settings alone (clip_model.py)

DEFAULT_MODEL = "RN50"
DEFAULT_PRETRAINED = "openai"
DEFAULT_DEVICE = "auto"

# Search
DEFAULT_K = 1
DEFAULT_EF_SEARCH = 100
DEFAULT_CANDIDATES = 20  # distinct vectors re-ranked per query on a projected index (at least 4 k)
# rows the candidate scan of a projected index may read per distinct candidate: a vector stored up
# to this many times on average still counts once (queries.candidate_rows)
CANDIDATE_ROWS_PER_VECTOR = 50
# Indexes
DEFAULT_M = 16
DEFAULT_EF_CONSTRUCTION = 64
# stage first's projected hnsw, the default above indexes.HNSW_FROM_ROWS rows (see there)
PROJECTED_EF_CONSTRUCTION = 40
PROJECTED_EF_SEARCH = 60  # on a stored set of distinct vectors; widened by its copies (indexes.projected_ef_search)
PROJECTED_EF_SEARCH_MAX = 80
# an index is due for a rebuild once the rows stored differ from the rows it was built on by this
# share (ingest's bulk-load rule drops and rebuilds at the same share of one load): indexes.due
REBUILD_DRIFT = 0.2
# clipvdb duplicates: an image's nearest is a near duplicate when at most this share of the distance
# to the next farther image (duplicates.py). On CIFAR-10's pixels (test against train, exact): 0.75
# kept 226 pairs, 1 of different classes; 0.8 kept 293, 5; 0.85 kept 392, 23 (published: 3.3 %)
DUPLICATE_RATIO = 0.8
DEFAULT_PROJECT_FIRST = 64
# Pipelines
DEFAULT_BATCH_SIZE = 64  # ingest with a CLIP stage (the encoder's batch)
DEFAULT_FIRST_BATCH_SIZE = 256  # ingest of stage first alone: fewer, larger COPY transactions
DEFAULT_EVAL_BATCH_SIZE = 100
# on Citus a batch costs one COPY of its vectors and one statement over every shard, whatever its size
DEFAULT_EVAL_BATCH_SIZE_DISTRIBUTED = 400
DEFAULT_POOL_SIZE = 4


def database_url() -> str | None:
    """CLIPVDB_DATABASE_URL, or None for the embedded server."""
    return os.environ.get(ENV_DATABASE_URL) or None


def home() -> Path | None:
    value = os.environ.get(ENV_HOME)
    return Path(value).expanduser() if value else None
