"""How well the generator alone ranks a query's top-k: the tie-free metric that selects stage-2 checkpoints.

The re-ranked score s + alpha * softmax(x0_hat * temperature) mixes stage 1 back in, and with the official clamp of
the final x0_hat to [-1, 1] several candidates can tie at +1, the tie then decided by the stage-1 order. So the
generator's own ranking is measured on x0_hat alone, ties broken at random: a target tied with m other candidates at
the row's maximum counts 1 / (m + 1) (the expectation of a random tie-break, exact and deterministic). A query whose
target is outside its top-k counts 0, so the mean is directly comparable with stage 1's R@1.
"""

from __future__ import annotations

import numpy as np
import torch


def top1_hits(values: np.ndarray, positives: np.ndarray) -> np.ndarray:
    """(Q,) expected top-1 hit per row of values (Q, k), ties at the row's maximum broken at random: the share of
    the tied candidates that are positive (positives (Q, k) bool); 0 for a row without a positive among them."""
    values, positives = np.asarray(values, dtype=np.float64), np.asarray(positives, dtype=bool)
    if values.shape != positives.shape or values.ndim != 2:
        raise ValueError(f"top1_hits: values {values.shape} and positives {positives.shape} must both be (Q, k)")
    at_max = values == values.max(axis=1, keepdims=True)  # (Q, k) the candidates a random tie-break picks from
    return (at_max & positives).sum(axis=1) / at_max.sum(axis=1)


def generator_top1_hits(x0_hat: torch.Tensor | np.ndarray, topk_indices: torch.Tensor | np.ndarray,
                        targets: np.ndarray) -> np.ndarray:
    """(Q,) expected top-1 hit per query: x0_hat (Q, k) over the candidates topk_indices (Q, k), targets (Q,)."""
    x0_hat, topk = np.asarray(x0_hat, dtype=np.float64), np.asarray(topk_indices)
    targets = np.asarray(targets)
    if x0_hat.shape != topk.shape or targets.shape != (x0_hat.shape[0],):
        raise ValueError(f"generator_top1_hits: x0_hat {x0_hat.shape}, topk {topk.shape} and targets {targets.shape} "
                         "must be (Q, k), (Q, k) and (Q,)")
    return top1_hits(x0_hat, topk == targets[:, None])


def direction_targets(caption_video: np.ndarray, num_videos: int, direction: str) -> np.ndarray:
    """Each row's target column: t2v rows are captions (their video), v2t rows videos (their one caption).

    v2t needs exactly one caption per video (the synthetic val/test splits, MSRVTT-1kA); otherwise it fails."""
    caption_video = np.asarray(caption_video, dtype=np.int64)
    if direction == "t2v":
        return caption_video
    counts = np.bincount(caption_video, minlength=num_videos)
    if not (counts == 1).all():
        raise ValueError("v2t targets need exactly one caption per video; this split has "
                         f"{int((counts != 1).sum())} videos with another count")
    targets = np.empty(num_videos, dtype=np.int64)
    targets[caption_video] = np.arange(len(caption_video))
    return targets
