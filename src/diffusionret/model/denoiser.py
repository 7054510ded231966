"""The two denoising networks of DiffusionRet (official models/diffusion.py): x_t (N candidates) -> x0_hat (N).

t2v (`TextToVideoDenoiser`, official `Diffusion`): query = a sentence, candidates = videos.
v2t (`VideoToTextDenoiser`, official `Diffusion_v`): query = a video, candidates = sentences.

Both share one skeleton (numbered steps below):
  1. e = TimeMLP(PE[t])                                       timestep embedding
  2. text-frame attention: softmax over frames of <sentence, frame> / tau_f, multiplied by the frame
     mask AFTER the softmax (no renormalisation, so padded frames keep softmax mass, as the official code does)
  3. q, k, v projections (no bias) of the pooled features plus e
  4. a = softmax_n(<q, k_n> + x_t[n])                          the noisy vector is an additive logit bias
  5. z = Wo(sum_n a_n v_n)
  6. x0_hat_n = Dec([z; candidate_n]) + a_n
No candidate position encoding, so both networks are permutation-equivariant over candidates.

Each call is split into `condition(...)` (step 2, the q/k/v projections of the step-independent inputs, their
<q, k> part, and the candidate half of the decoder's first layer) and `denoise(x_t, t, condition)` (everything
that depends on x_t or t). q/k/v have no bias, so W(x + e) = Wx + We; <Q + q_e, K + k_e> is expanded into its
four terms; sum_n a_n (V_n + v_e) = sum_n a_n V_n + v_e; Dec's first layer on [z; c] is W_z z + W_c c + b; the
time terms are computed once per distinct step. The split is the same function, regrouped. `forward` is
`denoise(x_t, t, condition(...))`; DDIM re-ranking computes the condition once per query block and only `denoise`
at each of its T steps (O(N D) per candidate instead of O(N D^2)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class DenoiserCondition:
    """The part of a denoiser call that depends on neither x_t nor t, for a block of B queries x N candidates."""

    query: torch.Tensor  # Q = W_q (query side without e): (B, D) for t2v, (B, N, D) for v2t
    keys: torch.Tensor  # K = W_k (candidate side without e), (B, N, D)
    values: torch.Tensor  # W_v (candidate side without e), (B, N, D)
    query_key: torch.Tensor  # <Q, K_n>, (B, N)
    decoder_candidates: torch.Tensor  # Dec's first layer on the candidate half, plus its bias, (B, N, 2D)


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
        # ReLU in place: a DDIM step then allocates one (B, N, 2D) buffer, not two
        self.decoder = nn.Sequential(nn.Linear(2 * width, 2 * width), nn.ReLU(inplace=True), nn.Linear(2 * width, 1))
        init_rng = torch.Generator().manual_seed(0) if init_rng is None else init_rng
        for module in self.modules():
            _init_weights(module, init_rng)

    @property
    def max_timesteps(self) -> int:
        return self.time_embed.max_timesteps

    def _frame_weights(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Step 2 weights: softmax_f(logits / tau_f) times the mask AFTER the softmax (no renormalisation)."""
        return (logits / self.frame_temperature).softmax(dim=-1) * mask.to(logits.dtype)

    def _condition(
        self, query_input: torch.Tensor, key_value_input: torch.Tensor, candidates: torch.Tensor
    ) -> DenoiserCondition:
        """Step-independent parts of steps 3, 4 and 6: projections without e, <Q, K>, decoder's candidate half."""
        first = self.decoder[0]  # Linear(2D, 2D) on [z; candidate]: columns :D see z, D: see the candidate
        query, keys = self.q_proj(query_input), self.k_proj(key_value_input)  # (B, D) or (B, N, D); (B, N, D)
        query_key = torch.einsum("bd,bnd->bn" if query.dim() == 2 else "bnd,bnd->bn", query, keys)  # (B, N)
        return DenoiserCondition(
            query=query,
            keys=keys,
            values=self.v_proj(key_value_input),
            query_key=query_key,
            decoder_candidates=F.linear(candidates, first.weight[:, self.width :], first.bias),  # (B, N, 2D)
        )

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, condition: DenoiserCondition) -> torch.Tensor:
        """Steps 1 and 3-6 given the step-independent `condition`: x_t (B, N), t (B,) -> x0_hat (B, N)."""
        steps, step_of_row = torch.unique(t, return_inverse=True)  # DDIM: one step for the whole block
        e = self.time_embed(steps)  # 1. (S, D), once per distinct step
        query_step = self.q_proj(e)[step_of_row]  # 3. W_q e, (B, D)
        key_step = self.k_proj(e)[step_of_row]  # W_k e, (B, D)
        value_step = self.v_proj(e)[step_of_row]  # W_v e, (B, D)
        # 4. <Q + W_q e, K_n + W_k e>, expanded so that no (B, N, D) q or k is built per step
        query_key_step = torch.einsum("bd,bd->b", query_step, key_step)[:, None]  # (B, 1)
        query_with_key_step = torch.einsum("b...d,bd->b...", condition.query, key_step)  # (B,) or (B, N)
        if query_with_key_step.dim() == 1:
            query_with_key_step = query_with_key_step[:, None]
        logits = (condition.query_key + torch.einsum("bd,bnd->bn", query_step, condition.keys)
                  + query_with_key_step + query_key_step)  # (B, N)
        attention = (logits + x_t.to(logits.dtype)).softmax(dim=-1)  # a, (B, N)
        # 5. sum_n a_n (V_n + W_v e) = sum_n a_n V_n + W_v e, as the a_n sum to 1
        z = self.out_proj(torch.einsum("bn,bnd->bd", attention, condition.values) + value_step)  # (B, D)
        first, activation, last = self.decoder
        hidden = activation(condition.decoder_candidates + F.linear(z, first.weight[:, : self.width])[:, None, :])
        return last(hidden).squeeze(-1) + attention  # 6. (B, N)


class TextToVideoDenoiser(_Denoiser):
    """t2v denoiser (official `Diffusion`): a sentence query over N candidate videos."""

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        query_sentence: torch.Tensor,
        candidate_frames: torch.Tensor,
        candidate_mask: torch.Tensor,
    ) -> torch.Tensor:
        """x_t (B, N), t (B,), sentence (B, D), candidate_frames (B, N, T, D), candidate_mask (B, N, T) -> (B, N)."""
        return self.denoise(x_t, t, self.condition(query_sentence, candidate_frames, candidate_mask))

    def condition(
        self, query_sentence: torch.Tensor, candidate_frames: torch.Tensor, candidate_mask: torch.Tensor
    ) -> DenoiserCondition:
        """Step 2 and the step-independent projections: q from the sentence, k/v/decoder from vbar."""
        pooled = self.pool_frames(query_sentence, candidate_frames, candidate_mask)  # 2. vbar, (B, N, D)
        return self._condition(query_sentence, pooled, pooled)

    def pool_frames(self, query_sentence: torch.Tensor, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Text-frame attention: query_sentence (B, D), frames (B, N, T, D), mask (B, N, T) -> vbar (B, N, D)."""
        logits = torch.einsum("bd,bntd->bnt", query_sentence, frames)  # (B, N, T)
        return torch.einsum("bnt,bntd->bnd", self._frame_weights(logits, mask), frames)


class VideoToTextDenoiser(_Denoiser):
    """v2t denoiser (official `Diffusion_v`): a video query over N candidate sentences."""

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        candidate_sentences: torch.Tensor,
        query_frames: torch.Tensor,
        query_mask: torch.Tensor,
    ) -> torch.Tensor:
        """x_t (B, N), t (B,), candidate_sentences (B, N, D), query_frames (B, T, D), query_mask (B, T) -> (B, N)."""
        return self.denoise(x_t, t, self.condition(candidate_sentences, query_frames, query_mask))

    def condition(
        self, candidate_sentences: torch.Tensor, query_frames: torch.Tensor, query_mask: torch.Tensor
    ) -> DenoiserCondition:
        """Step 2 and the step-independent projections: q from fbar, k/v/decoder from the sentences."""
        pooled = self.pool_frames(candidate_sentences, query_frames, query_mask)  # 2. fbar, (B, N, D)
        return self._condition(pooled, candidate_sentences, candidate_sentences)

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
    """Linear weights N(0, 0.02), zero biases, as the official code initialises its whole model."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=0.02, generator=rng)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
