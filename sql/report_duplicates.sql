-- Near-duplicate pairs found by 'clipvdb duplicates': per embedding space and dataset, an image, its
-- nearest stored image of the split searched (other_split) and their distance, at most the scan's
-- threshold. same_label says whether the two share a class; a test image with a training duplicate
-- is a leak (its nearest neighbour answers from a copy of itself).
-- The pairs meet their first image in a materialized CTE and their second after it: on Citus the two
-- images of a pair sit on different shards, and a join of the distributed images with itself through
-- the pairs would need repartitioning; the CTE's rows (the pairs, small) go to every shard instead.
CREATE OR REPLACE VIEW report_duplicates AS
WITH p AS MATERIALIZED (
    SELECT p.*, i.split AS image_split, i.source, i.label, i.dataset_id AS image_dataset
    FROM duplicate_pairs p
    JOIN images i ON i.id = p.image_id
)
SELECT p.space_id,
       p.dataset_id,
       s.model,
       s.stage,
       d.name AS dataset,
       p.image_id,
       p.image_split AS split,
       p.source,
       ci.name AS class,
       p.other_id,
       o.split AS other_split,
       o.source AS other_source,
       co.name AS other_class,
       p.distance,
       p.label = o.label AS same_label,
       p.threshold,
       p.found_at
FROM p
JOIN images o ON o.id = p.other_id
JOIN embedding_spaces s ON s.id = p.space_id
JOIN datasets d ON d.id = p.dataset_id
JOIN classes ci ON ci.dataset_id = p.image_dataset AND ci.label = p.label
JOIN classes co ON co.dataset_id = o.dataset_id AND co.label = o.label;
