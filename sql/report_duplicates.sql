-- Near-duplicate pairs found by 'clipvdb duplicates': per embedding space and dataset, an image, its
-- nearest stored image of the split searched (other_split) and their distance, at most the scan's
-- threshold. same_label says whether the two share a class; a test image with a training duplicate
-- is a leak (its nearest neighbour answers from a copy of itself).
CREATE OR REPLACE VIEW report_duplicates AS
SELECT p.space_id,
       p.dataset_id,
       s.model,
       s.stage,
       d.name AS dataset,
       p.image_id,
       i.split,
       i.source,
       ci.name AS class,
       p.other_id,
       o.split AS other_split,
       o.source AS other_source,
       co.name AS other_class,
       p.distance,
       i.label = o.label AS same_label,
       p.threshold,
       p.found_at
FROM duplicate_pairs p
JOIN embedding_spaces s ON s.id = p.space_id
JOIN datasets d ON d.id = p.dataset_id
JOIN images i ON i.id = p.image_id
JOIN images o ON o.id = p.other_id
JOIN classes ci ON ci.dataset_id = i.dataset_id AND ci.label = i.label
JOIN classes co ON co.dataset_id = o.dataset_id AND co.label = o.label;
