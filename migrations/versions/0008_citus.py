"""Citus: the placement of every table, as SQL functions; applied where Citus is present.

`clipvdb_distribute()` makes the small tables reference tables (a copy on every node) and
distributes the per-image tables by image id, co-located with `images`, so that a stage table, its
projections, its learned map, the predictions and the cluster members of one image sit on the same
shard and join there. It runs in this migration when the database has the citus extension and
at least one worker, and again from `clipvdb db nodes start`; on plain PostgreSQL it changes nothing.

What Citus cannot keep, and what replaces it:
- UNIQUE (dataset_id, split, source) on images (a unique constraint must include the distribution
  column): a plain index; ingest inserts only keys it did not find, under its per-dataset lock.
- predictions.neighbor_id's foreign key (not on the distribution column): dropped; a neighbour
  removed later leaves its id behind instead of NULL.
- predictions.run_id's foreign key (runs live on the coordinator, predictions on the workers):
  dropped; runs are never deleted by clipvdb.
- the stage_counts triggers (statement triggers with transition tables do not run on shards):
  dropped; clipvdb recounts with `clipvdb_recount(stage)` after each write.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-22
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

STAGES = ["first", "second", "third", "origin"]

# Frozen placement: parents before children (a reference table's foreign keys must point at
# reference tables), images before everything co-located with it.
REFERENCE_TABLES = [
    "datasets",
    "classes",
    "embedding_spaces",
    "stage_indexes",
    "stage_projections",
    "stage_counts",
    "learned_maps",
    "experiments",
    "experiment_results",
    "clusterings",
    *[f"cluster_centres_{s}" for s in STAGES],
]
# Kept on the coordinator (a Citus local table): a run's status is written while a worker is down.
COORDINATOR_TABLES = ["eval_runs"]
DISTRIBUTED_TABLES = [
    *[f"{prefix}_{s}" for s in STAGES for prefix in ("embeddings", "projections", "learned")],
    "predictions",
    "cluster_members",
]


# Frozen copy of the one view this revision changes (sql/report_runs.sql is the live one).
VIEWS = {
    "report_runs": """-- One row per evaluation run: what was asked, everything that changes an answer, how far it got.
CREATE OR REPLACE VIEW report_runs AS
SELECT r.id AS run_id,
       d.name AS dataset,
       r.split,
       r.stages,
       r.model,
       r.weights,
       r.k,
       coalesce(r.params->>'metric', 'l2') AS metric,
       coalesce((r.params->>'exact')::boolean, false) AS exact,
       r.params->'index' AS index,
       r.params->'storage' AS storage,
       (r.params->>'probes')::int AS probes,
       (r.params->>'ef_search')::int AS ef_search,
       (r.params->>'candidates')::int AS candidates,
       r.params->>'prompts' AS prompts,
       r.params,
       r.status,
       coalesce(n.images, 0) AS images,
       r.started_at,
       r.finished_at,
       extract(epoch FROM r.finished_at - r.started_at) AS seconds
FROM eval_runs r
JOIN datasets d ON d.id = r.dataset_id
-- a join, not a correlated subquery: Citus plans joins across shards, not correlated subqueries
LEFT JOIN (SELECT run_id, count(DISTINCT image_id) AS images FROM predictions GROUP BY run_id) n ON n.run_id = r.id;
""",
}


def _frozen_views_of(filename: str) -> dict[str, str]:
    """An earlier revision's frozen view copies (the downgrade restores them)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(filename[:-3], Path(__file__).with_name(filename))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.VIEWS


ALL_TABLES = REFERENCE_TABLES + COORDINATOR_TABLES + ["images"] + DISTRIBUTED_TABLES


def _array(names: list[str]) -> str:
    return "ARRAY[" + ", ".join(f"'{n}'" for n in names) + "]"


FUNCTIONS = f"""
CREATE FUNCTION clipvdb_recount(p_stage text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    -- One count per space, dataset and split (a distributed count on Citus); what the triggers
    -- keep on plain PostgreSQL, recomputed.
    DELETE FROM stage_counts WHERE stage = p_stage;
    EXECUTE format(
        'INSERT INTO stage_counts (stage, space_id, dataset_id, split, n_rows, n_projected)
         SELECT %L, e.space_id, e.dataset_id, e.split, e.n, coalesce(p.n, 0)
         FROM (SELECT space_id, dataset_id, split, count(*) AS n FROM %I GROUP BY 1, 2, 3) e
         LEFT JOIN (SELECT space_id, dataset_id, split, count(*) AS n FROM %I GROUP BY 1, 2, 3) p
           USING (space_id, dataset_id, split)',
        p_stage, 'embeddings_' || p_stage, 'projections_' || p_stage);
END $$;

CREATE FUNCTION clipvdb_distributed() RETURNS boolean LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF to_regclass('pg_catalog.pg_dist_partition') IS NULL THEN
        RETURN false;
    END IF;
    RETURN EXISTS (SELECT 1 FROM pg_catalog.pg_dist_partition WHERE logicalrelid = 'images'::regclass);
END $$;

CREATE FUNCTION clipvdb_distribute() RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    t text;
    s text;
    d text;
    placed int := 0;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') THEN
        RETURN 'no citus extension: nothing distributed';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_dist_node WHERE groupid <> 0 AND noderole = 'primary') THEN
        RETURN 'citus has no worker nodes yet: nothing distributed';
    END IF;
    -- DDL on reference tables after a parallel statement on a distributed one in the same
    -- transaction is refused; one connection per node avoids that.
    SET LOCAL citus.multi_shard_modify_mode TO 'sequential';
    FOR t, s IN SELECT tgrelid::regclass::text, tgname FROM pg_trigger
                WHERE NOT tgisinternal AND tgname LIKE '%\\_count\\_%' AND tgfoid::regproc::text LIKE 'clipvdb\\_count\\_%' LOOP
        EXECUTE format('DROP TRIGGER %I ON %I', s, t);
    END LOOP;
    ALTER TABLE images DROP CONSTRAINT IF EXISTS images_dataset_id_split_source_key;
    CREATE INDEX IF NOT EXISTS images_key ON images (dataset_id, split, source);
    ALTER TABLE predictions DROP CONSTRAINT IF EXISTS predictions_neighbor_id_fkey;
    ALTER TABLE predictions DROP CONSTRAINT IF EXISTS predictions_run_id_fkey;
    IF NOT EXISTS (
        SELECT 1 FROM unnest({_array(ALL_TABLES)}) AS u(name)
        WHERE NOT EXISTS (SELECT 1 FROM citus_tables c
                          WHERE c.table_name = u.name::regclass
                            AND (c.citus_table_type <> 'local' OR u.name = ANY ({_array(COORDINATOR_TABLES)})))
    ) THEN
        RETURN 'already distributed';
    END IF;
    -- Citus turns every table linked by a foreign key to a new reference table into a
    -- coordinator-local table; so the keys go first and come back once every table is placed.
    CREATE TEMP TABLE clipvdb_keys ON COMMIT DROP AS
        SELECT conrelid::regclass::text AS tbl, conname, pg_get_constraintdef(oid) AS def
        FROM pg_constraint
        WHERE contype = 'f' AND conrelid::regclass::text = ANY ({_array(ALL_TABLES)});
    FOR t, s IN SELECT tbl, conname FROM clipvdb_keys LOOP
        EXECUTE format('ALTER TABLE %I DROP CONSTRAINT %I', t, s);
    END LOOP;
    FOREACH t IN ARRAY {_array(REFERENCE_TABLES + ["images"] + DISTRIBUTED_TABLES)} LOOP
        IF EXISTS (SELECT 1 FROM citus_tables c WHERE c.table_name = t::regclass AND c.citus_table_type = 'local') THEN
            PERFORM undistribute_table(t::regclass);
        END IF;
    END LOOP;
    FOREACH t IN ARRAY {_array(REFERENCE_TABLES)} LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = t::regclass) THEN
            PERFORM create_reference_table(t::regclass);
            placed := placed + 1;
        END IF;
    END LOOP;
    FOREACH t IN ARRAY {_array(COORDINATOR_TABLES)} LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = t::regclass) THEN
            IF EXISTS (SELECT 1 FROM pg_dist_node WHERE groupid = 0) THEN
                PERFORM citus_add_local_table_to_metadata(t::regclass);
            ELSE  -- a coordinator not in its own metadata cannot hold Citus local tables
                PERFORM create_reference_table(t::regclass);
            END IF;
            placed := placed + 1;
        END IF;
    END LOOP;
    IF NOT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = 'images'::regclass) THEN
        PERFORM create_distributed_table('images', 'id');
        placed := placed + 1;
    END IF;
    FOREACH t IN ARRAY {_array(DISTRIBUTED_TABLES)} LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = t::regclass) THEN
            PERFORM create_distributed_table(t::regclass, 'image_id', colocate_with => 'images');
            placed := placed + 1;
        END IF;
    END LOOP;
    FOR t, s, d IN SELECT tbl, conname, def FROM clipvdb_keys LOOP
        EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I %s', t, s, d);
    END LOOP;
    RETURN format('%s tables placed', placed);
END $$;
"""


def upgrade() -> None:
    for name, text in VIEWS.items():
        op.execute(f"DROP VIEW IF EXISTS {name}")
        op.execute(text)
    op.execute(FUNCTIONS)
    op.execute("SELECT clipvdb_distribute()")


def downgrade() -> None:
    op.execute(
        """
        DO $$
        BEGIN
            IF clipvdb_distributed() THEN
                RAISE EXCEPTION 'the schema is distributed by Citus; it cannot go below revision 0008'
                    USING HINT = 'export what you need and start from a new database';
            END IF;
        END $$;
        DROP FUNCTION clipvdb_distribute();
        DROP FUNCTION clipvdb_distributed();
        DROP FUNCTION clipvdb_recount(text);
        """
    )
    op.execute("DROP VIEW IF EXISTS report_runs")
    op.execute(_frozen_views_of("0006_counts_timing.py")["report_runs"])
