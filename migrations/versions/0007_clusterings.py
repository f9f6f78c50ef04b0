"""Clusterings and learned maps: clusterings, cluster_members, centres per stage, learned_maps,
learned_<stage>, two cluster views, and report_accuracy with the searched space.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-22

`clipvdb cluster fit` groups one stage's stored vectors (one space, dataset and split); each
member's cluster and distance to its centre are stored, and the centres as vectors of the stage's
type. The view SQL below is a frozen copy of sql/*.sql as of this revision.
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

STAGE_TYPES = {"first": "halfvec(3072)", "second": "vector(1024)", "third": "halfvec(2048)", "origin": "vector(1024)"}

VIEWS = {
    "report_accuracy": """\
-- Accuracy by run and stage, complete runs only. space says which space was searched: raw (the
-- stored embeddings) or learned (the stage's learned map, clipvdb learn), so raw and learned runs
-- sit side by side.
CREATE OR REPLACE VIEW report_accuracy AS
SELECT p.run_id,
       p.stage,
       r.k,
       count(*) AS n,
       count(*) FILTER (WHERE p.predicted = p.true_label) AS correct,
       round(100.0 * count(*) FILTER (WHERE p.predicted = p.true_label) / count(*), 2) AS accuracy_pct,
       CASE WHEN r.params ? 'learned' AND r.params->'learned' <> 'null'::jsonb AND p.stage <> 'origin'
            THEN 'learned' ELSE 'raw' END AS space
FROM predictions p
JOIN eval_runs r ON r.id = p.run_id
WHERE r.status = 'complete'
GROUP BY p.run_id, p.stage, r.k, r.params;
""",
    "report_cluster_classes": """\
-- Per clustering and cluster: its size, its majority class, the share of that class (purity), and
-- the class mix as {class: count}. Cluster -1 holds DBSCAN's noise points.
CREATE OR REPLACE VIEW report_cluster_classes AS
WITH counts AS (
    SELECT m.clustering_id, m.cluster, c.name AS class_name, count(*) AS n
    FROM cluster_members m
    JOIN images i ON i.id = m.image_id
    JOIN classes c ON c.dataset_id = i.dataset_id AND c.label = i.label
    GROUP BY m.clustering_id, m.cluster, c.name
), ranked AS (
    SELECT *, row_number() OVER (PARTITION BY clustering_id, cluster ORDER BY n DESC, class_name) AS r,
           sum(n) OVER (PARTITION BY clustering_id, cluster) AS size
    FROM counts
)
SELECT r.clustering_id,
       r.cluster,
       r.size::bigint AS size,
       r.class_name AS majority_class,
       r.n AS majority_n,
       round(r.n::numeric / r.size, 4) AS purity,
       (SELECT jsonb_object_agg(c2.class_name, c2.n ORDER BY c2.n DESC)
        FROM counts c2 WHERE c2.clustering_id = r.clustering_id AND c2.cluster = r.cluster) AS class_mix
FROM ranked r
WHERE r.r = 1;
""",
    "report_cluster_purity": """\
-- Per clustering: how well its clusters match the labels. purity = share of members in their
-- cluster's majority class; adjusted Rand index and normalised mutual information (arithmetic
-- normalisation, as scikit-learn's defaults) over the contingency table of clusters and labels.
-- DBSCAN's noise (cluster -1) counts as one cluster here, as scikit-learn's scores treat it.
CREATE OR REPLACE VIEW report_cluster_purity AS
WITH cont AS (
    SELECT m.clustering_id, m.cluster, i.label, count(*)::float8 AS n
    FROM cluster_members m
    JOIN images i ON i.id = m.image_id
    GROUP BY m.clustering_id, m.cluster, i.label
), rows_ AS (
    SELECT clustering_id, cluster, sum(n) AS a, max(n) AS top FROM cont GROUP BY clustering_id, cluster
), cols AS (
    SELECT clustering_id, label, sum(n) AS b FROM cont GROUP BY clustering_id, label
), tot AS (
    SELECT clustering_id, sum(a) AS n FROM rows_ GROUP BY clustering_id
), sums AS (
    SELECT t.clustering_id,
           t.n,
           (SELECT sum(c.n * (c.n - 1) / 2) FROM cont c WHERE c.clustering_id = t.clustering_id) AS idx,
           (SELECT sum(r.a * (r.a - 1) / 2) FROM rows_ r WHERE r.clustering_id = t.clustering_id) AS sa,
           (SELECT sum(k.b * (k.b - 1) / 2) FROM cols k WHERE k.clustering_id = t.clustering_id) AS sb,
           (SELECT sum(r.top) FROM rows_ r WHERE r.clustering_id = t.clustering_id) AS majority,
           (SELECT sum(c.n / t.n * ln(t.n * c.n / (r.a * k.b)))
            FROM cont c
            JOIN rows_ r ON r.clustering_id = c.clustering_id AND r.cluster = c.cluster
            JOIN cols k ON k.clustering_id = c.clustering_id AND k.label = c.label
            WHERE c.clustering_id = t.clustering_id) AS mi,
           (SELECT -sum(r.a / t.n * ln(r.a / t.n)) FROM rows_ r WHERE r.clustering_id = t.clustering_id) AS hu,
           (SELECT -sum(k.b / t.n * ln(k.b / t.n)) FROM cols k WHERE k.clustering_id = t.clustering_id) AS hv
    FROM tot t
)
SELECT g.id AS clustering_id,
       g.stage,
       g.method,
       g.params,
       s.n::bigint AS n,
       g.n_clusters,
       g.n_noise,
       round((s.majority / s.n)::numeric, 4) AS purity,
       CASE WHEN (s.sa + s.sb) / 2 = s.sa * s.sb / (s.n * (s.n - 1) / 2) THEN 1.0
            ELSE (s.idx - s.sa * s.sb / (s.n * (s.n - 1) / 2))
                 / ((s.sa + s.sb) / 2 - s.sa * s.sb / (s.n * (s.n - 1) / 2)) END AS adjusted_rand_index,
       CASE WHEN s.hu + s.hv = 0 THEN 1.0 ELSE s.mi / ((s.hu + s.hv) / 2) END AS normalized_mutual_info,
       (SELECT array_agg(r.a::bigint ORDER BY r.a DESC) FROM rows_ r WHERE r.clustering_id = g.id) AS sizes,
       g.fit_seconds,
       g.created_at
FROM clusterings g
JOIN sums s ON s.clustering_id = g.id;
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


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE clusterings (
            id serial PRIMARY KEY,
            stage text NOT NULL CHECK (stage IN ('first', 'second', 'third', 'origin')),
            space_id int NOT NULL REFERENCES embedding_spaces (id) ON DELETE CASCADE,
            dataset_id int NOT NULL REFERENCES datasets (id) ON DELETE CASCADE,
            split text NOT NULL,
            method text NOT NULL CHECK (method IN ('kmeans', 'agglomerative', 'dbscan')),
            params jsonb NOT NULL DEFAULT '{}',
            n_clusters int NOT NULL,
            n_noise int NOT NULL DEFAULT 0,
            fit_seconds double precision,
            created_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE TABLE cluster_members (
            clustering_id int NOT NULL REFERENCES clusterings (id) ON DELETE CASCADE,
            image_id bigint NOT NULL REFERENCES images (id) ON DELETE CASCADE,
            cluster int NOT NULL,
            distance double precision,
            PRIMARY KEY (clustering_id, image_id)
        );
        CREATE INDEX cluster_members_cluster ON cluster_members (clustering_id, cluster, distance);
        COMMENT ON COLUMN cluster_members.cluster IS 'cluster number from 0; -1 is DBSCAN noise';
        COMMENT ON COLUMN cluster_members.distance IS 'L2 distance to the cluster centre (NULL for noise)';
        """
    )
    for stage, sql_type in STAGE_TYPES.items():
        op.execute(
            f"""
            CREATE TABLE cluster_centres_{stage} (
                clustering_id int NOT NULL REFERENCES clusterings (id) ON DELETE CASCADE,
                cluster int NOT NULL,
                centre {sql_type} NOT NULL,
                PRIMARY KEY (clustering_id, cluster)
            )
            """
        )
    op.execute(
        """
        CREATE TABLE learned_maps (
            stage text PRIMARY KEY CHECK (stage IN ('first', 'second', 'third', 'origin')),
            method text NOT NULL,
            dims int NOT NULL CHECK (dims >= 1),
            mean bytea NOT NULL,
            matrix bytea NOT NULL,
            fitted_rows bigint NOT NULL,
            params jsonb NOT NULL DEFAULT '{}',
            fit_seconds double precision,
            fitted_at timestamptz NOT NULL DEFAULT now()
        );
        COMMENT ON TABLE learned_maps IS
            'A learned linear metric per stage, fitted on the training split: learned = (embedding - mean) @ matrix^T';
        """
    )
    for stage in STAGE_TYPES:
        op.execute(
            f"""
            CREATE TABLE learned_{stage} (
                space_id int NOT NULL,
                image_id bigint NOT NULL,
                dataset_id int NOT NULL,
                split text NOT NULL,
                -- the width is set when a map is fitted (ALTER ... TYPE vector(D))
                vec vector NOT NULL,
                PRIMARY KEY (space_id, image_id),
                FOREIGN KEY (space_id, image_id) REFERENCES embeddings_{stage} (space_id, image_id) ON DELETE CASCADE
            )
            """
        )
    for name, text in VIEWS.items():
        if name == "report_accuracy":
            op.execute("DROP VIEW IF EXISTS report_accuracy")
        op.execute(text)


def downgrade() -> None:
    for name in VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {name}")
    op.execute(_frozen_views_of("0002_report_views.py")["report_accuracy"])
    for stage in STAGE_TYPES:
        op.execute(f"DROP TABLE IF EXISTS cluster_centres_{stage}, learned_{stage}")
    op.execute("DROP TABLE IF EXISTS learned_maps")
    op.execute("DROP TABLE IF EXISTS cluster_members, clusterings")
