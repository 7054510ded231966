"""HBI's Banzhaf interaction: the CNN that estimates it from a token-frame similarity map, and the Monte-Carlo
labels the estimator is pre-trained on.

Players are the text tokens and the video frames of one (caption, video) pair, the game value f(S_t, S_v) is the
WTI score of the pair restricted to the cells S_t x S_v, and the label of cell (i, j) is an average over random
coalitions S_t ~ Bern(1/2)^L, S_v ~ Bern(1/2)^T (i and j removed, intersected with the masks) of
f1 - f2 - f3 + f4. Two definitions (`LABEL_SEMANTICS`):

- `official` (the released code after its fix of the f3 coalition): f4 = f(S_t, S_v); f2 = f(S_t + i, S_v);
  f3 = f(S_t, S_v + j); f1 adds only the single cell (i, j) to S_t x S_v, and its weights are those of f4 with
  i's (j's) raw weight put back before a second softmax. Every f's token weights are softmax(weights masked to
  -9e15 outside S_t) of the given weights (probabilities, so a softmax of probabilities), its frame weights
  softmax over the whole video mask (not S_v).
- `textbook`: the Banzhaf interaction index with f the WTI of the sub-map S_t x S_v whose weights are the given
  weights renormalised over S_t (S_v): f(S_t + i, S_v + j) - f(S_t + i, S_v) - f(S_t, S_v + j) + f(S_t, S_v).

The released generator loops over i, j and the draws in Python (L T draws sub-evaluations per step, each four
WTIs of the whole batch); `banzhaf_labels` evaluates all (draw, i, j) coalitions of a chunk of draws at once.
"""

from __future__ import annotations

import torch
from torch import nn

INVALID_WEIGHT_LOGIT = -9e15
LABEL_SEMANTICS = ("official", "textbook")


class BanzhafModule(nn.Module):
    """Map (B, t, v) -> Banzhaf estimate (B, t, v): y = ReLU(Conv3x3(1 -> P)(map)); y <- y + softmax(yQ (yK)^T) yV
    over the t v positions (unscaled); out = Conv3x3(P -> 1)(y). Q, K, V (P, P) are Xavier-uniform (gain 1.414).
    `unused_norm` is the released module's BatchNorm2d, defined but never applied: kept so that the parameter
    count and state layout are the released ones."""

    def __init__(self, planes: int = 64) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(1, planes, kernel_size=3, padding=1)
        self.unused_norm = nn.BatchNorm2d(planes)
        self.conv_out = nn.Conv2d(planes, 1, kernel_size=3, padding=1)
        self.query, self.key, self.value = (nn.Parameter(torch.empty(planes, planes)) for _ in range(3))
        for matrix in (self.query, self.key, self.value):
            nn.init.xavier_uniform_(matrix, gain=1.414)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        batch, rows, cols = maps.shape
        y = torch.relu(self.conv_in(maps[:, None]))  # (B, P, t, v)
        flat = y.flatten(2).transpose(1, 2)  # (B, t v, P)
        attention = torch.softmax((flat @ self.query) @ (flat @ self.key).transpose(1, 2), dim=-1)  # (B, tv, tv)
        mixed = (attention @ (flat @ self.value)).transpose(1, 2).reshape(y.shape)  # (B, P, t, v)
        return self.conv_out(y + mixed)[:, 0]  # (B, t, v)


def coalition_wti(maps: torch.Tensor, cells: torch.Tensor, text_logits: torch.Tensor,
                  video_logits: torch.Tensor) -> torch.Tensor:
    """Single-pair WTI of maps (..., L, T) with the cells outside `cells` (..., L, T) (0/1) set to 0:
    1/2 [sum_l softmax(text_logits)_l max_f m_lf + sum_f softmax(video_logits)_f max_l m_lf] -> (...)."""
    masked = maps * cells  # (..., L, T)
    t2v = (masked.max(dim=-1).values * torch.softmax(text_logits, dim=-1)).sum(dim=-1)
    v2t = (masked.max(dim=-2).values * torch.softmax(video_logits, dim=-1)).sum(dim=-1)
    return (t2v + v2t) / 2.0


def _with_zero(best: torch.Tensor, has_zero: torch.Tensor) -> torch.Tensor:
    """max(best, 0) where the row (column) also holds a zeroed cell, else best."""
    return torch.where(has_zero, best.clamp_min(0.0), best)


def _value(row_maxima: torch.Tensor, text_logits: torch.Tensor, col_maxima: torch.Tensor,
           video_logits: torch.Tensor) -> torch.Tensor:
    """WTI from the row maxima (.., L) and column maxima (.., T) of a coalition's map (0 for rows / columns
    outside it): 1/2 [softmax(text_logits) . rows + softmax(video_logits) . columns]."""
    return ((torch.softmax(text_logits, dim=-1) * row_maxima).sum(dim=-1)
            + (torch.softmax(video_logits, dim=-1) * col_maxima).sum(dim=-1)) / 2.0


def _outside(weights: torch.Tensor, members: torch.Tensor) -> torch.Tensor:
    """weights with -9e15 where members == 0 (same shape)."""
    return weights.masked_fill(members == 0, INVALID_WEIGHT_LOGIT)


def draw_coalitions(draws: int, words: int, frames: int, generator: torch.Generator
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Random coalitions, one per (draw, i, j) and shared by the batch (as released): token sets (draws, L, T, L)
    then frame sets (draws, L, T, T), each entry Bernoulli(1/2) (0/1 float), drawn from `generator` in that order."""
    tokens = (torch.rand(draws, words, frames, words, generator=generator) > 0.5).float()
    frames_in = (torch.rand(draws, words, frames, frames, generator=generator) > 0.5).float()
    return tokens, frames_in


def banzhaf_labels(maps: torch.Tensor, text_mask: torch.Tensor, video_mask: torch.Tensor,
                   text_weights: torch.Tensor, video_weights: torch.Tensor,
                   coalitions: tuple[torch.Tensor, torch.Tensor], *, semantics: str = "official",
                   multiplier: float = 1000.0, draw_chunk: int = 10) -> torch.Tensor:
    """Monte-Carlo Banzhaf labels (B, L, T) of the positive pairs' similarity maps.

    maps (B, L, T): masked token-frame cosines of each pair; text_mask (B, L), video_mask (B, T): 0/1;
    text_weights (B, L), video_weights (B, T): the WTI weights (after their softmax). The maps are multiplied by
    `multiplier` first (official 1000). `coalitions` (`draw_coalitions`): token sets (N, L, T, L) and frame sets
    (N, L, T, T) of each draw and cell (i, j); i and j are removed from them and they are intersected with the
    masks here. The label is the mean over the N draws of f1 - f2 - f3 + f4 (module docstring), zero at padded
    cells. `draw_chunk` draws are evaluated at once (memory about B L T draw_chunk L T per coalition value).
    """
    if semantics not in LABEL_SEMANTICS:
        raise ValueError(f"unknown Banzhaf label semantics {semantics!r}; choose one of {LABEL_SEMANTICS}")
    batch, words, frames = maps.shape
    dtype, device = maps.dtype, maps.device
    maps = maps * multiplier
    text_mask, video_mask = text_mask.to(dtype), video_mask.to(dtype)
    text_draws, video_draws = (draw.to(device, dtype) for draw in coalitions)
    draws = text_draws.shape[0]
    not_i = 1.0 - torch.eye(words, dtype=dtype, device=device)[:, None, :]  # (L(i), 1, L): drop token i
    not_j = 1.0 - torch.eye(frames, dtype=dtype, device=device)[None, :, :]  # (1, T(j), T): drop frame j
    only_i = torch.eye(words, dtype=dtype, device=device)[:, None, :]  # (L(i), 1, L)
    only_j = torch.eye(frames, dtype=dtype, device=device)[None, :, :]  # (1, T(j), T)
    # broadcast layout below: (chunk, B, L(i), T(j), L or T); the four values come from the row and column maxima
    # of two (chunk, B, L, T, L, T) masked maps per chunk (S_v's rows, S_t's columns), not from a grid per f
    pair_maps = maps[None, :, None, None]  # (1, B, 1, 1, L, T)
    row_j = maps.transpose(1, 2)[None, :, None]  # (1, B, 1, T(j), L): m_lj
    col_i = maps[None, :, :, None]  # (1, B, L(i), 1, T): m_if
    cell_ij = maps[None, :, :, :, None]  # (1, B, L(i), T(j), 1): m_ij
    text_w = text_weights[None, :, None, None, :]  # (1, B, 1, 1, L)
    video_w = video_weights[None, :, None, None, :]  # (1, B, 1, 1, T)
    all_frames = video_mask[None, :, None, None, :]  # official frame weights: softmax over the whole video mask
    total = torch.zeros(batch, words, frames, dtype=dtype, device=device)
    for start in range(0, draws, draw_chunk):
        chunk = slice(start, start + draw_chunk)
        s_t = text_draws[chunk][:, None] * not_i * text_mask[None, :, None, None, :]  # (c, B, L, T, L)
        s_v = video_draws[chunk][:, None] * not_j * video_mask[None, :, None, None, :]  # (c, B, L, T, T)
        with_i, with_j = s_t + only_i, s_v + only_j  # S_t + i, S_v + j (labels of padded i or j are masked at the end)
        # Cells outside the coalition are 0, not -inf: the max of a row (column) holds a 0 whenever the coalition
        # misses a frame (token). best_* = max over the coalition's members, then that 0 where it applies.
        best_row = torch.where(s_v[..., None, :] > 0, pair_maps, float("-inf")).amax(dim=-1)  # (c, B, L, T, L)
        best_col = torch.where(s_t[..., :, None] > 0, pair_maps, float("-inf")).amax(dim=-2)  # (c, B, L, T, T)
        count_v, count_t = s_v.sum(dim=-1, keepdim=True), s_t.sum(dim=-1, keepdim=True)  # (c, B, L, T, 1)
        rows_v = _with_zero(best_row, count_v < frames)  # row maxima of S_t x S_v (any row l, masked by S_t below)
        rows_vj = _with_zero(torch.maximum(best_row, row_j), count_v + 1 < frames)  # ... of S_v + j
        cols_t = _with_zero(best_col, count_t < words)  # column maxima of S_t x S_v
        cols_ti = _with_zero(torch.maximum(best_col, col_i), count_t + 1 < words)  # ... of S_t + i
        if semantics == "official":
            text_logits, frame_logits = _outside(text_w, s_t), _outside(video_w, all_frames)
            f4 = _value(s_t * rows_v, text_logits, s_v * cols_t, frame_logits)
            f2 = _value(with_i * rows_v, _outside(text_w, with_i), s_v * cols_ti, frame_logits)
            f3 = _value(s_t * rows_vj, text_logits, with_j * cols_t, frame_logits)
            # f1: S_t x S_v plus the single cell (i, j): row i and column j hold only m_ij (and zeros, if any);
            # its weights are f4's (already softmaxed) with i's / j's given weight put back, softmaxed again
            row_i = _with_zero(cell_ij.expand(-1, -1, -1, -1, 1), torch.tensor(frames > 1, device=device))
            col_j = _with_zero(cell_ij.expand(-1, -1, -1, -1, 1), torch.tensor(words > 1, device=device))
            text1 = torch.where(only_i.bool(), text_w, _outside(torch.softmax(text_logits, dim=-1), s_t))
            video1 = torch.where(only_j.bool(), video_w, _outside(torch.softmax(frame_logits, dim=-1), all_frames))
            f1 = _value(s_t * rows_v + only_i * row_i, text1, s_v * cols_t + only_j * col_j, video1)
        else:
            log_t, log_v = text_w.clamp_min(1e-30).log(), video_w.clamp_min(1e-30).log()  # softmax = renormalise
            f1 = _value(with_i * rows_vj, _outside(log_t, with_i), with_j * cols_ti, _outside(log_v, with_j))
            f2 = _value(with_i * rows_v, _outside(log_t, with_i), s_v * cols_ti, _outside(log_v, s_v))
            f3 = _value(s_t * rows_vj, _outside(log_t, s_t), with_j * cols_t, _outside(log_v, with_j))
            f4 = _value(s_t * rows_v, _outside(log_t, s_t), s_v * cols_t, _outside(log_v, s_v))
        total = total + (f1 - f2 - f3 + f4).sum(dim=0)  # (B, L, T)
    return total / draws * text_mask[:, :, None] * video_mask[:, None, :]
