"""QB-Norm and DSL against direct restatements (exact Decimal arithmetic, hand values)."""

import math
from decimal import Decimal

import numpy as np
import pytest
import torch

from diffusionret.evaluation.postprocess import (
    POSTPROCESSORS,
    activation_set,
    apply_postprocess,
    dual_softmax,
    qb_norm,
)


def reference_qb_norm_log(scores, bank, beta, k=1, min_count=1):
    """Bogolin et al. restated with loops and exact Decimal exponentials; normalised rows returned as logs."""
    num_gallery = len(scores[0])
    counts = [0] * num_gallery
    for row in bank:
        ranked = sorted(range(num_gallery), key=lambda j: (-row[j], j))  # ties: lower index first
        for j in ranked[:k]:
            counts[j] += 1
    active = [c >= min_count for c in counts]
    beta = Decimal(float(beta))
    normaliser = [sum((beta * Decimal(float(row[j]))).exp() for row in bank) for j in range(num_gallery)]
    out = []
    for row in scores:
        top1 = min(range(num_gallery), key=lambda j: (-row[j], j))
        if active[top1]:
            out.append([float(((beta * Decimal(float(row[j]))).exp() / normaliser[j]).ln())
                        for j in range(num_gallery)])
        else:
            out.append([float(x) for x in row])
    return np.array(out)


@pytest.mark.parametrize("beta,k,min_count", [(20.0, 1, 1), (1000.0, 1, 1), (50.0, 2, 2), (5.0, 3, 1)])
def test_qb_norm_matches_exact_restatement(beta, k, min_count):
    rng = np.random.default_rng(0)
    scores = rng.random((7, 6)).astype(np.float32)  # (Q, G), cosine-like in [0, 1)
    bank = rng.random((9, 6)).astype(np.float32)  # (Nb, G)
    want = reference_qb_norm_log(scores, bank, beta, k, min_count)
    for chunk_size in (1, 2, 4, 1000):
        got = qb_norm(scores, bank, beta=beta, k=k, min_count=min_count, chunk_size=chunk_size)
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-9)
        assert (np.argsort(-got, axis=1, kind="stable") == np.argsort(-want, axis=1, kind="stable")).all()


def test_qb_norm_survives_beta_that_overflows_naive_exp():
    rng = np.random.default_rng(1)
    scores, bank = rng.random((4, 5)).astype(np.float32), rng.random((6, 5)).astype(np.float32)
    with np.errstate(over="ignore"):
        assert np.isinf(np.exp(np.float32(1000.0) * bank)).any()  # the naive form would break here
    got = qb_norm(scores, bank, beta=1000.0)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, reference_qb_norm_log(scores, bank, 1000.0), rtol=1e-10, atol=1e-9)


def test_qb_norm_probability_form_for_moderate_beta():
    rng = np.random.default_rng(2)
    scores, bank, beta = rng.random((5, 4)), rng.random((8, 4)), 3.0
    got = qb_norm(scores, bank, beta=beta)
    normaliser = np.exp(beta * bank).sum(axis=0)  # float64, small beta: no overflow
    top1_in_a = np.isin(scores.argmax(axis=1), bank.argmax(axis=1))
    for q in range(5):
        want = np.exp(beta * scores[q]) / normaliser if top1_in_a[q] else scores[q]
        np.testing.assert_allclose(np.exp(got[q]) if top1_in_a[q] else got[q], want, rtol=1e-12)


def test_qb_norm_leaves_rows_outside_activation_set_unchanged():
    bank = np.array([[1.0, 0.2, 0.1], [0.9, 0.5, 0.0]])  # item 0 is every bank query's top-1: A = {0}
    scores = np.array([[0.1, 0.3, 0.8],   # top-1 is item 2, not in A -> raw
                       [0.7, 0.6, 0.2]])  # top-1 is item 0 -> normalised
    beta = 2.0
    got = qb_norm(scores, bank, beta=beta)
    assert got[0].tolist() == scores[0].tolist()
    log_z = [math.log(math.exp(beta * 1.0) + math.exp(beta * 0.9)),
             math.log(math.exp(beta * 0.2) + math.exp(beta * 0.5)),
             math.log(math.exp(beta * 0.1) + math.exp(beta * 0.0))]
    np.testing.assert_allclose(got[1], [beta * s - z for s, z in zip(scores[1], log_z)], rtol=1e-12)


def test_activation_set_k_min_count_and_ties():
    bank = np.array([[0.9, 0.1, 0.0], [0.8, 0.2, 0.1], [0.1, 0.7, 0.2], [0.5, 0.5, 0.5]])
    # top-1 (ties -> lower index): 0, 0, 1, 0 ; top-2: {0,1}, {0,1}, {1,2}, {0,1}
    assert activation_set(bank).tolist() == [True, True, False]
    assert activation_set(bank, min_count=2).tolist() == [True, False, False]
    assert activation_set(bank, k=2, min_count=2).tolist() == [True, True, False]
    assert activation_set(bank, k=2).tolist() == [True, True, True]
    with pytest.raises(ValueError, match="k=4"):
        activation_set(bank, k=4)


def test_qb_norm_does_not_mutate_and_accepts_torch():
    rng = np.random.default_rng(3)
    scores, bank = rng.random((5, 4)).astype(np.float32), rng.random((6, 4)).astype(np.float32)
    scores_before, bank_before = scores.copy(), bank.copy()
    got = qb_norm(scores, bank, beta=20.0)
    assert np.array_equal(scores, scores_before) and np.array_equal(bank, bank_before)
    assert got.dtype == np.float64
    torch_scores = torch.from_numpy(scores)
    np.testing.assert_array_equal(qb_norm(torch_scores, torch.from_numpy(bank), beta=20.0), got)
    assert np.array_equal(torch_scores.numpy(), scores_before)


def test_qb_norm_rejects_bad_inputs():
    with pytest.raises(ValueError, match="SAME test gallery"):
        qb_norm(np.ones((2, 3)), np.ones((4, 5)))
    with pytest.raises(ValueError, match="row 1 has a NaN"):
        qb_norm(np.array([[0.1, 0.2], [np.nan, 0.3]]), np.ones((2, 2)))


def test_dual_softmax_hand_2x2():
    e = math.e
    got = dual_softmax(np.array([[2.0, 1.0], [1.0, 3.0]]), temperature=1.0)
    # column 0 softmax [e/(e+1), 1/(e+1)], column 1 softmax [1/(1+e^2), e^2/(1+e^2)]
    want = [[2 * e / (e + 1), 1 / (1 + e * e)], [1 / (e + 1), 3 * e * e / (1 + e * e)]]
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_dual_softmax_stable_and_row_permutation_equivariant():
    rng = np.random.default_rng(4)
    scores = rng.random((6, 5)).astype(np.float32)
    before = scores.copy()
    big = dual_softmax(scores, temperature=1e4)  # exp(1e4) would overflow without the max shift
    assert np.isfinite(big).all() and np.array_equal(scores, before)
    col_max = scores.argmax(axis=0)
    np.testing.assert_allclose(big[col_max, np.arange(5)], scores.max(axis=0), rtol=1e-6)
    perm = rng.permutation(6)
    np.testing.assert_allclose(dual_softmax(scores[perm]), dual_softmax(scores)[perm], rtol=1e-12)


def test_registry():
    scores, bank = np.eye(3), np.eye(3)
    assert set(POSTPROCESSORS) == {"none", "qbnorm", "dsl"}
    none = apply_postprocess("none", scores)
    assert np.array_equal(none, scores) and none is not scores
    np.testing.assert_array_equal(apply_postprocess("qbnorm", scores, bank_scores=bank, beta=5.0),
                                  qb_norm(scores, bank, beta=5.0))
    np.testing.assert_array_equal(apply_postprocess("dsl", scores, temperature=10.0),
                                  dual_softmax(scores, temperature=10.0))
    with pytest.raises(ValueError, match="needs bank_scores"):
        apply_postprocess("qbnorm", scores)
    with pytest.raises(ValueError, match="choose one of"):
        apply_postprocess("sinkhorn", scores)
