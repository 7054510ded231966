"""Retrieval metrics against brute-force loops, hand-computed cases and simulation."""

import numpy as np
import pytest
import torch

from diffusionret.evaluation.metrics import (
    chance_metrics,
    faithful_msvd_groups,
    flatten_metrics,
    recall_metrics,
    retrieval_metrics,
    retrieval_ranks,
    t2v_metrics,
    v2t_metrics,
)

KS = (1, 5, 10, 50)


# ---------------------------------------------------------------- independent reference (plain python loops)
def brute_rank(row, gt, ties):
    """Rank of row[gt]: strictly higher + other equal (pessimistic) or + half of them (average)."""
    higher = sum(1 for s in row if s > row[gt])
    equal = sum(1 for j, s in enumerate(row) if j != gt and s == row[gt])
    return higher + equal if ties == "pessimistic" else higher + equal / 2


def brute_recall(ranks):
    """R@K, MdR, MnR written out with loops and a hand median."""
    n = len(ranks)
    out = {f"R{k}": 100.0 * sum(1 for r in ranks if r < k) / n for k in KS}
    s = sorted(ranks)
    median = s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2
    out["MdR"], out["MnR"] = median + 1, sum(ranks) / n + 1
    return out


def brute_t2v(scores, cv, ties="pessimistic"):
    return brute_recall([brute_rank(list(scores[c]), cv[c], ties) for c in range(len(cv))])


def brute_v2t(scores, cv, ties="pessimistic"):
    """scores are (captions, videos); group score of video v for group g = max over captions of g."""
    num_videos = scores.shape[1]
    ranks = []
    for v in range(num_videos):
        group_scores = [max(scores[c][v] for c in range(len(cv)) if cv[c] == g) for g in range(num_videos)]
        ranks.append(brute_rank(group_scores, v, ties))
    return brute_recall(ranks)


def assert_metrics_close(got, want):
    assert set(got) == set(want)
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-9), key


# ---------------------------------------------------------------- ranks and the tie convention
def test_hand_built_ranks_and_both_tie_conventions():
    scores = np.array([
        [0.9, 0.1, 0.5, 0.2],  # gt 0: top -> 0
        [0.3, 0.3, 0.3, 0.3],  # gt 1: three others tie -> pessimistic 3, average 1.5
        [0.8, 0.2, 0.5, 0.6],  # gt 2: 0.8 and 0.6 above -> 2
        [0.5, 0.5, 0.1, 0.0],  # gt 0: one other ties at the top -> pessimistic 1, average 0.5
    ], dtype=np.float32)
    gt = np.array([0, 1, 2, 0])
    assert retrieval_ranks(scores, gt).tolist() == [0, 3, 2, 1]
    assert retrieval_ranks(scores, gt, ties="average").tolist() == [0, 1.5, 2, 0.5]
    # average counts the top tie as an R@1 hit; pessimistic never does
    assert recall_metrics(retrieval_ranks(scores, gt))["R1"] == 25.0
    assert recall_metrics(retrieval_ranks(scores, gt, ties="average"))["R1"] == 50.0


@pytest.mark.parametrize("ties", ["pessimistic", "average"])
@pytest.mark.parametrize("chunk_size", [1, 2, 3, 5, 1000])
def test_ranks_match_brute_force_with_ties(ties, chunk_size):
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(11, 7)).astype(np.float32)  # small range -> many ties
    gt = rng.integers(0, 7, size=11)
    want = [brute_rank(list(scores[i]), gt[i], ties) for i in range(11)]
    assert retrieval_ranks(scores, gt, chunk_size=chunk_size, ties=ties).tolist() == want


def test_boolean_relation_ranks_best_positive_among_negatives():
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 5, size=(9, 6)).astype(np.float64)
    relation = rng.random((9, 6)) < 0.3
    relation[np.arange(9), rng.integers(0, 6, size=9)] = True  # at least one positive per row
    want = []
    for i in range(9):
        best = max(scores[i][j] for j in range(6) if relation[i][j])
        negatives = [scores[i][j] for j in range(6) if not relation[i][j]]
        want.append(sum(1 for s in negatives if s > best) + sum(1 for s in negatives if s == best))
    for chunk_size in (1, 4, 100):
        assert retrieval_ranks(scores, relation, chunk_size=chunk_size).tolist() == want


def test_recall_metrics_hand_values():
    got = recall_metrics([0, 2, 1, 7, 60])
    assert got == {"R1": 20.0, "R5": 60.0, "R10": 80.0, "R50": 80.0, "MdR": 3.0, "MnR": 15.0}


# ---------------------------------------------------------------- t2v / v2t with multi-caption grouping
@pytest.mark.parametrize("ties", ["pessimistic", "average"])
def test_multi_caption_uneven_shuffled_matches_brute_force(ties):
    rng = np.random.default_rng(2)
    cv = np.array([0, 0, 0, 1, 2, 2, 3, 4, 4, 4, 4])  # 3, 1, 2, 1, 4 captions
    cv = cv[rng.permutation(len(cv))]  # captions of one video need not be contiguous
    scores = rng.integers(0, 6, size=(len(cv), 5)).astype(np.float32)
    for chunk_size in (1, 2, 5, 7, 1000):  # v2t: 1, 1, 2, 3, all video rows per chunk
        assert_metrics_close(t2v_metrics(scores, cv, chunk_size=chunk_size, ties=ties), brute_t2v(scores, cv, ties))
        got = v2t_metrics(scores, cv, orientation="text_rows", chunk_size=chunk_size, ties=ties)
        assert_metrics_close(got, brute_v2t(scores, cv, ties))
        got = v2t_metrics(scores.T.copy(), cv, orientation="video_rows", chunk_size=chunk_size, ties=ties)
        assert_metrics_close(got, brute_v2t(scores, cv, ties))


def test_v2t_one_caption_per_video_ranks_captions():
    rng = np.random.default_rng(3)
    cv = rng.permutation(6)  # caption c describes video cv[c]
    scores = rng.random((6, 6))
    ranks = []
    for v in range(6):
        own_caption = int(np.flatnonzero(cv == v)[0])
        ranks.append(brute_rank([scores[c][v] for c in range(6)], own_caption, "pessimistic"))
    assert_metrics_close(v2t_metrics(scores, cv, orientation="text_rows"), brute_recall(ranks))


def test_v2t_orientation_is_required_and_checked():
    scores = np.eye(3)
    with pytest.raises(TypeError):
        v2t_metrics(scores, [0, 1, 2])
    with pytest.raises(ValueError, match="orientation"):
        v2t_metrics(scores, [0, 1, 2], orientation="rows")


def test_retrieval_metrics_uses_separate_v2t_matrix():
    rng = np.random.default_rng(4)
    cv = np.array([0, 0, 1, 2, 2, 2])
    s_t2v, s_v2t = rng.random((6, 3)), rng.random((3, 6))  # (Q, V) and (V, Q), unrelated on purpose
    got = retrieval_metrics(s_t2v, cv, scores_v2t=s_v2t)
    assert_metrics_close(got["t2v"], brute_t2v(s_t2v, cv))
    assert_metrics_close(got["v2t"], brute_v2t(s_v2t.T, cv))
    assert_metrics_close(retrieval_metrics(s_t2v, cv)["v2t"], brute_v2t(s_t2v, cv))


def test_nan_raises_naming_the_row():
    scores = np.random.default_rng(5).random((5, 4))
    scores[3, 2] = np.nan
    with pytest.raises(ValueError, match="row 3 contains NaN"):
        retrieval_ranks(scores, np.zeros(5, dtype=int), chunk_size=2)
    with pytest.raises(ValueError, match="row 3 contains NaN"):
        t2v_metrics(scores, [0, 1, 2, 3, 0])
    with pytest.raises(ValueError, match="video row.*row 2 contains NaN"):  # NaN in video 2's column
        v2t_metrics(scores, [0, 1, 2, 3, 0], orientation="text_rows")


# ---------------------------------------------------------------- the released MSVD grouping (off-by-one)
# 3 videos with 2, 3, 2 captions. Last captions: c1 (video 0), c4 (video 1), c6 (video 2).
# Released grouping: group0 = [0, 1) = {c0}, group1 = [1, 4) = {c1, c2, c3}, group2 = [4, 6) = {c4, c5};
# so c1 -> video 1, c4 -> video 2, c6 dropped.
FAITHFUL_CV = [0, 0, 1, 1, 1, 2, 2]
FAITHFUL_SCORES = np.array([
    [0.9, 0.1, 0.2],   # c0 video 0
    [0.8, 0.5, 0.3],   # c1 video 0 (released: gt 1 -> rank 1)
    [0.2, 0.7, 0.1],   # c2 video 1
    [0.1, 0.6, 0.4],   # c3 video 1
    [0.2, 0.9, 0.5],   # c4 video 1 (released: gt 2 -> rank 1)
    [0.1, 0.2, 0.8],   # c5 video 2
    [0.0, 0.0, 0.95],  # c6 video 2 (released: dropped)
])


def test_faithful_groups_hand_case():
    grouping = faithful_msvd_groups(FAITHFUL_CV)
    assert grouping.caption_video.tolist() == [0, 1, 1, 1, 2, 2, -1]
    assert grouping.kept.tolist() == [True] * 6 + [False]


def test_faithful_metrics_hand_case():
    # t2v ranks under the released grouping: [0, 1, 0, 0, 1, 0] (6 captions)
    got = t2v_metrics(FAITHFUL_SCORES, FAITHFUL_CV, faithful_msvd_grouping=True)
    assert got["R1"] == pytest.approx(400 / 6) and got["R5"] == 100.0
    assert got["MdR"] == 1.0 and got["MnR"] == pytest.approx(1 + 2 / 6)
    assert t2v_metrics(FAITHFUL_SCORES, FAITHFUL_CV)["R1"] == 100.0  # correct grouping: all top-1
    # v2t group maxima (rows = videos, columns = groups {c0}, {c1,c2,c3}, {c4,c5}):
    # video0 [0.9, 0.8, 0.2] -> 0; video1 [0.1, 0.7, 0.9] -> 1; video2 [0.2, 0.4, 0.8] -> 0
    got = v2t_metrics(FAITHFUL_SCORES, FAITHFUL_CV, orientation="text_rows", faithful_msvd_grouping=True)
    assert got["R1"] == pytest.approx(200 / 3) and got["MnR"] == pytest.approx(1 + 1 / 3)
    assert v2t_metrics(FAITHFUL_SCORES, FAITHFUL_CV, orientation="text_rows")["R1"] == 100.0


def test_faithful_grouping_needs_contiguous_captions():
    with pytest.raises(ValueError, match="video 0 appears in several blocks"):
        faithful_msvd_groups([0, 1, 0, 2])


# ---------------------------------------------------------------- chance, names, inputs
def test_chance_metrics_against_simulation():
    rng = np.random.default_rng(6)
    num_videos = 20
    scores = rng.random((20000, num_videos))
    ranks = (scores > scores[:, :1]).sum(axis=1)  # rank of candidate 0 under random scores
    want = chance_metrics(num_videos)
    assert want["R1"] == pytest.approx(100 * np.mean(ranks < 1), abs=0.6)
    assert want["R5"] == pytest.approx(100 * np.mean(ranks < 5), abs=1.0)
    assert want["R50"] == 100.0
    assert want["MnR"] == pytest.approx(ranks.mean() + 1, abs=0.15)
    trials = rng.integers(0, num_videos, size=(4000, 11))  # 4000 evaluations of 11 queries each
    assert want["MdR"] == pytest.approx(np.mean(np.median(trials, axis=1) + 1), abs=0.2)
    small = chance_metrics(num_videos, num_queries=11)
    assert small["R1_std"] == pytest.approx(np.std(100 * np.mean(trials < 1, axis=1)), rel=0.1)


def test_flatten_metrics_names():
    nested = retrieval_metrics(np.eye(3), [0, 1, 2])
    names = set(flatten_metrics(nested))
    assert names == {f"{d}/{m}" for d in ("t2v", "v2t") for m in ("R1", "R5", "R10", "R50", "MdR", "MnR")}
    assert "t2v_qbnorm/R1" in flatten_metrics(nested, {"t2v": "t2v_qbnorm"})
    with pytest.raises(ValueError, match="not in the metrics"):
        flatten_metrics(nested, {"t2x": "oops"})


def test_torch_input_and_no_mutation():
    rng = np.random.default_rng(7)
    scores = rng.random((8, 4)).astype(np.float32)
    cv = np.array([0, 1, 2, 3, 0, 1, 2, 3])
    before = scores.copy()
    want = retrieval_metrics(scores, cv)
    assert np.array_equal(scores, before)
    got = retrieval_metrics(torch.from_numpy(scores), torch.from_numpy(cv))
    assert got == want
    bf16 = torch.from_numpy(scores).bfloat16()
    assert_metrics_close(t2v_metrics(bf16, cv), brute_t2v(bf16.float().numpy(), cv))
