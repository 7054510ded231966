"""Orders with ties broken at random (never by position), and the rank of a query's best positive."""

from __future__ import annotations

import numpy as np


def descending_order(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(Q, N) column indices of each row by descending value; equal values in a uniformly random order."""
    values = np.asarray(values)
    shuffle = np.argsort(rng.random(values.shape), axis=1)  # (Q, N) a random permutation per row
    shuffled = np.take_along_axis(values, shuffle, axis=1)
    return np.take_along_axis(shuffle, np.argsort(-shuffled, axis=1, kind="stable"), axis=1)


def best_positive_rank(order: np.ndarray, positives: np.ndarray) -> np.ndarray:
    """(Q,) 1-based position of the first positive in each row's `order` (Q, N); 0 where a row has none.

    positives: (Q, N) bool over the same columns as `order` indexes.
    """
    hits = np.take_along_axis(np.asarray(positives, bool), order, axis=1)  # (Q, N) positive at each position
    first = hits.argmax(axis=1) + 1
    return np.where(hits.any(axis=1), first, 0)


def positive_matrix(caption_video: np.ndarray, num_videos: int, direction: str) -> np.ndarray:
    """Ground truth as a bool matrix: t2v (C, V), a caption's video; v2t (V, C), every caption of the video."""
    caption_video = np.asarray(caption_video, dtype=np.int64)
    t2v = np.zeros((len(caption_video), num_videos), dtype=bool)  # (C, V)
    t2v[np.arange(len(caption_video)), caption_video] = True
    if direction == "t2v":
        return t2v
    if direction == "v2t":
        return t2v.T.copy()
    raise ValueError(f"direction={direction!r} is not t2v or v2t")
