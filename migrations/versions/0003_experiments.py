"""Search-time experiments: experiments and experiment_results tables, report_experiments view.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22

The view SQL is a frozen copy of sql/report_experiments.sql as of this revision.
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

VIEWS = {
    "report_experiments": """\
-- Search-time experiments: recall and speed per stored-set size and index setting.
CREATE OR REPLACE VIEW report_experiments AS
SELECT x.id AS experiment_id,
       x.stage,
       x.model,
       x.weights,
       r.size,
       r.method,
       r.params,
       r.queries,
       r.recall_at_1,
       r.recall_at_10,
       r.mean_ms,
       r.p95_ms,
       round((1000.0 / nullif(r.mean_ms, 0))::numeric, 1) AS queries_per_s,
       r.build_s,
       r.index_bytes
FROM experiments x
JOIN experiment_results r ON r.experiment_id = x.id;
""",
}


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE experiments (
            id serial PRIMARY KEY,
            stage text NOT NULL CHECK (stage IN ('first', 'second', 'third', 'origin')),
            model text NOT NULL,
            weights text NOT NULL,
            metric text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE TABLE experiment_results (
            experiment_id int NOT NULL REFERENCES experiments(id) ON DELETE CASCADE,
            size int NOT NULL,
            method text NOT NULL,
            params jsonb NOT NULL DEFAULT '{}',
            queries int NOT NULL,
            recall_at_1 double precision NOT NULL,
            recall_at_10 double precision NOT NULL,
            mean_ms double precision NOT NULL,
            p95_ms double precision NOT NULL,
            build_s double precision,
            index_bytes bigint
        );
        """
    )
    for sql in VIEWS.values():
        op.execute(sql)


def downgrade() -> None:
    for name in VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {name}")
    op.execute("DROP TABLE IF EXISTS experiment_results, experiments")
