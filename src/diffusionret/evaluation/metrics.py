"""Retrieval ranks and R@K / MdR / MnR from score matrices (official utils/metrics.py, from CLIP4Clip).

Rank: 0-based position of the ground truth in its row sorted by descending score, computed in row
chunks (a 30k x 1k matrix never needs more than a chunk-sized temporary). `chunk_size` counts rows of
the (Q, V) text-rows matrix; v2t takes as many video rows as keep the same element budget.

Ties (one convention, `DEFAULT_TIES`, used by every function here):
- "pessimistic" (default): rank = #candidates scoring strictly higher + #OTHER candidates scoring
  equal. Integer, deterministic, never over-reports: a constant score row ranks last, so a
  degenerate model cannot score R@1 > 0 (CLIP4Clip instead counts every tied position as a match).
- "average" (collaborative-experts / QB-Norm code): rank = #higher + #other-equal / 2, a float;
  R@K counts rank < K, so a ground truth tied with one other candidate at the top counts for R@1.

Multi-caption benchmarks (CLIP4Clip convention): t2v ranks all videos for each caption;
v2t scores each video against each caption GROUP (all captions of one video) by the MAX over the
group and ranks groups, the ground truth being the video's own group. Groups come from the explicit
`caption_video` indices, so uneven and non-contiguous caption lists work.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

DEFAULT_KS = (1, 5, 10, 50)
DEFAULT_CHUNK_SIZE = 1024
DEFAULT_TIES = "pessimistic"
TIES = ("pessimistic", "average")
ORIENTATIONS = ("text_rows", "video_rows")


def _as_array(x: Any) -> np.ndarray:
    """A numpy view of an array-like or a (CPU/GPU, any float dtype) torch tensor, without importing torch."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if x.is_floating_point() and x.element_size() < 4:  # bf16/fp16 have no numpy dtype
            x = x.float()
        x = x.numpy()
    return np.asarray(x)


def _check_ties(ties: str) -> None:
    """Reject an unknown tie convention with the allowed values."""
    if ties not in TIES:
        raise ValueError(f"ties={ties!r} is not one of {TIES}")


def _ranks_of_chunk(chunk: np.ndarray, gt: np.ndarray, row0: int, ties: str, what: str) -> np.ndarray:
    """Ranks of rows `row0..row0+len(chunk)` of a score matrix; `gt` is (c,) indices or (c, C) bool."""
    nan_rows = np.flatnonzero(np.isnan(chunk).any(axis=1))
    if nan_rows.size:
        raise ValueError(
            f"{what}: score row {row0 + int(nan_rows[0])} contains NaN ({nan_rows.size} NaN rows in rows "
            f"{row0}..{row0 + len(chunk) - 1}); fix the model or features that produced the scores"
        )
    if gt.ndim == 1:
        target = np.take_along_axis(chunk, gt[:, None], axis=1)  # (c, 1) ground-truth score
        higher = (chunk > target).sum(axis=1)
        equal = (chunk == target).sum(axis=1) - 1  # minus the ground truth itself
    else:  # boolean relation: rank of the best-scored positive among the negatives
        missing = np.flatnonzero(~gt.any(axis=1))
        if missing.size:
            raise ValueError(f"{what}: row {row0 + int(missing[0])} has no positive candidate in the relation")
        target = np.where(gt, chunk, -np.inf).max(axis=1, keepdims=True)  # (c, 1)
        higher = ((chunk > target) & ~gt).sum(axis=1)
        equal = ((chunk == target) & ~gt).sum(axis=1)
    if ties == "pessimistic":
        return (higher + equal).astype(np.int64)
    return higher + equal / 2.0


def retrieval_ranks(
    scores: Any, gt: Any, *, chunk_size: int = DEFAULT_CHUNK_SIZE, ties: str = DEFAULT_TIES
) -> np.ndarray:
    """0-based rank (Q,) of the ground truth per row of scores (Q, C); gt: (Q,) indices or (Q, C) bool relation."""
    _check_ties(ties)
    scores, gt = _as_array(scores), _as_array(gt)
    if scores.ndim != 2 or 0 in scores.shape:
        raise ValueError(f"scores must be a non-empty 2-D (queries, candidates) matrix, got shape {scores.shape}")
    num_rows, num_cols = scores.shape
    if gt.dtype == bool:
        if gt.shape != scores.shape:
            raise ValueError(f"boolean relation has shape {gt.shape}, scores have {scores.shape}")
    else:
        if gt.shape != (num_rows,) or not np.issubdtype(gt.dtype, np.integer):
            raise ValueError(f"gt must be {num_rows} integer indices or a {scores.shape} bool relation, got "
                             f"dtype {gt.dtype} shape {gt.shape}")
        if gt.min() < 0 or gt.max() >= num_cols:
            raise ValueError(f"gt index out of range [0, {num_cols}): min {gt.min()}, max {gt.max()}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    ranks = np.empty(num_rows, dtype=np.int64 if ties == "pessimistic" else np.float64)  # (Q,)
    for row0 in range(0, num_rows, chunk_size):
        rows = slice(row0, row0 + chunk_size)
        ranks[rows] = _ranks_of_chunk(scores[rows], gt[rows], row0, ties, "retrieval_ranks")
    return ranks


def recall_metrics(ranks: Any, ks: tuple[int, ...] = DEFAULT_KS) -> dict[str, float]:
    """R@K in percent ("R1", "R5", ...), MdR = median(rank)+1 and MnR = mean(rank)+1 from 0-based ranks."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.ndim != 1 or ranks.size == 0:
        raise ValueError(f"ranks must be a non-empty 1-D array, got shape {ranks.shape}")
    out = {f"R{k}": float(100.0 * np.mean(ranks < k)) for k in ks}
    out["MdR"] = float(np.median(ranks) + 1.0)
    out["MnR"] = float(np.mean(ranks) + 1.0)
    return out


def chance_metrics(
    num_candidates: int, *, ks: tuple[int, ...] = DEFAULT_KS, num_queries: int | None = None
) -> dict[str, float]:
    """Expected metrics of a uniformly random ranking of `num_candidates`; with num_queries, also their std."""
    if num_candidates < 1:
        raise ValueError(f"num_candidates must be >= 1, got {num_candidates}")
    n = num_candidates
    # rank ~ Uniform{0..n-1}: P(rank < K) = min(K, n)/n; the sample median's law is symmetric about (n-1)/2.
    out = {f"R{k}": 100.0 * min(k, n) / n for k in ks}
    out["MdR"] = out["MnR"] = (n + 1) / 2.0
    if num_queries is not None:
        for k in ks:
            p = min(k, n) / n
            out[f"R{k}_std"] = 100.0 * float(np.sqrt(p * (1.0 - p) / num_queries))
        out["MnR_std"] = float(np.sqrt((n * n - 1) / 12.0 / num_queries))
    return out


class FaithfulGrouping(NamedTuple):
    """Ground truth under the released MSVD grouping: caption_video (Q,) with -1 = dropped; kept (Q,) bool."""

    caption_video: np.ndarray
    kept: np.ndarray


def faithful_msvd_groups(caption_video: Any) -> FaithfulGrouping:
    """Reproduce the released off-by-one MSVD grouping: group g = [last_{g-1}, last_g).

    The official MSVD loader stores each video's LAST caption index where CLIP4Clip stores the exclusive end,
    while the evaluation still shifts by one as CLIP4Clip does.

    Captions must come in one contiguous block per video. The last caption of each block takes the NEXT
    block's video as ground truth; the very last caption is dropped.
    """
    cv = np.asarray(caption_video, dtype=np.int64)
    if cv.ndim != 1 or cv.size == 0:
        raise ValueError(f"caption_video must be a non-empty 1-D index array, got shape {cv.shape}")
    block_starts = np.r_[0, np.flatnonzero(cv[1:] != cv[:-1]) + 1]
    block_videos = cv[block_starts]
    if np.unique(block_videos).size != block_videos.size:
        vals, counts = np.unique(block_videos, return_counts=True)
        raise ValueError(f"faithful MSVD grouping needs each video's captions contiguous; video "
                         f"{int(vals[counts > 1][0])} appears in several blocks (sort captions by video)")
    block_last = np.r_[block_starts[1:] - 1, cv.size - 1]  # index of each block's last caption
    shifted = cv.copy()
    shifted[block_last[:-1]] = block_videos[1:]
    shifted[block_last[-1]] = -1
    return FaithfulGrouping(caption_video=shifted, kept=shifted >= 0)


def _check_caption_video(caption_video: Any, num_captions: int, num_videos: int, what: str) -> np.ndarray:
    """caption_video as int64 (Q,), checked against the score matrix shape."""
    cv = np.asarray(_as_array(caption_video), dtype=np.int64)
    if cv.shape != (num_captions,) or cv.size == 0:
        raise ValueError(f"{what}: caption_video has shape {cv.shape} but scores have {num_captions} captions")
    if cv.min() < 0 or cv.max() >= num_videos:
        raise ValueError(f"{what}: caption_video out of range [0, {num_videos}): min {cv.min()}, max {cv.max()}")
    return cv


def _ground_truth(cv: np.ndarray, faithful_msvd_grouping: bool) -> np.ndarray:
    """Per-caption ground-truth video, -1 for captions that the chosen grouping drops."""
    return faithful_msvd_groups(cv).caption_video if faithful_msvd_grouping else cv


def t2v_metrics(scores: Any, caption_video: Any, *, faithful_msvd_grouping: bool = False,
                chunk_size: int = DEFAULT_CHUNK_SIZE, ties: str = DEFAULT_TIES,
                ks: tuple[int, ...] = DEFAULT_KS) -> dict[str, float]:
    """Text-to-video metrics: every caption (row of scores (Q, V)) ranks all videos."""
    return recall_metrics(t2v_ranks(scores, caption_video, faithful_msvd_grouping=faithful_msvd_grouping,
                                    chunk_size=chunk_size, ties=ties), ks)


def t2v_ranks(scores: Any, caption_video: Any, *, faithful_msvd_grouping: bool = False,
              chunk_size: int = DEFAULT_CHUNK_SIZE, ties: str = DEFAULT_TIES) -> np.ndarray:
    """0-based rank of each caption's video (the per-query ranks behind `t2v_metrics`), captions in order; under
    the released grouping the dropped caption is left out."""
    scores = _as_array(scores)
    if scores.ndim != 2:
        raise ValueError(f"t2v: scores must be (captions, videos), got shape {scores.shape}")
    gt = _ground_truth(_check_caption_video(caption_video, *scores.shape, "t2v"), faithful_msvd_grouping)
    kept = gt >= 0
    ranks = retrieval_ranks(scores, np.where(kept, gt, 0), chunk_size=chunk_size, ties=ties)
    return ranks[kept]


def v2t_metrics(scores: Any, caption_video: Any, *, orientation: str, faithful_msvd_grouping: bool = False,
                chunk_size: int = DEFAULT_CHUNK_SIZE, ties: str = DEFAULT_TIES,
                ks: tuple[int, ...] = DEFAULT_KS) -> dict[str, float]:
    """Video-to-text metrics: each video ranks caption groups scored by the max over the group's captions.

    orientation (required, since a square 1k-A matrix cannot reveal it): "text_rows" for scores (Q, V),
    "video_rows" for scores (V, Q), e.g. the re-ranked S_v2t. With one caption per video this is
    ranking captions for each video.
    """
    return recall_metrics(v2t_ranks(scores, caption_video, orientation=orientation,
                                    faithful_msvd_grouping=faithful_msvd_grouping, chunk_size=chunk_size,
                                    ties=ties), ks)


def v2t_ranks(scores: Any, caption_video: Any, *, orientation: str, faithful_msvd_grouping: bool = False,
              chunk_size: int = DEFAULT_CHUNK_SIZE, ties: str = DEFAULT_TIES) -> np.ndarray:
    """0-based rank (V,) of each video's own caption group (the per-query ranks behind `v2t_metrics`)."""
    _check_ties(ties)
    if orientation not in ORIENTATIONS:
        raise ValueError(f"orientation={orientation!r} is not one of {ORIENTATIONS}")
    scores = _as_array(scores)
    if scores.ndim != 2:
        raise ValueError(f"v2t: scores must be 2-D, got shape {scores.shape}")
    video_rows = scores.T if orientation == "text_rows" else scores  # (V, Q) view
    num_videos, num_captions = video_rows.shape
    gt = _ground_truth(_check_caption_video(caption_video, num_captions, num_videos, "v2t"),
                       faithful_msvd_grouping)
    kept_idx = np.flatnonzero(gt >= 0)
    order = kept_idx[np.argsort(gt[kept_idx], kind="stable")]  # caption columns sorted by group
    counts = np.bincount(gt[kept_idx], minlength=num_videos)
    if (counts == 0).any():
        raise ValueError(f"v2t: videos {np.flatnonzero(counts == 0)[:5].tolist()} have no caption, so they have "
                         "no ground truth (faithful grouping empties the first video's group if it has one caption)")
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    rows_per_chunk = max(1, chunk_size * num_videos // num_captions)  # same element budget as t2v chunks
    ranks = np.empty(num_videos, dtype=np.int64 if ties == "pessimistic" else np.float64)  # (V,)
    for row0 in range(0, num_videos, rows_per_chunk):
        chunk = video_rows[row0:row0 + rows_per_chunk]  # (c, Q)
        group_scores = np.maximum.reduceat(chunk[:, order], starts, axis=1)  # (c, V): max over each group
        own = np.arange(row0, row0 + len(chunk))
        ranks[row0:row0 + len(chunk)] = _ranks_of_chunk(group_scores, own, row0, ties, "v2t (video row)")
    return ranks


def retrieval_metrics(scores: Any, caption_video: Any, *, scores_v2t: Any = None,
                      faithful_msvd_grouping: bool = False, chunk_size: int = DEFAULT_CHUNK_SIZE,
                      ties: str = DEFAULT_TIES, ks: tuple[int, ...] = DEFAULT_KS) -> dict[str, dict[str, float]]:
    """{"t2v": ..., "v2t": ...} from scores (Q, V); v2t uses scores_v2t (V, Q, video rows) when given."""
    common = dict(faithful_msvd_grouping=faithful_msvd_grouping, chunk_size=chunk_size, ties=ties, ks=ks)
    t2v = t2v_metrics(scores, caption_video, **common)
    if scores_v2t is None:
        v2t = v2t_metrics(scores, caption_video, orientation="text_rows", **common)
    else:
        v2t = v2t_metrics(scores_v2t, caption_video, orientation="video_rows", **common)
    return {"t2v": t2v, "v2t": v2t}


def flatten_metrics(nested: dict[str, dict[str, float]], prefix_map: dict[str, str] | None = None
                    ) -> dict[str, float]:
    """{"t2v": {"R1": x}} -> {"t2v/R1": x}; prefix_map renames directions, e.g. {"t2v": "t2v_qbnorm"}."""
    prefix_map = prefix_map or {}
    unknown = sorted(set(prefix_map) - set(nested))
    if unknown:
        raise ValueError(f"prefix_map names {unknown}, which are not in the metrics ({sorted(nested)})")
    return {f"{prefix_map.get(direction, direction)}/{name}": value
            for direction, values in nested.items() for name, value in values.items()}
