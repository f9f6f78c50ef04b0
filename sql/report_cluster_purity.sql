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
