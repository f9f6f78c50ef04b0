"""Clusterings: members, centres and the reads of the cluster pages."""

from __future__ import annotations

from psycopg import sql

from ..stages import Stage


def stage_vectors(stage: Stage) -> sql.Composed:
    """(image_id, label, embedding) of one space, dataset and split: %(space)s, %(dataset)s, %(split)s."""
    return sql.SQL(
        """SELECT e.image_id, i.label, e.embedding FROM {} e JOIN images i ON i.id = e.image_id
           WHERE e.space_id = %(space)s AND e.dataset_id = %(dataset)s AND e.split = %(split)s
           ORDER BY e.image_id"""
    ).format(sql.Identifier(stage.table))


INSERT_CLUSTERING = """INSERT INTO clusterings
    (stage, space_id, dataset_id, split, method, params, n_clusters, n_noise, fit_seconds)
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id"""
COPY_CLUSTER_MEMBERS = (
    "COPY cluster_members (clustering_id, image_id, cluster, distance) FROM STDIN WITH (FORMAT BINARY)"
)
CLUSTERING_EXISTS = "SELECT 1 FROM clusterings WHERE id = %s"
CLUSTER_CLASSES = """SELECT cluster, size, majority_class, purity::float8 FROM report_cluster_classes
    WHERE clustering_id = %s AND cluster >= 0 ORDER BY size DESC, cluster"""
NEAREST_MEMBERS = """SELECT image_id FROM cluster_members WHERE clustering_id = %s AND cluster = %s
    ORDER BY distance LIMIT %s"""


def clusterings(*, one: bool) -> sql.Composed:
    """Stored clusterings with their scores (report_cluster_purity), newest first; with `one`, the
    clustering %s only."""
    return sql.SQL(
        """SELECT clustering_id, stage, method, params, n, n_clusters, n_noise, fit_seconds, purity::float8,
                  adjusted_rand_index, normalized_mutual_info, sizes
           FROM report_cluster_purity{} ORDER BY clustering_id DESC"""
    ).format(sql.SQL(" WHERE clustering_id = %s" if one else ""))


def copy_centres(stage: Stage) -> sql.Composed:
    return sql.SQL("COPY {} (clustering_id, cluster, centre) FROM STDIN WITH (FORMAT BINARY)").format(
        sql.Identifier(f"cluster_centres_{stage.name}")
    )
