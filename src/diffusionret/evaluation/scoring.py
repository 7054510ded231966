"""The one scoring path (as the official `_run_on_single_gpu`): stage-1 similarity in blocks, optional
re-ranking over seeded DDIM draws, per-query ranks. Stage-1 validation, stage-2 validation, the evaluate stage
and `diffusionret search` all call `score_queries`, so a change to how scores are tiled or re-ranked is made here once.

Directions: t2v rows are captions and columns videos, (Q, V); v2t rows are videos and columns captions, (V, Q),
the transpose of the text-rows similarity (the head is always called with texts first). Re-ranking adds
alpha * softmax(x0_hat * temperature) to each row's top-k (`method.rerank`), one result per seed; a draw's start
noise depends only on its seed and the row, never on the blocking.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from diffusionret.evaluation.metrics import DEFAULT_CHUNK_SIZE, DEFAULT_TIES, retrieval_ranks
from diffusionret.method.diffusion import GaussianDiffusion
from diffusionret.method.rerank import RerankResult, rerank_t2v, rerank_v2t
from diffusionret.model.extractor import TextFeatures, VideoFeatures

ScoreFn = Callable[[TextFeatures, VideoFeatures], torch.Tensor]  # (Q texts, V videos) -> (Q, V)
DIRECTIONS = ("t2v", "v2t")


@dataclass(frozen=True)
class RerankSettings:
    """How the top-k of every row is re-ranked: k (clamped to the row length), temperature, alpha, queries per
    DDIM run (`query_batch`, memory only), and one draw per seed."""

    k: int
    temperature: float
    alpha: float
    seeds: tuple[int, ...]
    query_batch: int = 1024
    clamp_final: bool = True  # False: the final x0_hat unclamped (no ties at +1), see GaussianDiffusion.ddim_sample
    stop_step: int = 0  # the last DDIM step (the generator's train_gen.min_timestep)


@dataclass
class Scores:
    """Stage-1 scores of a set of queries and their re-ranked versions, one per seed."""

    stage1: torch.Tensor  # (Q, C) float32, rows = queries of the direction
    draws: list[RerankResult]  # one per seed; empty without re-ranking

    @property
    def reranked(self) -> list[torch.Tensor]:
        """The re-ranked (Q, C) matrix of each draw."""
        return [draw.scores for draw in self.draws]

    def ranks(self, targets: np.ndarray, *, draw: int | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE,
              ties: str = DEFAULT_TIES) -> np.ndarray:
        """0-based rank (Q,) of each row's target column (Q,) in stage 1 (draw=None) or in re-ranked draw `draw`."""
        scores = self.stage1 if draw is None else self.draws[draw].scores
        return retrieval_ranks(scores.float().numpy(), np.asarray(targets, dtype=np.int64), chunk_size=chunk_size,
                               ties=ties)


def _score_tile(score_fn: ScoreFn) -> int | None:
    """The tile size of the head behind `score_fn` (an extractor's bound `similarity`), None when pair-local."""
    return getattr(getattr(score_fn, "__self__", None), "score_tile", None)


def block_similarity(score_fn: ScoreFn, text: TextFeatures, video: VideoFeatures, *, query_block: int,
                     video_block: int | None = None) -> torch.Tensor:
    """Similarity (Q, V) float32, `query_block` texts x `video_block` videos (all videos when None) per call."""
    if query_block < 1 or (video_block is not None and video_block < 1):
        raise ValueError(f"query_block and video_block must be >= 1; got {query_block}, {video_block}")
    tile = _score_tile(score_fn)
    if tile:  # a score depends on its tile (EMCL): calls start at multiples of the tile, which the head tiles from
        query_block = max(tile, query_block - query_block % tile)
        video_block = None if video_block is None else max(tile, video_block - video_block % tile)
    video_block = video_block or max(len(video), 1)
    rows = []
    with torch.no_grad():
        for start in range(0, len(text), query_block):
            part = text[start:start + query_block]
            rows.append(torch.cat([score_fn(part, video[v:v + video_block]).float()
                                   for v in range(0, len(video), video_block)], dim=1))  # (q, V)
    return torch.cat(rows)


def score_queries(score_fn: ScoreFn, text: TextFeatures, video: VideoFeatures, *, direction: str = "t2v",
                  query_block: int, video_block: int | None = None, generator: nn.Module | None = None,
                  diffusion: GaussianDiffusion | None = None, rerank: RerankSettings | None = None,
                  stage1: torch.Tensor | None = None) -> Scores:
    """Score every query of `direction` against its gallery, then re-rank each row once per seed.

    Args:
        score_fn: the stage-1 head, `extractor.similarity`: (TextFeatures of Q, VideoFeatures of V) -> (Q, V).
        text: captions, tokens (C, L, D), mask (C, L), sentence (C, D); the queries for t2v, the gallery for v2t.
        video: videos, frames (V, T, D), mask (V, T); the gallery for t2v, the queries for v2t.
        direction: "t2v" (rows = captions, (C, V)) or "v2t" (rows = videos, (V, C)).
        query_block: captions per call of the head (bounds its memory).
        video_block: videos per call of the head; None = all at once.
        generator: the stage-2 `Generator` (its `t2v` / `v2t` denoiser re-ranks); needed with `rerank`.
        diffusion: the schedule the generator was trained with; needed with `rerank`.
        rerank: top-k, temperature, alpha, seeds and DDIM block size; None = stage 1 only.
        stage1: the (rows, columns) stage-1 matrix of this direction when the caller already holds it (e.g. the
            v2t transpose of a t2v matrix, or a search's short list); the head is then not called.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction={direction!r} is not one of {DIRECTIONS}")
    if stage1 is None:
        stage1 = block_similarity(score_fn, text, video, query_block=query_block, video_block=video_block)  # (C, V)
        if direction == "v2t":
            stage1 = stage1.T.contiguous()  # (V, C)
    if rerank is None:
        return Scores(stage1=stage1, draws=[])
    if generator is None or diffusion is None:
        raise ValueError("re-ranking needs the generator and its diffusion schedule")
    common = dict(k=min(rerank.k, stage1.shape[1]), temperature=rerank.temperature, alpha=rerank.alpha,
                  query_batch=rerank.query_batch, clamp_final=rerank.clamp_final, stop_step=rerank.stop_step)
    draws = []
    with torch.no_grad():
        for seed in rerank.seeds:
            if direction == "t2v":
                draws.append(rerank_t2v(stage1, text.sentence, video.frames, video.mask, generator.t2v, diffusion,
                                        seed=seed, **common))
            else:
                draws.append(rerank_v2t(stage1, video.frames, video.mask, text.sentence, generator.v2t, diffusion,
                                        seed=seed, **common))
    return Scores(stage1=stage1, draws=draws)
