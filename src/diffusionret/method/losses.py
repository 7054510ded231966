"""The two training losses of DiffusionRet (official DiffusionRet/models/modeling.py, until_module.py).

Stage 1 (discrimination): symmetric InfoNCE on the similarity of the global batch, with features gathered
across processes (`gather_with_grad`, `contrastive_loss`).

Stage 2 (generation): for every pair b of a (global) batch, each direction builds an ordered candidate list
of 1 + K items:
index 0 is the pair's own item (the positive), then the K hardest in-batch negatives by descending
stage-1 similarity. The clean vector x0 = (1, 0, ..., 0) over that list is noised to a random step t and
each denoiser predicts x0_hat; the loss is CE(softmax(x0_hat / tau_g), class 0) per direction, summed.

Same-video items. A batch can hold two captions of one video; such an item is a positive, not a
negative. `select_candidates` ranks every valid negative (other video) first and only when fewer than
K exist fills the remaining slots with the other same-video items (most similar first), NEVER with the
query's own item. This differs from the official code: it sets every same-video entry of the similarity
row to -1, the query's own entry included, and takes the top K. Without duplicates that excludes exactly
the own item; with a duplicate in the batch and K = B - 1 (the README setting) one of the tied -1 entries
is left out and it may be a duplicate rather than the own item, so the official list can hold the query's
own item twice: as the positive at index 0 (target 1) and as a "negative" (target 0). `faithful=True`
(params `train_gen.faithful_negatives`) reproduces that pick: the tied same-video entries, own item
included, follow the true negatives in batch order (the official topk leaves the order of ties
unspecified). Either way K = B - 1 stays usable. `same_video_candidates` marks the same-video
negatives so a caller can count or log them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from diffusionret.method.diffusion import GaussianDiffusion
from diffusionret.model.denoiser import Generator


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` (B, ...) from every process along dim 0 -> (W*B, ...), gradients flowing to every slice.

    Identity when torch.distributed is not initialised. The backward sums, over processes, the gradient each
    process's loss sends to this process's slice (open_clip's gather_with_grad); with gradients averaged over
    processes afterwards (DDP / accelerate), parameters get the gradient of the global-batch loss, independent
    of the number of processes. (The original AllGather kept only the local slice: 1/W of that.)
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(tensor.contiguous()), dim=0)


def concept_decorrelation(text_chunks: torch.Tensor, video_chunks: torch.Tensor, *, normaliser: float,
                          alpha: float, beta: float) -> torch.Tensor:
    """DiCoSA's chunk-decorrelation loss of positive pairs: (B, C, w) text chunks, (B, C, w) pooled video chunks.

    Each chunk is z-scored over its w dimensions (unbiased standard deviation); Gamma (C, C) =
    mean_a(Z_t[a]^T Z_v[a]) / normaliser; loss = alpha sum_k (Gamma_kk - 1)^2 + beta sum_{k != k'} Gamma_kk'^2.
    With normaliser = w - 1 Gamma is a correlation matrix; the official code divides by max_words instead.
    """
    def zscore(chunks: torch.Tensor) -> torch.Tensor:
        return (chunks - chunks.mean(dim=-1, keepdim=True)) / chunks.std(dim=-1, unbiased=True, keepdim=True)

    gamma = torch.einsum("bkw,bjw->kj", zscore(text_chunks), zscore(video_chunks)) / text_chunks.shape[0] / normaliser
    diagonal = torch.diagonal(gamma)
    on_diagonal = ((diagonal - 1.0) ** 2).sum()
    off_diagonal = (gamma ** 2).sum() - (diagonal ** 2).sum()
    return alpha * on_diagonal + beta * off_diagonal


def contrastive_loss(similarity: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE on exp(logit_scale) * S (B, B) with the diagonal as positives (official CrossEn)."""
    if similarity.dim() != 2 or similarity.shape[0] != similarity.shape[1]:
        raise ValueError(f"contrastive_loss needs a square (B, B) similarity; got {tuple(similarity.shape)}")
    logits = logit_scale.exp() * similarity  # (B, B): rows = texts, columns = videos
    targets = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2.0


def _rank_negatives(similarity: torch.Tensor, video_keys: torch.Tensor, num_negatives: int,
                    faithful: bool = False) -> torch.Tensor:
    """similarity (B, B) rows = queries -> (B, K) column indices: other videos by descending score, then same-video."""
    batch = similarity.shape[0]
    same_video = video_keys[:, None] == video_keys[None, :]  # (B, B)
    if faithful:  # official: same-video entries (own included) masked to one value, ties in batch order
        masked = similarity.masked_fill(same_video, float("-inf"))  # (B, B)
        return masked.argsort(dim=1, descending=True, stable=True)[:, :num_negatives]  # (B, K)
    # bucket 0: other video (true negative), 1: same video but another item, 2: the query's own item
    bucket = same_video.long() + torch.eye(batch, dtype=torch.long, device=similarity.device)  # (B, B)
    by_score = similarity.argsort(dim=1, descending=True, stable=True)  # (B, B), ties: lower index first
    by_bucket = bucket.gather(1, by_score).argsort(dim=1, stable=True)  # stable: keeps score order within buckets
    return by_score.gather(1, by_bucket)[:, :num_negatives]  # (B, K)


def select_candidates(
    similarity: torch.Tensor, video_keys: torch.Tensor, num_negatives: int, faithful: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidate lists (B, 1+K) for t2v (rows = texts, items = videos) and v2t (rows = videos, items = texts).

    similarity[i, j] = score of text i against video j for a batch of B (text, video) pairs; video_keys
    (B,) int64 identifies the video of each pair. Column 0 is the pair's own index, then K negatives
    (`faithful`: the official pick, see the module docstring).
    """
    if similarity.dim() != 2 or similarity.shape[0] != similarity.shape[1]:
        raise ValueError(f"select_candidates: similarity must be square (B, B), got {tuple(similarity.shape)}")
    batch = similarity.shape[0]
    if video_keys.shape != (batch,):
        raise ValueError(f"select_candidates: video_keys must have shape ({batch},), got {tuple(video_keys.shape)}")
    if not 1 <= num_negatives <= batch - 1:
        raise ValueError(
            f"select_candidates: num_negatives={num_negatives} must be in [1, B-1] = [1, {batch - 1}] for a batch "
            f"of {batch}; lower the number of negatives or raise the global batch size"
        )
    with torch.no_grad():
        own = torch.arange(batch, device=similarity.device)[:, None]  # (B, 1)
        t2v = torch.cat([own, _rank_negatives(similarity, video_keys, num_negatives, faithful)], dim=1)  # (B, 1+K)
        v2t = torch.cat([own, _rank_negatives(similarity.t(), video_keys, num_negatives, faithful)], dim=1)
    return t2v, v2t


def same_video_candidates(candidates: torch.Tensor, video_keys: torch.Tensor) -> torch.Tensor:
    """(B, 1+K) bool: negatives (columns >= 1) that share the query's video, i.e. fillers, not true negatives."""
    same = video_keys[candidates] == video_keys[:, None]  # (B, 1+K)
    same[:, 0] = False
    return same


def generation_loss(x0_hat: torch.Tensor, temperature_inv: float = 100.0) -> torch.Tensor:
    """Official "kl_loss": mean over queries of CE(softmax(x0_hat / tau_g), class 0); 1 / tau_g = `temperature_inv`."""
    target = torch.zeros(x0_hat.shape[0], dtype=torch.long, device=x0_hat.device)  # positive at index 0
    return F.cross_entropy(x0_hat * temperature_inv, target)


def stage2_loss(
    generator: Generator,
    diffusion: GaussianDiffusion,
    *,
    sentence: torch.Tensor,
    frames: torch.Tensor,
    frame_mask: torch.Tensor,
    similarity: torch.Tensor,
    video_keys: torch.Tensor,
    num_negatives: int,
    temperature_inv: float = 100.0,
    generator_rng: torch.Generator,
    positive_value: float = 1.0,
    negative_value: float = 0.0,
    rows: slice | None = None,
    faithful_negatives: bool = False,
    min_timestep: int = 0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_gen = CE_t2v + CE_v2t for one batch (weights 1, as official); returns (loss, detached per-direction terms).

    Random draws, all from `generator_rng` in this order: t (B,) shared by both directions, then the t2v noise,
    then the v2t noise (each (B, 1+K)).

    Args:
        generator: the two denoisers (`generator.t2v`, `generator.v2t`), the only trainable part.
        diffusion: the noise schedule (`q_sample`, `sample_timesteps`); its steps must fit the denoisers' table.
        sentence: (B, D) frozen sentence features of the B captions (detached here).
        frames: (B, T, D) frozen frame features of the B videos (detached here).
        frame_mask: (B, T) 0/1 valid-frame mask.
        similarity: (B, B) stage-1 scores of the batch, rows = texts; they pick each query's hard negatives.
        video_keys: (B,) int64 video id of each pair; same-video items are never negatives (see
            `select_candidates`).
        num_negatives: K, negatives per query, 1 <= K <= B - 1.
        temperature_inv: 1 / tau_g of the CE over x0_hat (100 in the official code).
        generator_rng: the torch.Generator of every random draw (t and both noises).
        positive_value: x0 entry of the positive (index 0).
        negative_value: x0 entry of each negative (0, or -1 for the `--neg -1` variant).
        rows: restricts the denoisers (and the loss) to those query rows, every draw still made for the whole
            batch: the loss is then (sum of the rows' CE terms) / B, so summing it over a partition of the rows
            gives exactly the full-batch loss (how processes and micro-batches split the work). None = all rows.
        min_timestep: t is drawn from [min_timestep, T-1] (0 = official).
    """
    sentence, frames = sentence.detach(), frames.detach()
    t2v_idx, v2t_idx = select_candidates(similarity.detach(), video_keys, num_negatives,
                                         faithful_negatives)  # (B, N) each
    rows = rows if rows is not None else slice(0, t2v_idx.shape[0])
    t2v_rows, v2t_rows = t2v_idx[rows], v2t_idx[rows]  # (R, N)
    return list_loss(generator, diffusion, sentence=sentence, frames=frames, frame_mask=frame_mask,
                     candidate_frames=frames[t2v_rows], candidate_mask=frame_mask[t2v_rows],
                     candidate_sentences=sentence[v2t_rows], num_candidates=t2v_idx.shape[1],
                     temperature_inv=temperature_inv, generator_rng=generator_rng, positive_value=positive_value,
                     negative_value=negative_value, rows=rows, min_timestep=min_timestep)


def list_loss(
    generator: Generator,
    diffusion: GaussianDiffusion,
    *,
    sentence: torch.Tensor,
    frames: torch.Tensor,
    frame_mask: torch.Tensor,
    candidate_frames: torch.Tensor,
    candidate_mask: torch.Tensor,
    candidate_sentences: torch.Tensor,
    num_candidates: int,
    temperature_inv: float,
    generator_rng: torch.Generator,
    positive_value: float = 1.0,
    negative_value: float = 0.0,
    rows: slice | None = None,
    min_timestep: int = 0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_gen of given candidate lists (column 0 the positive): what `stage2_loss` computes after picking them.

    sentence (B, D), frames (B, T, D), frame_mask (B, T): the B pairs' own features (queries of t2v / v2t);
    candidate_frames (R, N, T, D), candidate_mask (R, N, T): the t2v lists' videos and candidate_sentences
    (R, N, D) the v2t lists' captions, for the R query rows `rows`; N = num_candidates. Draws, from
    `generator_rng` for the whole batch: t (B,) in [min_timestep, T-1], then the t2v noise, then the v2t noise.
    """
    if diffusion.num_timesteps > generator.max_timesteps:
        raise ValueError(
            f"diffusion has {diffusion.num_timesteps} steps but the denoisers' timestep table has only "
            f"{generator.max_timesteps} rows; build the Generator with max_timesteps >= the diffusion steps"
        )
    batch, device = sentence.shape[0], sentence.device
    rows = rows if rows is not None else slice(0, batch)
    # x0 target: one-hot-like over the 1+K candidates, positive first (`--neg 0` or `--neg -1`)
    x0 = torch.full((batch, num_candidates), negative_value, dtype=sentence.dtype, device=device)  # (B, N)
    x0[:, 0] = positive_value
    t = diffusion.sample_timesteps(batch, generator_rng, device, min_step=min_timestep)  # (B,)
    noise_t2v = torch.randn(x0.shape, generator=generator_rng, device=generator_rng.device).to(device, x0.dtype)
    noise_v2t = torch.randn(x0.shape, generator=generator_rng, device=generator_rng.device).to(device, x0.dtype)

    share = candidate_frames.shape[0] / batch
    x_t_t2v = diffusion.q_sample(x0, t, noise_t2v)[rows]  # (R, N)
    x_t_v2t = diffusion.q_sample(x0, t, noise_v2t)[rows]
    x0_hat_t2v = generator.t2v(x_t_t2v, t[rows], sentence[rows].detach(), candidate_frames.detach(), candidate_mask)
    x0_hat_v2t = generator.v2t(x_t_v2t, t[rows], candidate_sentences.detach(), frames[rows].detach(), frame_mask[rows])
    loss_t2v = generation_loss(x0_hat_t2v, temperature_inv) * share
    loss_v2t = generation_loss(x0_hat_v2t, temperature_inv) * share
    return loss_t2v + loss_v2t, {"t2v": loss_t2v.detach(), "v2t": loss_v2t.detach()}


def kl_mean(logits: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(target) || softmax(logits)) along the last axis, summed and divided by the number of elements
    (HBI's 'mean' reduction). The target keeps its gradient (HBI's hierarchical KL does not detach it)."""
    target_log = torch.log_softmax(target_logits, dim=-1)
    return (target_log.exp() * (target_log - torch.log_softmax(logits, dim=-1))).sum() / logits.numel()


def banzhaf_distill(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """HBI's Banzhaf-map distillation of (B, t, v) maps: kl_mean over the frame axis plus kl_mean with every axis
    reversed, (v, t, B), which normalises over the batch (the released code's 3-D `.T`)."""
    return kl_mean(student, teacher) + kl_mean(student.permute(2, 1, 0), teacher.permute(2, 1, 0))
