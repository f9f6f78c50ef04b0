"""Every SQL statement that names a table, index or type chosen at run time, composed in one place
with psycopg.sql (identifiers as sql.Identifier, never formatted text), one module per table family:
search (the kNN statements), catalog, loading, maps (projections and learned maps), indexes, edits
(delete, relabel, datasets), experiments, runs, reports (and the web pages' reads), clusters, admin
(Citus nodes, sizes).
Statements with nothing to compose are plain strings beside them; report views are files under
sql/; statements only the benchmarks use are in bench/statements.py.

A stage's kNN statement is built by `knn` (on Citus `knn_shard`), its index DDL by `create_index`,
its row counts by `counts` (read from stage_counts, kept by triggers: no count(*) scan). Every name
is importable from here: `queries.knn`, `queries.INSERT_RUN`.
"""

from .admin import *  # noqa: F403
from .catalog import *  # noqa: F403
from .clusters import *  # noqa: F403
from .edits import *  # noqa: F403
from .experiments import *  # noqa: F403
from .indexes import *  # noqa: F403
from .loading import *  # noqa: F403
from .maps import *  # noqa: F403
from .reports import *  # noqa: F403
from .runs import *  # noqa: F403
from .search import *  # noqa: F403
