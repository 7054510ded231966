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
    cell = only_i[..., :, None] * only_j[..., None, :]  # (L(i), T(j), L, T): the single cell (i, j)
    # broadcast layout below: (chunk, B, L(i), T(j), L or T [, T])
    pair_maps = maps[None, :, None, None]  # (1, B, 1, 1, L, T)
    text_w = text_weights[None, :, None, None, :]  # (1, B, 1, 1, L)
    video_w = video_weights[None, :, None, None, :]  # (1, B, 1, 1, T)
    total = torch.zeros(batch, words, frames, dtype=dtype, device=device)
    for start in range(0, draws, draw_chunk):
        s_t = text_draws[start:start + draw_chunk][:, None] * not_i * text_mask[None, :, None, None, :]  # (c, B, L, T, L)
        s_v = video_draws[start:start + draw_chunk][:, None] * not_j * video_mask[None, :, None, None, :]  # (c, B, L, T, T)
        with_i = s_t + only_i  # S_t + i (labels of padded i or j are masked at the end)
        with_j = s_v + only_j
        grid = s_t[..., :, None] * s_v[..., None, :]  # (c, B, L, T, L, T): S_t x S_v
        if semantics == "official":
            all_frames = video_mask[None, :, None, None, :]  # frame weights always over the whole video mask
            text4 = torch.softmax(_outside(text_w, s_t), dim=-1)  # first softmax of f4's token weights
            video4 = torch.softmax(_outside(video_w, all_frames), dim=-1)
            f4 = coalition_wti(pair_maps, grid, _outside(text_w, s_t), _outside(video_w, all_frames))
            # f1: f4's cells plus the cell (i, j); f4's (already softmaxed) weights with i's / j's raw weight put back
            text1 = torch.where(only_i.bool(), text_w, _outside(text4, s_t))
            video1 = torch.where(only_j.bool(), video_w, _outside(video4, all_frames))
            f1 = coalition_wti(pair_maps, grid + cell, text1, video1)  # (i, j) is never in S_t x S_v
            f2 = coalition_wti(pair_maps, with_i[..., :, None] * s_v[..., None, :], _outside(text_w, with_i),
                               _outside(video_w, all_frames))
            f3 = coalition_wti(pair_maps, s_t[..., :, None] * with_j[..., None, :], _outside(text_w, s_t),
                               _outside(video_w, all_frames))
        else:
            log_t, log_v = text_w.clamp_min(1e-30).log(), video_w.clamp_min(1e-30).log()  # softmax = renormalise

            def value(tokens: torch.Tensor, frames_in: torch.Tensor) -> torch.Tensor:
                return coalition_wti(pair_maps, tokens[..., :, None] * frames_in[..., None, :],
                                     _outside(log_t, tokens), _outside(log_v, frames_in))

            f1, f2, f3, f4 = value(with_i, with_j), value(with_i, s_v), value(s_t, with_j), value(s_t, s_v)
        total = total + (f1 - f2 - f3 + f4).sum(dim=0)  # (B, L, T)
    return total / draws * text_mask[:, :, None] * video_mask[:, None, :]
