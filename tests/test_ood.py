"""OOD scores, detection metrics and selective retrieval against hand-computed values and brute force."""

import itertools
import math

import numpy as np
import pytest

from diffusionret.evaluation.ood import (OOD_SCORES, QueryEvidence, aurc, available_scores, compute_scores,
                              detection_metrics, fpr_at_tpr, kendall_tau, risk_coverage)


def brute_auroc(id_scores, ood_scores):
    """P(ID score > OOD score) + 1/2 P(equal), over every pair."""
    pairs = [(1.0 if a > b else 0.5 if a == b else 0.0) for a in id_scores for b in ood_scores]
    return sum(pairs) / len(pairs)


# ---------------------------------------------------------------------------------------------------
# detection metrics
# ---------------------------------------------------------------------------------------------------


def test_detection_metrics_hand_computed():
    # ID {3, 1}, OOD {2, 0}: pairs (3>2, 3>0, 1<2, 1>0) -> AUROC 3/4
    # ranking 3(ID) 2(OOD) 1(ID) 0(OOD): AP = (1/1 + 2/3) / 2 = 5/6
    # keeping 95% of ID needs threshold 1: OOD 2 is accepted, 0 is not -> FPR95 = 1/2
    out = detection_metrics([3.0, 1.0], [2.0, 0.0])
    assert out["auroc"] == pytest.approx(0.75)
    assert out["aupr"] == pytest.approx(5 / 6)
    assert out["fpr95"] == pytest.approx(0.5)


def test_detection_metrics_with_ties():
    # ID {2, 1, 1}, OOD {1, 0}: pairs 2>1, 2>0, 1=1 (x2 -> 1/2 each), 1>0 (x2) -> (2 + 1 + 2) / 6
    # AP: threshold 2 -> P=1, R=1/3; threshold 1 (3 ID, 1 OOD kept) -> P=3/4, R=1: AP = 1/3*1 + 2/3*3/4 = 5/6
    # FPR95: every ID needs threshold 1, which accepts OOD 1 -> 1/2
    id_scores, ood_scores = [2.0, 1.0, 1.0], [1.0, 0.0]
    out = detection_metrics(id_scores, ood_scores)
    assert out["auroc"] == pytest.approx(5 / 6) == pytest.approx(brute_auroc(id_scores, ood_scores))
    assert out["aupr"] == pytest.approx(5 / 6)
    assert out["fpr95"] == pytest.approx(0.5)


def test_all_equal_scores_are_chance_not_an_error():
    out = detection_metrics(np.full(3, 0.7), np.full(5, 0.7))
    assert out["auroc"] == 0.5
    assert out["aupr"] == pytest.approx(3 / 8)  # one threshold: precision = the ID share, recall 1
    assert out["fpr95"] == 1.0


def test_fpr95_counts_the_threshold_that_keeps_95_percent():
    id_scores = np.arange(20, dtype=float) + 10  # 10 .. 29: 95% of them (19) are >= 11
    ood_scores = np.array([0.0, 10.5, 11.0, 12.0, 40.0])  # >= 11: 11, 12, 40 -> 3 of 5
    assert fpr_at_tpr(id_scores, ood_scores) == pytest.approx(3 / 5)


def test_separated_and_identical_distributions():
    rng = np.random.default_rng(0)
    far = detection_metrics(rng.normal(5.0, 1.0, 500), rng.normal(-5.0, 1.0, 500))
    assert far["auroc"] > 0.999 and far["aupr"] > 0.999 and far["fpr95"] < 0.01
    same = detection_metrics(rng.normal(0.0, 1.0, 2000), rng.normal(0.0, 1.0, 2000))
    assert abs(same["auroc"] - 0.5) < 0.03 and abs(same["aupr"] - 0.5) < 0.03
    assert abs(same["fpr95"] - 0.95) < 0.03


def test_random_cases_match_brute_force_auroc():
    rng = np.random.default_rng(1)
    for _ in range(5):
        id_scores, ood_scores = rng.integers(0, 4, 7).astype(float), rng.integers(0, 4, 6).astype(float)
        assert detection_metrics(id_scores, ood_scores)["auroc"] == pytest.approx(brute_auroc(id_scores, ood_scores))


def test_detection_refuses_empty_sets_and_nan():
    with pytest.raises(ValueError, match="both sets non-empty"):
        detection_metrics([], [1.0])
    with pytest.raises(ValueError, match="non-finite"):
        detection_metrics([np.nan, 1.0], [0.0])


# ---------------------------------------------------------------------------------------------------
# score functions
# ---------------------------------------------------------------------------------------------------


def make_evidence():
    similarity = np.array([[0.9, 0.1, 0.5], [0.2, 0.2, 0.3]])  # (Q=2, C=3)
    stage1_topk = np.array([[0.9, 0.5], [0.3, 0.2]])  # (Q, k=2), sorted descending
    probabilities = np.array([[[0.8, 0.2], [0.5, 0.5]],
                              [[0.6, 0.4], [0.1, 0.9]]])  # (n=2, Q, k)
    reranked_topk = stage1_topk[None] + probabilities  # alpha = 1
    return QueryEvidence(similarity=similarity, logit_scale=math.log(10.0), stage1_topk=stage1_topk,
                         reranked_topk=reranked_topk, probabilities=probabilities)


def test_stage1_scores_against_direct_computation():
    scores = compute_scores(make_evidence())
    rows = [[0.9, 0.1, 0.5], [0.2, 0.2, 0.3]]
    for q, row in enumerate(rows):
        exps = [math.exp(10.0 * value) for value in row]
        assert scores["s1_max"][q] == pytest.approx(max(row))
        assert scores["s1_msp"][q] == pytest.approx(max(exps) / sum(exps))
        assert scores["s1_energy"][q] == pytest.approx(math.log(sum(exps)))
        ordered = sorted(row, reverse=True)
        assert scores["s1_margin"][q] == pytest.approx(ordered[0] - ordered[1])


def test_generator_scores_against_direct_computation():
    scores = compute_scores(make_evidence())
    p = {0: [[0.8, 0.2], [0.6, 0.4]], 1: [[0.5, 0.5], [0.1, 0.9]]}  # query -> draws
    for q, draws in p.items():
        entropies = [-sum(x * math.log(x) for x in draw) for draw in draws]
        assert scores["gen_neg_entropy"][q] == pytest.approx(-sum(entropies) / 2)
        assert scores["gen_max_prob"][q] == pytest.approx(sum(max(draw) for draw in draws) / 2)
        spread = [abs(draws[0][j] - draws[1][j]) / math.sqrt(2) for j in range(2)]  # std, ddof=1, of 2 values
        assert scores["gen_neg_spread"][q] == pytest.approx(-sum(spread) / 2)
    # query 0: re-ranked (1.7, 0.7) and (1.5, 0.9) keep the order -> tau 1 in both draws
    # query 1: (0.8, 0.7) keeps it (tau 1), (0.4, 1.1) swaps it (tau -1) -> mean 0
    assert scores["gen_rank_agreement"] == pytest.approx([1.0, 0.0])


def test_kendall_tau_matches_pair_counting():
    rng = np.random.default_rng(2)
    a, b = rng.integers(0, 3, (4, 5)).astype(float), rng.integers(0, 3, (4, 5)).astype(float)
    for row in range(4):
        pairs = list(itertools.combinations(range(5), 2))
        expected = sum(np.sign(a[row, i] - a[row, j]) * np.sign(b[row, i] - b[row, j]) for i, j in pairs) / len(pairs)
        assert kendall_tau(a, b)[row] == pytest.approx(expected)


def test_spread_needs_two_draws_and_registry_is_complete():
    evidence = make_evidence()
    single = QueryEvidence(evidence.similarity, evidence.logit_scale, evidence.stage1_topk,
                           evidence.reranked_topk[:1], evidence.probabilities[:1])
    assert "gen_neg_spread" not in available_scores(1) and "gen_neg_spread" in available_scores(2)
    assert set(compute_scores(single)) == set(OOD_SCORES) - {"gen_neg_spread"}
    with pytest.raises(ValueError, match="eval.num_samples"):
        compute_scores(single, ("gen_neg_spread",))
    with pytest.raises(KeyError, match="unknown OOD score"):
        compute_scores(evidence, ("nope",))
    assert {score.source for score in OOD_SCORES.values()} == {"stage1", "generator"}


# ---------------------------------------------------------------------------------------------------
# selective retrieval
# ---------------------------------------------------------------------------------------------------


def test_risk_coverage_and_aurc_hand_computed():
    # confidences 4, 3, 2, 1 with correctness 1, 0, 1, 0: risks at coverage 1/4..1 = 0, 1/2, 1/3, 1/2
    coverage, risk = risk_coverage([3.0, 1.0, 4.0, 2.0], [0.0, 0.0, 1.0, 1.0])
    assert coverage == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert risk == pytest.approx([0.0, 0.5, 1 / 3, 0.5])
    assert aurc([3.0, 1.0, 4.0, 2.0], [0.0, 0.0, 1.0, 1.0]) == pytest.approx((0 + 0.5 + 1 / 3 + 0.5) / 4)


def test_aurc_with_ties_and_all_equal():
    # confidences 2, 2, 1: the tied pair (correct 1, 0) is kept together: risk 1/2 at coverage 2/3, then
    # all three (correct 1, 0, 0.5): risk (0 + 1 + 0.5) / 3 = 1/2 -> AURC = 2/3 * 1/2 + 1/3 * 1/2
    assert aurc([2.0, 2.0, 1.0], [1.0, 0.0, 0.5]) == pytest.approx(0.5)
    assert aurc(np.zeros(4), [1.0, 0.0, 0.0, 1.0]) == pytest.approx(0.5)  # no ranking: the full-coverage risk


def test_aurc_perfect_and_reversed_confidence():
    correct = np.array([1.0, 1.0, 0.0, 0.0])
    assert aurc([4.0, 3.0, 2.0, 1.0], correct) == pytest.approx((0 + 0 + 1 / 3 + 1 / 2) / 4)
    assert aurc([1.0, 2.0, 3.0, 4.0], correct) == pytest.approx((1 + 1 + 2 / 3 + 1 / 2) / 4)
