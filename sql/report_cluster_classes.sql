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
