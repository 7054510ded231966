"""The two denoising networks of DiffusionRet (reference §3): x_t over N candidates -> x0_hat over N candidates.

t2v (`TextToVideoDenoiser`, official `Diffusion`): query = a sentence, candidates = videos.
v2t (`VideoToTextDenoiser`, official `Diffusion_v`): query = a video, candidates = sentences.

Both share one skeleton (reference §3.1 / §3.2, numbered steps below):
  1. e = TimeMLP(PE[t])                                       timestep embedding
  2. text-frame attention: softmax over frames of <sentence, frame> / tau_f, multiplied by the frame
     mask AFTER the softmax (no renormalisation, faithful to the code, reference §14.16)
  3. q, k, v projections (no bias) of the pooled features plus e
  4. a = softmax_n(<q, k_n> + x_t[n])                          the noisy vector is an additive logit bias
  5. z = Wo(sum_n a_n v_n)
  6. x0_hat_n = Dec([z; candidate_n]) + a_n
No candidate position encoding, so both networks are permutation-equivariant over candidates.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class TimestepEmbedding(nn.Module):
    """Fixed sinusoidal table (max_timesteps x D) indexed by the integer step, then Linear-SiLU-Linear."""

    def __init__(self, width: int, max_timesteps: int = 5000):
        super().__init__()
        position = torch.arange(max_timesteps, dtype=torch.float32)[:, None]  # (P, 1)
        inv_freq = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(10000.0) / width))
        table = torch.zeros(max_timesteps, width)  # (P, D): sin on even, cos on odd channels
        table[:, 0::2] = torch.sin(position * inv_freq)
        table[:, 1::2] = torch.cos(position * inv_freq[: width // 2])
        self.register_buffer("table", table, persistent=False)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))

    @property
    def max_timesteps(self) -> int:
        return self.table.shape[0]

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """t (B,) int64 -> e (B, D)."""
        return self.mlp(self.table[t])


class _Denoiser(nn.Module):
    """Parameters and steps 1, 3-6 shared by both directions; subclasses do the frame pooling (step 2)."""

    def __init__(
        self,
        width: int = 512,
        frame_temperature: float = 1.0,
        max_timesteps: int = 5000,
        init_rng: torch.Generator | None = None,
    ):
        super().__init__()
        if frame_temperature <= 0:
            raise ValueError(f"frame_temperature (tau_f, `--temp`) must be > 0, got {frame_temperature}")
        self.width = width
        self.frame_temperature = frame_temperature
        self.time_embed = TimestepEmbedding(width, max_timesteps)
        self.q_proj = nn.Linear(width, width, bias=False)
        self.k_proj = nn.Linear(width, width, bias=False)
        self.v_proj = nn.Linear(width, width, bias=False)
        self.out_proj = nn.Linear(width, width)
        self.decoder = nn.Sequential(nn.Linear(2 * width, 2 * width), nn.ReLU(), nn.Linear(2 * width, 1))
        init_rng = torch.Generator().manual_seed(0) if init_rng is None else init_rng
        for module in self.modules():
            _init_weights(module, init_rng)

    @property
    def max_timesteps(self) -> int:
        return self.time_embed.max_timesteps

    def _frame_weights(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Step 2 weights: softmax_f(logits / tau_f) times the mask AFTER the softmax (no renormalisation)."""
        return (logits / self.frame_temperature).softmax(dim=-1) * mask.to(logits.dtype)

    def _attend_and_decode(
        self, x_t: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, candidates: torch.Tensor
    ) -> torch.Tensor:
        """Steps 4-6: q (B, D) or (B, N, D), k/v/candidates (B, N, D), x_t (B, N) -> x0_hat (B, N)."""
        if q.dim() == 2:
            logits = torch.einsum("bd,bnd->bn", q, k)  # (B, N)
        else:
            logits = torch.einsum("bnd,bnd->bn", q, k)  # (B, N): candidate n's own query
        attention = (logits + x_t.to(logits.dtype)).softmax(dim=-1)  # a, (B, N)
        z = self.out_proj(torch.einsum("bn,bnd->bd", attention, v))  # (B, D)
        decoder_in = torch.cat([z[:, None, :].expand_as(candidates), candidates], dim=-1)  # (B, N, 2D)
        return self.decoder(decoder_in).squeeze(-1) + attention  # (B, N)


class TextToVideoDenoiser(_Denoiser):
    """t2v denoiser (reference §3.1): a sentence query over N candidate videos."""

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        query_sentence: torch.Tensor,
        candidate_frames: torch.Tensor,
        candidate_mask: torch.Tensor,
    ) -> torch.Tensor:
        """x_t (B, N), t (B,), sentence (B, D), candidate_frames (B, N, T, D), candidate_mask (B, N, T) -> (B, N)."""
        e = self.time_embed(t)  # 1. (B, D)
        pooled = self.pool_frames(query_sentence, candidate_frames, candidate_mask)  # 2. vbar, (B, N, D)
        q = self.q_proj(query_sentence + e)  # 3. (B, D)
        k = self.k_proj(pooled + e[:, None, :])  # (B, N, D)
        v = self.v_proj(pooled + e[:, None, :])  # (B, N, D)
        return self._attend_and_decode(x_t, q, k, v, pooled)  # 4.-6.

    def pool_frames(self, query_sentence: torch.Tensor, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Text-frame attention: query_sentence (B, D), frames (B, N, T, D), mask (B, N, T) -> vbar (B, N, D)."""
        logits = torch.einsum("bd,bntd->bnt", query_sentence, frames)  # (B, N, T)
        return torch.einsum("bnt,bntd->bnd", self._frame_weights(logits, mask), frames)


class VideoToTextDenoiser(_Denoiser):
    """v2t denoiser (reference §3.2): a video query over N candidate sentences."""

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        candidate_sentences: torch.Tensor,
        query_frames: torch.Tensor,
        query_mask: torch.Tensor,
    ) -> torch.Tensor:
        """x_t (B, N), t (B,), candidate_sentences (B, N, D), query_frames (B, T, D), query_mask (B, T) -> (B, N)."""
        e = self.time_embed(t)  # 1. (B, D)
        pooled = self.pool_frames(candidate_sentences, query_frames, query_mask)  # 2. fbar, (B, N, D)
        q = self.q_proj(pooled + e[:, None, :])  # 3. (B, N, D)
        k = self.k_proj(candidate_sentences + e[:, None, :])  # (B, N, D)
        v = self.v_proj(candidate_sentences + e[:, None, :])  # (B, N, D)
        return self._attend_and_decode(x_t, q, k, v, candidate_sentences)  # 4.-6.

    def pool_frames(
        self, sentences: torch.Tensor, query_frames: torch.Tensor, query_mask: torch.Tensor
    ) -> torch.Tensor:
        """Text-frame attention per candidate: sentences (B, N, D), frames (B, T, D), mask (B, T) -> fbar (B, N, D)."""
        logits = torch.einsum("bnd,btd->bnt", sentences, query_frames)  # (B, N, T)
        return torch.einsum("bnt,btd->bnd", self._frame_weights(logits, query_mask[:, None, :]), query_frames)


class Generator(nn.Module):
    """The stage-2 trainable part: one t2v and one v2t denoiser with separate weights (initialised from `seed`)."""

    def __init__(self, width: int = 512, frame_temperature: float = 1.0, max_timesteps: int = 5000, seed: int = 0):
        super().__init__()
        init_rng = torch.Generator().manual_seed(seed)  # one stream: t2v drawn first, then v2t
        self.t2v = TextToVideoDenoiser(width, frame_temperature, max_timesteps, init_rng)
        self.v2t = VideoToTextDenoiser(width, frame_temperature, max_timesteps, init_rng)

    @property
    def max_timesteps(self) -> int:
        return min(self.t2v.max_timesteps, self.v2t.max_timesteps)


def _init_weights(module: nn.Module, rng: torch.Generator) -> None:
    """Linear weights N(0, 0.02), zero biases (reference §3: the whole official model is initialised so)."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=0.02, generator=rng)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
