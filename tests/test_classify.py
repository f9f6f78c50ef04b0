"""Classify: the k-nearest-neighbor majority vote, in the library and through `clipvdb classify --k`."""

import json

from clipvdb.knn import Neighbor, vote


def test_vote_takes_the_majority_and_breaks_ties_by_the_nearest():
    n = lambda i, label, d: Neighbor(i, label, f"s{i}", d)  # noqa: E731
    assert vote([n(1, 0, 1.0), n(2, 1, 1.5), n(3, 1, 2.0)])[0] == 1  # two b's beat the nearer a
    label, best = vote([n(1, 0, 3.0), n(2, 1, 1.0), n(3, 0, 4.0), n(4, 1, 2.0)])  # 2-2 tie
    assert label == 1 and best.image_id == 2  # the tie goes to the label of the nearest neighbor
    assert vote([n(5, 1, 2.0), n(6, 0, 2.0)])[0] == 0  # equal distances: the lower label


def test_k_votes_through_the_cli(cli, syn_data):
    cli("ingest", "--stage", "first", "--data", syn_data, "--workers", "0")
    img = syn_data / "test" / "red-circle" / "0000.png"
    pred = json.loads(cli("classify", img, "--stage", "first", "--k", "5", "--exact", "--json").stdout)[0]
    labels = [nb["label"] for nb in pred["neighbors"]]
    neighbors = [Neighbor(nb["image_id"], nb["label"], nb["source"], nb["distance"]) for nb in pred["neighbors"]]
    assert len(labels) == 5 and pred["predicted"] == vote(neighbors)[0]
    assert pred["nearest_distance"] == pred["neighbors"][0]["distance"] <= pred["distance"]


def test_weighted_and_dino_votes_against_a_hand_computation():
    import math

    # label 0: two far neighbors; label 1: one near neighbor
    near = Neighbor(1, 1, "a", 0.5, similarity=0.90)
    far = [Neighbor(2, 0, "b", 2.0, similarity=0.85), Neighbor(3, 0, "c", 3.0, similarity=0.80)]
    found = [near, *far]
    assert vote(found, "majority")[0] == 0  # two votes beat one
    # weighted: label 1 scores 1/0.5 = 2.0, label 0 scores 1/2 + 1/3 = 0.833
    assert 1 / 0.5 > 1 / 2.0 + 1 / 3.0 and vote(found, "weighted")[0] == 1
    # dino: exp(0.90 / 0.07) = 3.8e5 against exp(0.85 / 0.07) + exp(0.80 / 0.07) = 2.8e5
    one, zero = math.exp(0.90 / 0.07), math.exp(0.85 / 0.07) + math.exp(0.80 / 0.07)
    assert one > zero and vote(found, "dino")[0] == 1
    closer = [Neighbor(1, 1, "a", 0.5, similarity=0.80), *far]  # now label 0's similarities win
    assert math.exp(0.80 / 0.07) < zero and vote(closer, "dino")[0] == 0
    label, best = vote(found, "weighted")
    assert best is near  # the nearest neighbor of the winning label comes with it


def test_several_k_are_for_evaluate(cli, syn_data):
    cli("ingest", "--stage", "first", "--data", syn_data, "--workers", "0")
    img = syn_data / "test" / "red-circle" / "0000.png"
    result = cli("classify", img, "--stage", "first", "--k", "1,5", expect=2)
    assert "several --k values are for evaluate" in result.output
