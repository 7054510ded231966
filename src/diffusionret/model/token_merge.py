"""HBI's token merging: density-peak clustering (DPC-kNN) of a token set, score-weighted merging of each cluster
into one token, and cross-attention of the merged tokens over the tokens they came from.

One merging stage maps a token set (B, N, D) with an optional 0/1 mask (B, N) to N' = max(ceil(N r), 1) merged
tokens (B, N', D) without a mask: `ClusterMerge` (conv + LayerNorm, a score per token, DPC-kNN, merge), then
`MergedTokenAttention` (the merged tokens attend over the stage's pre-merge tokens, each key's score added to its
logits). HBI runs two stages per modality (rates 0.25 then 0.5): MSRVTT text 24 -> 6 -> 3, video 12 -> 3 -> 2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class TokenSet:
    """Tokens (B, N, D), their 0/1 mask (B, N) or None (every token valid), and the score (B, N) each token
    carries as a key bias into the next attention (None before the first merge)."""

    tokens: torch.Tensor
    mask: torch.Tensor | None = None
    score: torch.Tensor | None = None


def dpc_knn_clusters(tokens: torch.Tensor, mask: torch.Tensor | None, clusters: int, knn: int,
                     density_noise: float = 1e-6) -> torch.Tensor:
    """Cluster index (B, N) in [0, clusters) of every token by DPC-kNN, without gradient.

    d = cdist / sqrt(D); a padded token's column is set to (largest distance of the batch) + 1, so it is nobody's
    neighbour. Density rho_i = exp(-mean of the knn smallest d_i.^2) + U(0, 1) density_noise (ties broken at
    random, from torch's global RNG); padded tokens get rho = 0. delta_i = distance to the nearest token of higher
    density (the sample's largest distance if none). The `clusters` tokens of largest rho delta are the centres;
    every token joins its nearest centre, and each centre its own cluster.
    """
    with torch.no_grad():
        batch, count, width = tokens.shape
        distance = torch.cdist(tokens, tokens) / math.sqrt(width)  # (B, N, N)
        if mask is not None:
            valid = (mask > 0)[:, None, :]  # (B, 1, N): columns of valid tokens
            distance = torch.where(valid, distance, distance.max() + 1)
        nearest = distance.topk(knn, dim=-1, largest=False).values  # (B, N, knn), self included (0)
        density = torch.exp(-(nearest ** 2).mean(dim=-1))  # (B, N)
        if density_noise:
            density = density + torch.rand(density.shape, dtype=density.dtype, device=density.device) * density_noise
        if mask is not None:
            density = density * (mask > 0).to(density.dtype)
        higher = density[:, None, :] > density[:, :, None]  # (B, N, N): [b, i, j] = rho_j > rho_i
        sample_max = distance.flatten(1).max(dim=-1).values[:, None, None]  # (B, 1, 1)
        delta = torch.where(higher, distance, sample_max.expand_as(distance)).min(dim=-1).values  # (B, N)
        centres = (delta * density).topk(clusters, dim=-1).indices  # (B, N')
        to_centres = distance.gather(1, centres[:, :, None].expand(-1, -1, count))  # (B, N', N)
        assignment = to_centres.argmin(dim=1)  # (B, N)
        own = torch.arange(clusters, device=tokens.device).expand(batch, -1)  # (B, N')
        assignment.scatter_(1, centres, own)  # a centre is in its own cluster
    return assignment


def merge_clusters(tokens: torch.Tensor, assignment: torch.Tensor, clusters: int, weight: torch.Tensor) -> torch.Tensor:
    """Merged tokens (B, N', D): the weighted mean sum_i w_i x_i / (1e-6 + sum_i w_i) over each cluster's tokens,
    with `weight` (B, N) >= 0 (exp of the token scores; 0 for padded tokens). The assignment is discrete; gradients
    reach `tokens` and `weight`."""
    batch, count, width = tokens.shape
    one_hot = F.one_hot(assignment, clusters).to(tokens.dtype)  # (B, N, N')
    totals = torch.einsum("bn,bnk->bk", weight, one_hot) + 1e-6  # (B, N')
    share = weight / totals.gather(1, assignment)  # (B, N): w_i / (1e-6 + its cluster's total)
    return torch.einsum("bn,bnk,bnd->bkd", share, one_hot, tokens)  # (B, N', D)


class ClusterMerge(nn.Module):
    """One merging step: x <- LN(x + Conv1d_k3(x)) (no conv bias), score s = Linear(D, 1)(x) (-inf at padded
    tokens), DPC-kNN into max(ceil(N rate), 1) clusters, merge with weights exp(s). Returns the merged set (no mask)
    and the pre-merge set (normalised tokens, their scores) that the attention reads as keys."""

    def __init__(self, width: int, rate: float, knn: int = 3, density_noise: float = 1e-6) -> None:
        super().__init__()
        self.rate, self.knn, self.density_noise = rate, knn, density_noise
        self.conv = nn.Conv1d(width, width, kernel_size=3, padding=1, bias=False)
        self.norm = nn.LayerNorm(width)
        self.score = nn.Linear(width, 1)

    def clusters(self, count: int) -> int:
        return max(math.ceil(count * self.rate), 1)

    def forward(self, tokens: TokenSet) -> tuple[TokenSet, TokenSet]:
        x = tokens.tokens
        x = self.norm(x + self.conv(x.transpose(1, 2)).transpose(1, 2))  # (B, N, D)
        score = self.score(x).squeeze(-1)  # (B, N)
        if tokens.mask is not None:
            score = score.masked_fill(tokens.mask == 0, float("-inf"))
        clusters = self.clusters(x.shape[1])
        assignment = dpc_knn_clusters(x, tokens.mask, clusters, min(self.knn, x.shape[1]),
                                      self.density_noise)  # (B, N); clusters <= N as rate <= 1
        merged = merge_clusters(x, assignment, clusters, score.exp())  # (B, N', D)
        return TokenSet(merged), TokenSet(x, tokens.mask, score)


class MergedTokenAttention(nn.Module):
    """Merged tokens q (B, N', D) attend over the pre-merge tokens k (B, N, D): one LayerNorm shared by both,
    q Linear(D, D), kv Linear(D, 2D), `heads` heads with scale head_dim^-1/2, each key's score added to its logit
    (-inf at padded keys), proj Linear(D, D), residual onto the un-normalised q; no MLP. Linear weights are
    truncated-normal(0.02), biases 0."""

    def __init__(self, width: int, heads: int = 8) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"hbi: the feature width {width} does not split into {heads} attention heads")
        self.heads, self.scale = heads, (width // heads) ** -0.5
        self.norm = nn.LayerNorm(width)
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.proj = nn.Linear(width, width)
        for layer in (self.q, self.kv, self.proj):
            nn.init.trunc_normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)

    def forward(self, merged: TokenSet, keys: TokenSet) -> TokenSet:
        batch, queries, width = merged.tokens.shape
        head_width = width // self.heads
        q = self.q(self.norm(merged.tokens)).view(batch, queries, self.heads, head_width)
        q = q.transpose(1, 2)  # (B, h, N', w)
        kv = self.kv(self.norm(keys.tokens)).view(batch, -1, 2, self.heads, head_width).permute(2, 0, 3, 1, 4)
        k, v = kv[0], kv[1]  # (B, h, N, w) each
        logits = (q * self.scale) @ k.transpose(-2, -1)  # (B, h, N', N)
        if keys.score is not None:
            logits = logits + keys.score[:, None, None, :]
        attended = (logits.softmax(dim=-1) @ v).transpose(1, 2).reshape(batch, queries, width)  # (B, N', D)
        return TokenSet(merged.tokens + self.proj(attended))


class MergeStages(nn.Module):
    """Successive merging stages of one modality; returns the token set after each stage (tokens (B, N_s, D))."""

    def __init__(self, width: int, rates: tuple[float, ...], knn: int, heads: int) -> None:
        super().__init__()
        self.merges = nn.ModuleList(ClusterMerge(width, rate, knn) for rate in rates)
        self.attends = nn.ModuleList(MergedTokenAttention(width, heads) for _ in rates)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        current, outputs = TokenSet(tokens, mask), []
        for merge, attend in zip(self.merges, self.attends):
            merged, keys = merge(current)
            current = attend(merged, keys)
            outputs.append(current.tokens)
        return outputs
