"""Classify: the k-nearest-neighbour majority vote, in the library and through `clipvdb classify --k`."""

import json

from clipvdb.knn import Neighbor, vote


def test_vote_takes_the_majority_and_breaks_ties_by_the_nearest():
    n = lambda i, label, d: Neighbor(i, label, f"s{i}", d)  # noqa: E731
    assert vote([n(1, 0, 1.0), n(2, 1, 1.5), n(3, 1, 2.0)])[0] == 1  # two b's beat the nearer a
    label, best = vote([n(1, 0, 3.0), n(2, 1, 1.0), n(3, 0, 4.0), n(4, 1, 2.0)])  # 2-2 tie
    assert label == 1 and best.image_id == 2  # the tie goes to the label of the nearest neighbour
    assert vote([n(5, 1, 2.0), n(6, 0, 2.0)])[0] == 0  # equal distances: the lower label


def test_k_votes_through_the_cli(cli, syn_data):
    cli("ingest", "--stage", "first", "--data", syn_data, "--workers", "0")
    img = syn_data / "test" / "red-circle" / "0000.png"
    pred = json.loads(cli("classify", img, "--stage", "first", "--k", "5", "--exact", "--json").stdout)[0]
    labels = [nb["label"] for nb in pred["neighbors"]]
    neighbours = [Neighbor(nb["image_id"], nb["label"], nb["source"], nb["distance"]) for nb in pred["neighbors"]]
    assert len(labels) == 5 and pred["predicted"] == vote(neighbours)[0]
    assert pred["nearest_distance"] == pred["neighbors"][0]["distance"] <= pred["distance"]
