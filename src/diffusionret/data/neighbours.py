"""Label-free hard-negative batches (`train.batch_sampler: neighbours`, beyond the paper).

A random batch of a benchmark with many similar clips rarely holds two clips that differ only in a detail the
model has not learned yet (on the embedded synthetic set: 2.6 clips of the query's colour and shape in a batch of
64, the only negatives motion separates), so the contrastive loss stops asking for that detail. This sampler
builds each global batch from groups of captions that are near each other in a TF-IDF bag-of-words space of the
caption text: an anchor caption and `group_size - 1` captions drawn from its `pool` nearest neighbours, so the
in-batch negatives of a group share most of their words. It reads only the training captions (no labels), so it
applies to real benchmarks as well.

Like the random sampler, the global batch of step s is a pure function of (seed, s) and of the captions: a resumed
run reads exactly the batches of the uninterrupted one. No video appears twice in a batch (its other captions
would be false negatives).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def caption_neighbours(captions: Sequence[str], pool: int) -> np.ndarray:
    """(C, pool) indices of each caption's `pool` nearest other captions by TF-IDF cosine similarity, nearest first.

    English stop words are dropped (scikit-learn's list), so captions are near when they share content words rather
    than a sentence template. Ties (e.g. captions with the same words) are broken by caption index, so the table is
    deterministic.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer

    count = len(captions)
    if not 1 <= pool <= count - 1:
        raise ValueError(f"neighbour pool {pool} must be in [1, {count - 1}] for {count} training captions; "
                         "lower train.neighbour_pool")
    vectorizer = TfidfVectorizer(token_pattern=r"(?u)\b\w+\b", stop_words="english")
    vectors = vectorizer.fit_transform(captions)  # (C, vocabulary), L2-normalised rows
    table = np.empty((count, pool), dtype=np.int64)
    block = 1024
    for start in range(0, count, block):
        similarity = (vectors[start:start + block] @ vectors.T).toarray()  # (b, C) cosine
        rows = np.arange(similarity.shape[0])
        similarity[rows, start + rows] = -np.inf  # never a caption's own neighbour
        # stable sort of -similarity: equal similarities keep index order
        table[start:start + block] = np.argsort(-similarity, axis=1, kind="stable")[:, :pool]
    return table


def neighbour_batch_indices(neighbours: np.ndarray, caption_video: np.ndarray, batch_size: int, group_size: int,
                            seed: int, step: int, share: float = 1.0) -> np.ndarray:
    """Caption indices of the global batch at `step`: groups of an anchor and its text neighbours.

    Anchors come in a seeded random order (seed, step); each anchor whose video is not yet in the batch opens a
    group and draws up to `group_size - 1` more captions, in a seeded random order, from its neighbour row, skipping
    captions whose video is already in the batch. Groups fill the first round(share x batch_size) places (the last
    group may be cut); the rest of the batch is further anchors alone, i.e. random captions of unused videos.
    """
    count = len(caption_video)
    if len(np.unique(caption_video)) < batch_size:
        raise ValueError(f"batch size {batch_size} is larger than the {len(np.unique(caption_video))} training "
                         "videos; a neighbour batch holds each video once: lower the stage's global_batch")
    rng = np.random.default_rng([seed, step, 1])  # its own stream: never the random sampler's epoch order
    batch: list[int] = []
    used: set[int] = set()

    def take(caption: int) -> None:
        batch.append(caption)
        used.add(int(caption_video[caption]))

    grouped = round(share * batch_size)  # places filled by neighbour groups
    for anchor in rng.permutation(count):
        if len(batch) == batch_size:
            break
        if int(caption_video[anchor]) in used:
            continue
        take(int(anchor))
        group_end = min(len(batch) - 1 + group_size, grouped) if len(batch) <= grouped else len(batch)
        for candidate in neighbours[anchor][rng.permutation(neighbours.shape[1])]:
            if len(batch) == group_end:
                break
            if int(caption_video[candidate]) not in used:
                take(int(candidate))
    return np.asarray(batch, dtype=np.int64)  # (batch_size,)


def warmed_up_batch_draw(neighbours: np.ndarray, caption_video: np.ndarray, batch_size: int, group_size: int,
                         seed: int, share: float = 1.0, from_step: int = 0):
    """`draw(step)` for `StepBatchSampler`: the random sampler's batch before `from_step` (a warm-up on random
    batches), `neighbour_batch_indices` from it on. Still a pure function of (seed, step)."""
    from diffusionret.data.batches import global_batch_indices

    def draw(step: int) -> np.ndarray:
        if step < from_step:
            return global_batch_indices(len(caption_video), batch_size, seed, step)
        return neighbour_batch_indices(neighbours, caption_video, batch_size, group_size, seed, step, share)

    return draw
