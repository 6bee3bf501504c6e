"""Stratified splits: a partition of the rows that keeps each class's share."""

from guardtune.data.splits import stratified_split


def test_stratified_split_partitions_and_keeps_class_shares() -> None:
    labels = ["none"] * 400 + ["asking"] * 300 + ["giving"] * 300
    train, val, test = stratified_split(labels, (0.8, 0.1, 0.1), seed=3)
    assert sorted([*train, *val, *test]) == list(range(1000))
    assert (len(train), len(val), len(test)) == (800, 100, 100)
    assert sum(labels[i] == "none" for i in test) == 40
    again = stratified_split(labels, (0.8, 0.1, 0.1), seed=3)
    assert all((a == b).all() for a, b in zip((train, val, test), again, strict=True))
