"""Out-of-distribution query detection and selective retrieval (numpy + scikit-learn, pure functions).

DiffusionRet's motivation (the paper): a discriminative model scores p(candidates | query) and ignores
p(query), so it "cannot identify out-of-distribution data". This module measures whether a per-query score
tells in-distribution (ID) queries from out-of-distribution (OOD) ones, all run against the SAME gallery
(the trained benchmark's test set).

Convention: every score in `OOD_SCORES` is oriented so that HIGHER = more in-distribution (more confident);
scores that measure uncertainty (entropy, disagreement, spread) are negated. Detection treats ID as the
positive class.

Scores (registered by name; each a function of a `QueryEvidence`, one value per query):
  s1_max              max_j s_j                                  stage-1 similarity row s (no temperature)
  s1_msp              max_j softmax(tau * s)_j                   tau = exp(logit_scale) of the trained model
  s1_energy           logsumexp_j(tau * s_j)                     negative free energy (Liu et al. 2020), T = 1
  s1_margin           s_(1) - s_(2)                              gap between the two best candidates
  gen_neg_entropy     -H(p), p = softmax(x0_hat * temperature)   over the re-ranked top-k, mean over draws
  gen_max_prob        max_j p_j                                  mean over draws
  gen_rank_agreement  Kendall tau-a(stage-1 order, re-ranked order) over the top-k = 1 - disagreement, mean over draws
  gen_neg_spread      -mean_j std_draws(p_j)                     the generator's own uncertainty (needs >= 2 draws)

Detection metrics: AUROC and AUPR (average precision, ID positive) from scikit-learn, and FPR at 95% TPR
(the fraction of OOD queries accepted when the threshold keeps 95% of ID queries), from `roc_curve`.
All-equal scores give AUROC 0.5 (ties count one half), AUPR = the ID fraction, FPR95 = 1.

Selective retrieval: sort queries by a score, keep the most confident fraction (coverage) and measure the
risk (1 - R@1) on what is kept. Tied scores are kept or abstained together (one curve point per distinct
score). AURC = the mean risk over coverages 1/n, 2/n, ..., 1 (a tied group contributes its size times the
risk at its point); abstaining at random has AURC = the full-coverage risk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

DETECTION_METRICS = ("auroc", "aupr", "fpr95")
TPR_LEVEL = 0.95


@dataclass
class QueryEvidence:
    """What evaluation computes for a set of queries against one gallery (draws stacked first)."""

    similarity: np.ndarray  # (Q, C) stage-1 similarities (the head's output, no temperature)
    logit_scale: float  # tau = exp(logit_scale) of the trained model (CLIP's learned inverse temperature)
    stage1_topk: np.ndarray  # (Q, k) stage-1 scores of the re-ranked candidates, sorted descending
    reranked_topk: np.ndarray  # (n, Q, k) the same candidates' scores after re-ranking, per DDIM draw
    probabilities: np.ndarray  # (n, Q, k) p = softmax(x0_hat * temperature) per draw, aligned with stage1_topk

    @property
    def num_draws(self) -> int:
        return self.probabilities.shape[0]


@dataclass(frozen=True)
class OodScore:
    """A registered per-query score: `fn(evidence) -> (Q,)`, higher = more in-distribution."""

    name: str
    source: str  # "stage1" or "generator"
    description: str
    fn: Callable[[QueryEvidence], np.ndarray]
    min_draws: int = 1  # the spread needs at least two DDIM draws


OOD_SCORES: dict[str, OodScore] = {}


def register(name: str, source: str, description: str, min_draws: int = 1):
    """Decorator adding a score function to OOD_SCORES under `name`."""
    def wrap(fn: Callable[[QueryEvidence], np.ndarray]) -> Callable[[QueryEvidence], np.ndarray]:
        if name in OOD_SCORES:
            raise ValueError(f"OOD score {name!r} is registered twice")
        OOD_SCORES[name] = OodScore(name, source, description, fn, min_draws)
        return fn
    return wrap


# ---------------------------------------------------------------------------------------------------
# Scores
# ---------------------------------------------------------------------------------------------------


def _logsumexp(values: np.ndarray, axis: int) -> np.ndarray:
    """Numerically stable log(sum(exp(values))) along `axis`."""
    top = values.max(axis=axis, keepdims=True)
    return (top + np.log(np.exp(values - top).sum(axis=axis, keepdims=True))).squeeze(axis)


def kendall_tau(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Row-wise Kendall tau-a of two (..., k) arrays: (concordant - discordant) / (k (k - 1) / 2); ties count 0."""
    first, second = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    k = first.shape[-1]
    if k < 2:
        return np.ones(first.shape[:-1])  # one candidate: the orders cannot disagree
    signs = (np.sign(first[..., :, None] - first[..., None, :])
             * np.sign(second[..., :, None] - second[..., None, :]))  # (..., k, k)
    return signs.sum(axis=(-2, -1)) / (k * (k - 1))  # every pair counted twice


@register("s1_max", "stage1", "max stage-1 similarity")
def s1_max(evidence: QueryEvidence) -> np.ndarray:
    return evidence.similarity.max(axis=1)


@register("s1_msp", "stage1", "max softmax probability, softmax(tau * s)")
def s1_msp(evidence: QueryEvidence) -> np.ndarray:
    logits = np.exp(evidence.logit_scale) * evidence.similarity.astype(np.float64)  # (Q, C)
    return np.exp(logits.max(axis=1) - _logsumexp(logits, axis=1))


@register("s1_energy", "stage1", "negative energy, logsumexp(tau * s)")
def s1_energy(evidence: QueryEvidence) -> np.ndarray:
    return _logsumexp(np.exp(evidence.logit_scale) * evidence.similarity.astype(np.float64), axis=1)


@register("s1_margin", "stage1", "top-1 minus top-2 stage-1 similarity")
def s1_margin(evidence: QueryEvidence) -> np.ndarray:
    if evidence.similarity.shape[1] < 2:
        raise ValueError("s1_margin needs at least two candidates per query")
    top2 = -np.sort(-evidence.similarity, axis=1)[:, :2]  # (Q, 2)
    return top2[:, 0] - top2[:, 1]


@register("gen_neg_entropy", "generator", "minus the entropy of softmax(x0_hat), mean over draws")
def gen_neg_entropy(evidence: QueryEvidence) -> np.ndarray:
    p = evidence.probabilities.astype(np.float64)  # (n, Q, k)
    plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return plogp.sum(axis=2).mean(axis=0)


@register("gen_max_prob", "generator", "max of softmax(x0_hat), mean over draws")
def gen_max_prob(evidence: QueryEvidence) -> np.ndarray:
    return evidence.probabilities.max(axis=2).mean(axis=0)


@register("gen_rank_agreement", "generator", "Kendall tau of stage-1 vs re-ranked top-k order, mean over draws")
def gen_rank_agreement(evidence: QueryEvidence) -> np.ndarray:
    stage1 = np.broadcast_to(evidence.stage1_topk, evidence.reranked_topk.shape)  # (n, Q, k)
    return kendall_tau(stage1, evidence.reranked_topk).mean(axis=0)


@register("gen_neg_spread", "generator", "minus the std over DDIM draws of p, mean over the top-k", min_draws=2)
def gen_neg_spread(evidence: QueryEvidence) -> np.ndarray:
    return -evidence.probabilities.astype(np.float64).std(axis=0, ddof=1).mean(axis=1)


def available_scores(num_draws: int) -> tuple[str, ...]:
    """Names of the registered scores defined with `num_draws` DDIM draws, in registry order."""
    return tuple(name for name, score in OOD_SCORES.items() if num_draws >= score.min_draws)


def compute_scores(evidence: QueryEvidence, names: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """Every requested (default: every available) score of the evidence's queries, each (Q,) float64."""
    names = available_scores(evidence.num_draws) if names is None else names
    out = {}
    for name in names:
        if name not in OOD_SCORES:
            raise KeyError(f"unknown OOD score {name!r}; registered: {', '.join(OOD_SCORES)}")
        score = OOD_SCORES[name]
        if evidence.num_draws < score.min_draws:
            raise ValueError(f"OOD score {name!r} needs >= {score.min_draws} DDIM draws, got "
                             f"{evidence.num_draws}; raise eval.num_samples")
        out[name] = np.asarray(score.fn(evidence), dtype=np.float64)
    return out


# ---------------------------------------------------------------------------------------------------
# Detection metrics
# ---------------------------------------------------------------------------------------------------


def _labelled(id_scores: np.ndarray, ood_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(labels: 1 = ID, scores) of both sets, refusing empty sets and non-finite scores."""
    id_scores, ood_scores = np.asarray(id_scores, np.float64).ravel(), np.asarray(ood_scores, np.float64).ravel()
    if len(id_scores) == 0 or len(ood_scores) == 0:
        raise ValueError(f"OOD detection needs both sets non-empty, got {len(id_scores)} in-distribution and "
                         f"{len(ood_scores)} out-of-distribution scores")
    scores = np.concatenate([id_scores, ood_scores])
    if not np.isfinite(scores).all():
        raise ValueError("OOD detection got non-finite scores (NaN or inf); check the score function")
    return np.concatenate([np.ones(len(id_scores)), np.zeros(len(ood_scores))]), scores


def fpr_at_tpr(id_scores: np.ndarray, ood_scores: np.ndarray, tpr_level: float = TPR_LEVEL) -> float:
    """Fraction of OOD scores >= the highest threshold that keeps at least `tpr_level` of the ID scores."""
    labels, scores = _labelled(id_scores, ood_scores)
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    return float(fpr[np.searchsorted(tpr, tpr_level, side="left")])


def detection_metrics(id_scores: np.ndarray, ood_scores: np.ndarray) -> dict[str, float]:
    """AUROC, AUPR (ID positive) and FPR at 95% TPR of one score (higher = more in-distribution)."""
    labels, scores = _labelled(id_scores, ood_scores)
    return {"auroc": float(roc_auc_score(labels, scores)), "aupr": float(average_precision_score(labels, scores)),
            "fpr95": fpr_at_tpr(id_scores, ood_scores)}


# ---------------------------------------------------------------------------------------------------
# Selective retrieval
# ---------------------------------------------------------------------------------------------------


def risk_coverage(confidence: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(coverage, risk) at each distinct confidence, most confident first; risk = 1 - mean(correct) kept.

    `correct` may be fractional (e.g. the share of DDIM draws whose top-1 is right).
    """
    confidence, correct = np.asarray(confidence, np.float64).ravel(), np.asarray(correct, np.float64).ravel()
    if confidence.shape != correct.shape or len(confidence) == 0:
        raise ValueError(f"risk_coverage needs equal, non-empty confidence and correctness arrays, got "
                         f"{confidence.shape} and {correct.shape}")
    if not np.isfinite(confidence).all():
        raise ValueError("risk_coverage got non-finite confidences")
    order = np.argsort(-confidence, kind="stable")
    sorted_conf, errors = confidence[order], np.cumsum(1.0 - correct[order])
    group_end = np.flatnonzero(np.append(sorted_conf[1:] != sorted_conf[:-1], True))  # last index of each tie group
    kept = group_end + 1
    return kept / len(confidence), errors[group_end] / kept


def aurc(confidence: np.ndarray, correct: np.ndarray) -> float:
    """Area under the risk-coverage curve: mean risk over coverages i/n (tied groups share their point)."""
    coverage, risk = risk_coverage(confidence, correct)
    widths = np.diff(np.concatenate([[0.0], coverage]))
    return float((widths * risk).sum())
