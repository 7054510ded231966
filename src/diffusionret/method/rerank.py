"""Inference-time re-ranking with the generator (official `_run_on_single_gpu`, main_retrieval.py).

For every query: take its top-k candidates under the stage-1 scores (sorted descending), run T-step
DDIM from Gaussian noise over the k-vector, conditioned on the query and those candidates, turn the
final x0_hat into p = softmax(x0_hat * temperature) and ADD alpha * p to the k stage-1 scores. All
other entries are unchanged; the input matrix is never modified.

Differences from the official loop (on purpose):
- queries are processed `query_batch` at a time, not in blocks of 32;
- the step-independent part of the denoiser (frame pooling, projections, the decoder's candidate half:
  `denoiser.condition`) is computed once per query block, not at each of the T DDIM steps; each step runs only
  `denoiser.denoise` (the same function regrouped, see model/denoiser.py; equal up to float rounding);
- the start noise is seeded: the whole (Q, k) x_T is drawn once from `torch.Generator().manual_seed(seed)`
  on the CPU and sliced per block, so a query's noise (hence its result) does not depend on the
  batching or on the device. The official code draws from the global RNG, so its results vary run to run.
Top-k ties are broken by the lower candidate index (stable sort), identically on every device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from diffusionret.method.diffusion import DenoiseFn, GaussianDiffusion

# (rows (b,) query indices, candidates (b, k) candidate indices) -> the DDIM step function of that block,
# (x_t (b, k), t (b,)) -> x0_hat (b, k); called once per block, so it can prepare what all T steps share.
BlockDenoiserFactory = Callable[[torch.Tensor, torch.Tensor], DenoiseFn]


@dataclass
class RerankResult:
    """Output of a re-ranking run; every tensor is on the device of the input scores."""

    scores: torch.Tensor  # (Q, C) stage-1 scores with alpha * p added at the top-k entries of each row
    topk_indices: torch.Tensor  # (Q, k) candidate indices, by descending stage-1 score
    x0_hat: torch.Tensor  # (Q, k) final clamped DDIM sample, aligned with topk_indices
    probabilities: torch.Tensor  # (Q, k) softmax(x0_hat * temperature), aligned with topk_indices


@torch.no_grad()
def rerank_scores(
    scores: torch.Tensor,
    block_denoiser: BlockDenoiserFactory,
    diffusion: GaussianDiffusion,
    *,
    k: int = 32,
    temperature: float = 1.0,
    alpha: float = 1.0,
    seed: int,
    query_batch: int = 1024,
    device: torch.device | str | None = None,
    clamp_final: bool = True,
    stop_step: int = 0,
) -> RerankResult:
    """Re-rank the top-k of every row of `scores` (Q, C) with DDIM samples from `block_denoiser`.

    Args:
        scores: (Q, C) stage-1 scores, rows = queries, columns = candidates; never modified.
        block_denoiser: `block_denoiser(rows, candidates)` with rows (b,) query indices and candidates (b, k)
            candidate indices returns the DDIM step function `(x_t (b, k), t (b,)) -> x0_hat (b, k)` of that
            block; called once per block, so it can prepare what all T steps share.
        diffusion: the noise schedule and DDIM sampler (`method.diffusion.GaussianDiffusion`).
        k: candidates re-ranked per row, 1 <= k <= C (taken by descending stage-1 score, ties: lower index).
        temperature: p = softmax(x0_hat * temperature) over the k candidates.
        alpha: weight of p added to the k stage-1 scores.
        seed: seed of the CPU generator that draws the whole (Q, k) start noise x_T at once.
        query_batch: queries per DDIM run (memory only: a query's noise and result do not depend on it).
        device: where the sampling runs; `rows` and `candidates` are on it (default: the device of `scores`).
        clamp_final: clamp the final x0_hat to [-1, 1] (official); False keeps the last prediction unclamped,
            so candidates the network puts above +1 are not tied (`GaussianDiffusion.ddim_sample`).
        stop_step: the last DDIM step run (0 = official); its x0_hat is the result (for a generator trained only
            on steps >= stop_step).
    """
    if scores.dim() != 2:
        raise ValueError(f"rerank: scores must be a (queries, candidates) matrix, got shape {tuple(scores.shape)}")
    num_queries, num_candidates = scores.shape
    if not 1 <= k <= num_candidates:
        raise ValueError(f"rerank: k={k} must be in [1, {num_candidates}] (the number of candidates per query)")
    if query_batch < 1:
        raise ValueError(f"rerank: query_batch must be >= 1, got {query_batch}")
    device = scores.device if device is None else torch.device(device)

    topk_indices = scores.argsort(dim=1, descending=True, stable=True)[:, :k]  # (Q, k)
    rng = torch.Generator().manual_seed(seed)
    noise = torch.randn(num_queries, k, generator=rng)  # x_T for every query at once, (Q, k), CPU

    x0_hat = torch.empty(num_queries, k, dtype=torch.float32, device=device)  # (Q, k)
    for start in range(0, num_queries, query_batch):
        rows = torch.arange(start, min(start + query_batch, num_queries), device=device)  # (b,)
        candidates = topk_indices[start : start + query_batch].to(device)  # (b, k)
        x0_hat[start : start + len(rows)] = diffusion.ddim_sample(
            block_denoiser(rows, candidates), (len(rows), k), noise=noise[start : start + query_batch], device=device,
            clamp_final=clamp_final, stop_step=stop_step,
        ).float()

    x0_hat = x0_hat.to(scores.device)
    probabilities = (x0_hat * temperature).softmax(dim=1)  # p, (Q, k)
    reranked = scores.clone()
    reranked.scatter_add_(1, topk_indices, (alpha * probabilities).to(scores.dtype))
    return RerankResult(reranked, topk_indices, x0_hat, probabilities)


def rerank_t2v(
    scores: torch.Tensor,
    query_sentence: torch.Tensor,
    video_frames: torch.Tensor,
    video_mask: torch.Tensor,
    denoiser: nn.Module,
    diffusion: GaussianDiffusion,
    *,
    k: int = 32,
    temperature: float = 1.0,
    alpha: float = 1.0,
    seed: int,
    query_batch: int = 1024,
    clamp_final: bool = True,
    stop_step: int = 0,
) -> RerankResult:
    """Text-to-video: scores (Q, V), query_sentence (Q, D), video_frames (V, T, D), video_mask (V, T); t2v denoiser."""
    _check_rows(scores, query_sentence.shape[0], video_frames.shape[0], "texts", "videos")
    device = next(denoiser.parameters()).device
    query_sentence, video_frames, video_mask = query_sentence.to(device), video_frames.to(device), video_mask.to(device)

    block_denoiser = t2v_block_denoiser(query_sentence, video_frames, video_mask, denoiser)
    return _run(scores, block_denoiser, denoiser, diffusion, k, temperature, alpha, seed, query_batch, device,
                clamp_final, stop_step)


def rerank_v2t(
    scores: torch.Tensor,
    video_frames: torch.Tensor,
    video_mask: torch.Tensor,
    text_sentence: torch.Tensor,
    denoiser: nn.Module,
    diffusion: GaussianDiffusion,
    *,
    k: int = 32,
    temperature: float = 1.0,
    alpha: float = 1.0,
    seed: int,
    query_batch: int = 1024,
    clamp_final: bool = True,
    stop_step: int = 0,
) -> RerankResult:
    """Video-to-text: scores (V, Q) rows = videos, video_frames (V, T, D), video_mask (V, T), text_sentence (Q, D)."""
    _check_rows(scores, video_frames.shape[0], text_sentence.shape[0], "videos", "texts")
    device = next(denoiser.parameters()).device
    text_sentence, video_frames, video_mask = text_sentence.to(device), video_frames.to(device), video_mask.to(device)

    block_denoiser = v2t_block_denoiser(video_frames, video_mask, text_sentence, denoiser)
    return _run(scores, block_denoiser, denoiser, diffusion, k, temperature, alpha, seed, query_batch, device,
                clamp_final, stop_step)


def t2v_block_denoiser(query_sentence: torch.Tensor, video_frames: torch.Tensor, video_mask: torch.Tensor,
                       denoiser: nn.Module) -> BlockDenoiserFactory:
    """The t2v block denoiser: query rows index the sentences (Q, D), candidates the videos (V, T, D) / (V, T)."""

    def block_denoiser(rows: torch.Tensor, candidates: torch.Tensor) -> DenoiseFn:
        # query_sentence[rows] (b, D), video_frames[candidates] (b, k, T, D), video_mask[candidates] (b, k, T)
        condition = denoiser.condition(query_sentence[rows], video_frames[candidates], video_mask[candidates])
        return lambda x_t, t: denoiser.denoise(x_t, t, condition)

    return block_denoiser


def v2t_block_denoiser(video_frames: torch.Tensor, video_mask: torch.Tensor, text_sentence: torch.Tensor,
                       denoiser: nn.Module) -> BlockDenoiserFactory:
    """The v2t block denoiser: query rows index the videos (V, T, D) / (V, T), candidates the sentences (Q, D)."""

    def block_denoiser(rows: torch.Tensor, candidates: torch.Tensor) -> DenoiseFn:
        # text_sentence[candidates] (b, k, D), video_frames[rows] (b, T, D), video_mask[rows] (b, T)
        condition = denoiser.condition(text_sentence[candidates], video_frames[rows], video_mask[rows])
        return lambda x_t, t: denoiser.denoise(x_t, t, condition)

    return block_denoiser


def _check_rows(scores: torch.Tensor, num_rows: int, num_columns: int, rows_name: str, columns_name: str) -> None:
    """Fail loudly when the score matrix does not match the features (e.g. v2t called with S instead of S.T)."""
    if tuple(scores.shape) != (num_rows, num_columns):
        raise ValueError(
            f"rerank: scores have shape {tuple(scores.shape)} but the features give {num_rows} {rows_name} x "
            f"{num_columns} {columns_name}; for v2t pass the transposed text-video matrix (rows = videos)"
        )


def _run(scores, block_denoiser, denoiser, diffusion, k, temperature, alpha, seed, query_batch, device,
         clamp_final=True, stop_step=0) -> RerankResult:
    """Shared tail of rerank_t2v / rerank_v2t: eval mode for the sampling, restored afterwards."""
    max_timesteps = getattr(denoiser, "max_timesteps", None)
    if max_timesteps is not None and diffusion.num_timesteps > max_timesteps:
        raise ValueError(
            f"rerank: diffusion has {diffusion.num_timesteps} steps but the denoiser's timestep table has "
            f"{max_timesteps} rows; use the number of steps the generator was trained with"
        )
    was_training = denoiser.training
    denoiser.eval()
    try:
        return rerank_scores(
            scores, block_denoiser, diffusion, k=k, temperature=temperature, alpha=alpha, seed=seed,
            query_batch=query_batch, device=device, clamp_final=clamp_final, stop_step=stop_step,
        )
    finally:
        denoiser.train(was_training)
