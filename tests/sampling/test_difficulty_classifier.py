"""The online pass@k classifier: bins, history, hysteresis at the true shared edge (algorithms.md §11.2)."""

import pytest

from rlreason.sampling.classifier import DifficultyClassifier


def with_rate(clf, uid, ones, total):
    clf.records[uid] = [1.0] * ones + [0.0] * (total - ones)


def test_bins_history_and_unseen_prompts():
    clf = DifficultyClassifier(num_bins=10, history=4, hysteresis=0.0)
    assert clf.classify([7]) == [0]  # unseen: p = 0, the hardest bin
    clf.record([1, 1, 1, 1, 1], [1, 0, 1, 1, 1])
    assert clf.records[1] == [0.0, 1.0, 1.0, 1.0]  # only the last 4 kept
    assert clf.rate(1) == 0.75 and clf.classify([1]) == [7]
    clf.record([2], [1.0])
    assert clf.classify([2]) == [9]  # p = 1 lands in the top bin
    custom = DifficultyClassifier(edges=[0.4, 0.75], history=0, hysteresis=0.0)
    assert custom.num_bins == 3 and [custom.raw_bin(p) for p in (0.0, 0.39, 0.4, 0.74, 0.75, 1.0)] == [0, 0, 1, 1, 2, 2]


def test_hysteresis_uses_the_true_shared_edge():
    clf = DifficultyClassifier(num_bins=10, history=0, hysteresis=0.03)
    with_rate(clf, 0, 50, 100)
    assert clf.classify([0]) == [5]
    with_rate(clf, 0, 48, 100)
    assert clf.classify([0]) == [5]  # 0.48 > 0.5 - 0.03: stays
    with_rate(clf, 0, 46, 100)
    assert clf.classify([0]) == [4]  # 0.46 <= 0.47: moves down
    with_rate(clf, 0, 52, 100)
    assert clf.classify([0]) == [4]  # 0.52 < 0.5 + 0.03: stays
    with_rate(clf, 0, 53, 100)
    assert clf.classify([0]) == [5]


def test_reference_compat_edge_is_one_bin_too_low_moving_down():
    clf = DifficultyClassifier(num_bins=10, history=0, hysteresis=0.03, hysteresis_compat=True)
    with_rate(clf, 0, 50, 100)
    clf.classify([0])
    # The reference compares with raw_bin / B, the lower edge of the new bin, which p is at or above by
    # definition: with equal-width bins a prompt never moves down at all, however low p falls.
    for ones in (46, 37, 27, 0):
        with_rate(clf, 0, ones, 100)
        assert clf.classify([0]) == [5]
    true_edge = DifficultyClassifier(num_bins=10, history=0, hysteresis=0.03)
    with_rate(true_edge, 0, 50, 100)
    true_edge.classify([0])
    with_rate(true_edge, 0, 37, 100)
    assert true_edge.classify([0]) == [3]  # edge above bin 3 is 0.4: 0.37 <= 0.4 - 0.03


def test_exclude_extremes_and_state_round_trip():
    clf = DifficultyClassifier(edges=[0.4, 0.75], history=50, exclude_extremes=True)
    clf.record([1, 2, 3, 3], [1, 0, 1, 0])
    assert clf.classify([1, 2, 3]) == [3, 3, 1]  # p in {0, 1} -> the extra bin
    again = DifficultyClassifier(edges=[0.4, 0.75], history=50, exclude_extremes=True)
    again.load_state_dict(clf.state_dict())
    assert again.classify([1, 2, 3]) == [3, 3, 1] and again.last == clf.last


def test_bad_edges_are_refused():
    with pytest.raises(ValueError, match="edges"):
        DifficultyClassifier(edges=[0.5, 1.2])
