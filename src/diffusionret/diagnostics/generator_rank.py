"""The generator alone as a ranker of each query's top-k, beside stage 1's order of the same k candidates.

p = softmax(x0_hat * temperature) is what re-ranking adds to the stage-1 scores; ranking the top-k by p alone
(ties at random, never by stage-1 order) shows what the generator knows. A nearly uniform p (max close to 1/k,
entropy close to ln k) adds almost the same amount to every candidate and leaves stage 1's order in place.
"""

from __future__ import annotations

import math

import numpy as np

from diffusionret.diagnostics.ranking import best_positive_rank, descending_order
from diffusionret.evaluation.uncertainty import Bootstrap, paired_difference
from diffusionret.evaluation.within_topk import top1_hits


def rank_summary(values: np.ndarray, positives: np.ndarray, ranks: np.ndarray, prefix: str) -> dict:
    """R@1 (% of all queries; ties at the top counted in expectation, `within_topk.top1_hits`, the metric that
    selects stage-2 checkpoints) and mean 1-based rank (one random tie-break; over queries with a true candidate)."""
    found = ranks > 0
    return {f"{prefix}_R1": 100.0 * float(top1_hits(values, positives).mean()),
            f"{prefix}_mean_rank": float(ranks[found].mean()) if found.any() else float("nan")}


def generator_vs_stage1(probabilities: np.ndarray, stage1_topk: np.ndarray, positives_topk: np.ndarray,
                        rng: np.random.Generator, ranks: list | None = None) -> dict:
    """Generator-only and stage-1 rankings of the same top-k lists.

    probabilities: (Q, k) p of each query's top-k; stage1_topk: (Q, k) stage-1 scores of the same candidates;
    positives_topk: (Q, k) bool, true candidates. R@1 counts a query without a true candidate in its top-k as a miss
    and ties at the top in expectation (exactly, as the stage-2 selection metric); mean ranks and the per-query ranks
    appended to `ranks` (the paired CI of `generator_minus_stage1`) break ties with one random draw of `rng`.
    Also: `true_in_topk` (%), `p_max` (mean over queries of max p), `p_entropy` (mean entropy, nats) beside
    `p_entropy_uniform` = ln k, and `p_top_tied` (% of queries whose largest p is shared: ties decided at random).
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    generator = best_positive_rank(descending_order(probabilities, rng), positives_topk)  # (Q,)
    stage1 = best_positive_rank(descending_order(stage1_topk, rng), positives_topk)
    if ranks is not None:  # the caller's (generator, stage-1) 1-based ranks per query (0: no true candidate)
        ranks.append((generator, stage1))
    top = probabilities.max(axis=1, keepdims=True)
    entropy = -(probabilities * np.log(np.clip(probabilities, 1e-30, None))).sum(axis=1)
    return {**rank_summary(probabilities, positives_topk, generator, "generator"),
            **rank_summary(stage1_topk, positives_topk, stage1, "stage1"),
            "true_in_topk": 100.0 * float(np.mean(generator > 0)),
            "p_max": float(top.mean()), "p_entropy": float(entropy.mean()),
            "p_entropy_uniform": math.log(probabilities.shape[1]),
            "p_top_tied": 100.0 * float(np.mean((probabilities == top).sum(axis=1) > 1))}


def mean_over_draws(per_draw: list[dict]) -> dict:
    """Each key's mean over the draws, with `<key>_min` / `<key>_max` when there are several draws."""
    out = {}
    for key in per_draw[0]:
        values = np.array([draw[key] for draw in per_draw], dtype=np.float64)
        out[key] = float(values.mean())
        if len(per_draw) > 1:
            out[f"{key}_min"], out[f"{key}_max"] = float(values.min()), float(values.max())
    return out


def generator_minus_stage1(ranks: list[tuple[np.ndarray, np.ndarray]], boot: Bootstrap,
                           clusters: np.ndarray | None) -> dict:
    """Generator-only minus stage-1 R@1 within the same top-k lists with its paired bootstrap CI (`uncertainty`,
    the same resampled queries for both; t2v resamples videos with all their captions): `R1_delta`,
    `R1_delta_ci_low`, `R1_delta_ci_high`. ranks: per draw, (generator, stage-1) 1-based ranks (Q,), 0 = the true
    item is not in the top-k (a miss for both)."""
    def zero_based(found: np.ndarray) -> np.ndarray:
        return np.where(found > 0, found - 1, np.iinfo(np.int32).max).astype(np.float64)

    generator = np.stack([zero_based(g) for g, _ in ranks])  # (draws, Q)
    stage1 = np.stack([zero_based(s) for _, s in ranks])  # (draws, Q): stage-1 ties broken anew per draw
    found = paired_difference(generator, stage1, boot, ks=(1,), clusters=clusters)
    return {key: value for key, value in found.items() if key.startswith("R1_")}
