"""Text-video similarity heads: `wti` (DRL's token-wise weighted interaction, DiffusionRet's head), `meanP`,
`emcl` (EMCL-Net: pooled features + EM low-rank reconstruction), `dicosa` (DiCoSA: MLP-weighted chunk cosines) and
`hbi` (HBI: WTI plus two token-merging levels, Banzhaf distillation in training).

Common call: head(text_tokens (Bt, L, D), text_mask (Bt, L), sentence (Bt, D), video_frames (Bv, T, D),
video_mask (Bv, T)) -> (Bt, Bv). The (Bt, Bv, L, T) interaction is computed `chunk_size` x `chunk_size`
pairs at a time, so a 1000 x 1000 evaluation never holds the whole tensor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from diffusionret.model.banzhaf import BanzhafModule
from diffusionret.model.token_merge import MergeStages

INVALID_WEIGHT_LOGIT = -9e15  # fill for padded tokens/frames before the weight softmax (official WTI)
DEFAULT_CHUNK_SIZE = 128


def _weight_mlp(width: int) -> nn.Sequential:
    """Linear(D, 2D) - ReLU - Linear(2D, 1): one logit per token or frame.

    Initialised as the official code initialises every Linear of its model: weights N(0, 0.02), zero biases
    (PyTorch's default Kaiming-uniform would give other starting token/frame weights). Draws from torch's
    global RNG, which the stage seeds before building the model.
    """
    mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.ReLU(inplace=True), nn.Linear(2 * width, 1))
    for layer in (mlp[0], mlp[2]):
        nn.init.normal_(layer.weight, mean=0.0, std=0.02)
        nn.init.zeros_(layer.bias)
    return mlp


def _masked_weights(mlp: nn.Module, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """softmax over valid positions of mlp(features): (B, N, D), (B, N) -> (B, N)."""
    logits = mlp(features).squeeze(-1)  # (B, N)
    logits = logits.masked_fill(mask == 0, INVALID_WEIGHT_LOGIT)
    return torch.softmax(logits, dim=-1)


class WTIHead(nn.Module):
    """Token-wise weighted interaction: weighted max-over-frames and max-over-tokens cosine, averaged."""

    def __init__(self, width: int, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        super().__init__()
        self.text_weight_fc = _weight_mlp(width)
        self.video_weight_fc = _weight_mlp(width)
        self.chunk_size = chunk_size

    def forward(
        self,
        text_tokens: torch.Tensor,
        text_mask: torch.Tensor,
        sentence: torch.Tensor,
        video_frames: torch.Tensor,
        video_mask: torch.Tensor,
    ) -> torch.Tensor:
        """WTI similarity (Bt, Bv): mean of weighted token->frame and frame->token max-sims; no `sentence`."""
        text_mask = text_mask.to(text_tokens.dtype)
        video_mask = video_mask.to(video_frames.dtype)
        text_weights = _masked_weights(self.text_weight_fc, text_tokens, text_mask)  # (Bt, L), unnormalised input
        video_weights = _masked_weights(self.video_weight_fc, video_frames, video_mask)  # (Bv, T)
        text_unit = F.normalize(text_tokens, dim=-1) * text_mask.unsqueeze(-1)  # (Bt, L, D), padded tokens 0
        video_unit = F.normalize(video_frames, dim=-1) * video_mask.unsqueeze(-1)  # (Bv, T, D), padded frames 0
        return weighted_interaction(text_unit, text_weights, video_unit, video_weights, self.chunk_size)


def weighted_interaction(text_unit: torch.Tensor, text_weights: torch.Tensor, video_unit: torch.Tensor,
                         video_weights: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """WTI of unit token features (Bt, L, D) and unit frame features (Bv, T, D) with their weights (Bt, L) and
    (Bv, T): mean of the weighted token->frame and frame->token max-sims, (Bt, Bv), in chunk_size x chunk_size
    blocks. Padded tokens/frames must be zero vectors (their max-sims are then 0, not -inf)."""
    rows = []
    for text_start in range(0, text_unit.shape[0], chunk_size):
        text_slice = slice(text_start, text_start + chunk_size)
        row = []
        for video_start in range(0, video_unit.shape[0], chunk_size):
            video_slice = slice(video_start, video_start + chunk_size)
            # S[a, b, l, f] = <h_al, f_bf>: (bt, bv, L, T)
            interaction = torch.einsum("ald,bfd->ablf", text_unit[text_slice], video_unit[video_slice])
            t2v = (interaction.max(dim=3).values * text_weights[text_slice, None, :]).sum(dim=2)  # (bt, bv)
            v2t = (interaction.max(dim=2).values * video_weights[None, video_slice, :]).sum(dim=2)  # (bt, bv)
            row.append((t2v + v2t) / 2.0)
        rows.append(torch.cat(row, dim=1))
    return torch.cat(rows, dim=0)  # (Bt, Bv)


class MeanPoolHead(nn.Module):
    """Cosine of the sentence feature and the masked mean of the L2-normalised frame features.

    CLIP4Clip's meanP order: every frame is normalised first, then the valid frames are averaged (the
    mean is normalised again by the cosine), so a frame with a large norm does not dominate the video.
    """

    def __init__(self, width: int, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        super().__init__()
        self.chunk_size = chunk_size  # unused: the (Bt, Bv) product needs no chunking

    def forward(
        self,
        text_tokens: torch.Tensor,
        text_mask: torch.Tensor,
        sentence: torch.Tensor,
        video_frames: torch.Tensor,
        video_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Similarity (Bt, Bv) = cos(c_a, mean_f valid F_bf / |F_bf|); text tokens are unused by this head."""
        video_mask = video_mask.to(video_frames.dtype).unsqueeze(-1)  # (Bv, T, 1)
        unit_frames = F.normalize(video_frames, dim=-1)  # (Bv, T, D)
        pooled = (unit_frames * video_mask).sum(dim=1) / video_mask.sum(dim=1).clamp(min=1.0)  # (Bv, D)
        return F.normalize(sentence, dim=-1) @ F.normalize(pooled, dim=-1).T  # (Bt, Bv)


def text_conditioned_pooling(sentence: torch.Tensor, frames: torch.Tensor, mask: torch.Tensor,
                             temperature: float) -> torch.Tensor:
    """Video features pooled for each caption: (Bt, D), (Bv, T, D), (Bv, T) -> (Bt, Bv, D).

    alpha[a, b, f] = softmax_f(<c_a, F_bf> / temperature) * mask[b, f]; v[a, b] = sum_f alpha F_bf. As in EMCL-Net
    and DiCoSA, the softmax runs over every frame and the mask is applied after it, without renormalising, on
    unnormalised features.
    """
    logits = torch.einsum("ad,bfd->abf", sentence, frames) / temperature  # (Bt, Bv, T)
    weights = torch.softmax(logits, dim=-1) * mask.to(frames.dtype)[None]  # (Bt, Bv, T)
    return torch.einsum("abf,bfd->abd", weights, frames)  # (Bt, Bv, D)


def em_reconstruction(features: torch.Tensor, start: torch.Tensor, iters: int, lamd: float
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """EMCL's low-rank reconstruction of a joint batch, without gradient: (M, D), (1, K) -> R (M, D), U (M, K).

    The D feature dimensions are the data points in R^M. U starts as the row `start` repeated M times; each
    iteration: Z = softmax_k(X^T U / lamd) (D, K), columns divided by 1e-6 + their sum; U = X Z (M, K), columns
    divided by 1e-6 + their L2 norm. R = U Z^T has rank <= K and is a constant for autograd.
    """
    with torch.no_grad():
        x = features.detach().to(torch.promote_types(features.dtype, torch.float32))  # (M, D), at least float32
        bases = start.to(device=x.device, dtype=x.dtype).expand(x.shape[0], -1)  # (M, K)
        for _ in range(iters):
            assignment = torch.softmax(x.T @ bases / lamd, dim=1)  # (D, K)
            assignment = assignment / (1e-6 + assignment.sum(dim=0, keepdim=True))
            bases = x @ assignment  # (M, K)
            bases = bases / (1e-6 + bases.norm(dim=0, keepdim=True))
        reconstruction = bases @ assignment.T  # (M, D)
    return reconstruction.to(features.dtype), bases


class EMCLHead(nn.Module):
    """EMCL-Net: text-conditioned frame pooling, EM low-rank reconstruction of the joint batch, cosine.

    For a block of Bt captions and Bv videos: pooled v (Bt, Bv, D) and the sentences c (Bt, D) form the joint
    batch X = [v as (Bt Bv, D); c] (M = Bt Bv + Bt rows); X' = X + beta R with R the EM reconstruction (no
    gradient, so dX'/dX = I); S[a, b] = cos(c'_a, v'_ab). The EM state mu0 (1, K) is a persistent buffer (saved
    in checkpoints, copied by the EMA) updated in training only: mu0 <- m mu0 + (1 - m) mean_rows(U).

    A score depends on the whole block it was computed in. Training scores the whole (B, B) global batch at
    once; in eval mode every call is tiled into `eval_block` x `eval_block` tiles from its first row and column
    (the official evaluation's 32 x 32 blocks), so callers that split a matrix into calls at multiples of
    `eval_block` (evaluation/scoring.py does, through `score_tile`) get the official tiling.
    """

    def __init__(self, width: int, chunk_size: int = DEFAULT_CHUNK_SIZE, *, bases: int = 32, em_iters: int = 9,
                 momentum: float = 0.9, lamd: float = 1.0, beta: float = 3.0, frame_temperature: float = 3.0,
                 eval_block: int = 32, reinit_basis_on_load: bool = False) -> None:
        super().__init__()
        self.chunk_size = chunk_size  # unused: eval_block sets the tiling
        self.em_iters, self.momentum, self.lamd, self.beta = em_iters, momentum, lamd, beta
        self.frame_temperature, self.eval_block = frame_temperature, eval_block
        self.reinit_basis_on_load = reinit_basis_on_load
        self.register_buffer("basis", self.initial_basis(bases))  # (1, K) mu0, persistent

    @property
    def score_tile(self) -> int:
        """Rows and columns of the evaluation tile a score depends on."""
        return self.eval_block

    @staticmethod
    def initial_basis(bases: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """mu0 (1, K) as the official code draws it: N(0, 2/K) divided by 1e-6 + its norm over an axis of size 1,
        i.e. the sign of each entry (+-1 up to 1e-6). Draws from `generator`, else torch's global RNG (seeded by
        the stage)."""
        draw = torch.randn(1, bases, generator=generator) * math.sqrt(2.0 / bases)
        return draw / (1e-6 + draw.norm(dim=0, keepdim=True))

    @torch.no_grad()
    def reset_basis(self, seed: int = 0) -> None:
        """Fresh +-1 bases drawn under `seed` (the official behaviour on reload, where mu0 was never saved)."""
        fresh = self.initial_basis(self.basis.shape[1], torch.Generator().manual_seed(seed))
        self.basis.copy_(fresh.to(self.basis.device))

    def block_scores(self, sentence: torch.Tensor, video_frames: torch.Tensor, video_mask: torch.Tensor,
                     update_basis: bool) -> torch.Tensor:
        """Scores (bt, bv) of one block, the EM run over this block only."""
        pooled = text_conditioned_pooling(sentence, video_frames, video_mask, self.frame_temperature)  # (bt, bv, D)
        num_text, num_video, width = pooled.shape
        joint = torch.cat([pooled.reshape(num_text * num_video, width), sentence], dim=0)  # (M, D)
        reconstruction, bases = em_reconstruction(joint, self.basis, self.em_iters, self.lamd)
        if update_basis:
            with torch.no_grad():
                self.basis.mul_(self.momentum).add_((1.0 - self.momentum) * bases.mean(dim=0, keepdim=True))
        joint = joint + self.beta * reconstruction
        video_unit = F.normalize(joint[:num_text * num_video], dim=-1).view(num_text, num_video, width)
        text_unit = F.normalize(joint[num_text * num_video:], dim=-1)  # (bt, D)
        return torch.einsum("ad,abd->ab", text_unit, video_unit)

    def forward(
        self,
        text_tokens: torch.Tensor,
        text_mask: torch.Tensor,
        sentence: torch.Tensor,
        video_frames: torch.Tensor,
        video_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Similarity (Bt, Bv); token features and the text mask are unused by this head."""
        if self.training:
            return self.block_scores(sentence, video_frames, video_mask, update_basis=True)
        step = self.eval_block
        return torch.cat([
            torch.cat([self.block_scores(sentence[t:t + step], video_frames[v:v + step], video_mask[v:v + step],
                                         update_basis=False)
                       for v in range(0, video_frames.shape[0], step)], dim=1)
            for t in range(0, sentence.shape[0], step)])  # (Bt, Bv)


class DiCoSAHead(nn.Module):
    """DiCoSA: text-conditioned pooling, the D dimensions split into C chunks, MLP-weighted chunk cosines.

    S[a, b] = sum_k w[a, b, k] cos(c_ak, v_abk) with w = Linear(2w, mult w) - ReLU - Linear(mult w, 1) of the
    concatenated chunks [c_ak; v_abk] (no softmax: the weights, and so the scores, are unbounded). Scores are
    pair-local. `positive_chunks` feeds the training-only chunk-decorrelation term of the positive pairs.
    """

    def __init__(self, width: int, chunk_size: int = DEFAULT_CHUNK_SIZE, *, concepts: int = 8,
                 frame_temperature: float = 3.0, weight_hidden_mult: int = 4, alpha: float = 0.01,
                 beta: float = 0.005, decorrelation_normaliser: str = "width_minus_1") -> None:
        super().__init__()
        if width % concepts:
            raise ValueError(f"dicosa: the feature width {width} does not split into {concepts} concepts; "
                             f"set model.dicosa.concepts to a divisor of {width}")
        self.chunk_size, self.concepts, self.chunk_width = chunk_size, concepts, width // concepts
        self.frame_temperature, self.alpha, self.beta = frame_temperature, alpha, beta
        self.decorrelation_normaliser = decorrelation_normaliser
        hidden = weight_hidden_mult * self.chunk_width
        self.weight_fc = nn.Sequential(nn.Linear(2 * self.chunk_width, hidden), nn.ReLU(inplace=True),
                                       nn.Linear(hidden, 1))
        for layer in (self.weight_fc[0], self.weight_fc[2]):
            nn.init.normal_(layer.weight, mean=0.0, std=0.02)
            nn.init.zeros_(layer.bias)

    def _chunks(self, features: torch.Tensor) -> torch.Tensor:
        return features.reshape(*features.shape[:-1], self.concepts, self.chunk_width)  # (..., C, w)

    def forward(
        self,
        text_tokens: torch.Tensor,
        text_mask: torch.Tensor,
        sentence: torch.Tensor,
        video_frames: torch.Tensor,
        video_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Similarity (Bt, Bv), `chunk_size` x `chunk_size` pairs at a time; token features are unused."""
        rows = []
        step = self.chunk_size
        for t in range(0, sentence.shape[0], step):
            row = []
            for v in range(0, video_frames.shape[0], step):
                pooled = text_conditioned_pooling(sentence[t:t + step], video_frames[v:v + step],
                                                  video_mask[v:v + step], self.frame_temperature)  # (bt, bv, D)
                video_chunks = self._chunks(pooled)  # (bt, bv, C, w)
                text_chunks = self._chunks(sentence[t:t + step])[:, None].expand_as(video_chunks)  # (bt, bv, C, w)
                weights = self.weight_fc(torch.cat([text_chunks, video_chunks], dim=-1)).squeeze(-1)  # (bt, bv, C)
                cosines = F.cosine_similarity(text_chunks, video_chunks, dim=-1)  # (bt, bv, C)
                row.append((weights * cosines).sum(dim=-1))
            rows.append(torch.cat(row, dim=1))
        return torch.cat(rows)  # (Bt, Bv)

    def positive_chunks(self, sentence: torch.Tensor, video_frames: torch.Tensor, video_mask: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """Chunks of a square batch's positive pairs (caption a, video a): text (B, C, w), pooled video (B, C, w),
        the inputs of the decorrelation loss (method/losses.py `concept_decorrelation`)."""
        logits = torch.einsum("ad,afd->af", sentence, video_frames) / self.frame_temperature  # (B, T)
        weights = torch.softmax(logits, dim=-1) * video_mask.to(video_frames.dtype)  # (B, T)
        positives = torch.einsum("af,afd->ad", weights, video_frames)  # (B, D): the pooled v[a, a]
        return self._chunks(sentence), self._chunks(positives)

    def decorrelation_divisor(self, max_words: int) -> int:
        """Divisor of Gamma: w - 1 (a true correlation) or, as the official code, the caption length max_words."""
        return max_words if self.decorrelation_normaliser == "max_words" else self.chunk_width - 1


@dataclass
class HBILevel:
    """One level of HBI in training: similarity (B, B) of the square global batch and the positive pairs'
    token-frame cosine maps (B, t, v) (entity level: masked, zero at padded cells; merged levels: unmasked)."""

    similarity: torch.Tensor
    maps: torch.Tensor
    map_mask: torch.Tensor | None  # (B, t, v) 0/1 at the entity level; None at the merged levels


def merged_wti(text: torch.Tensor, text_fc: nn.Module, video: torch.Tensor, video_fc: nn.Module,
               chunk_size: int) -> torch.Tensor:
    """WTI of merged token sets without masks: text (Bt, Nt, D), video (Bv, Nv, D) -> (Bt, Bv); weights are
    softmaxes of the level's own weight MLPs over every merged token."""
    text_weights = torch.softmax(text_fc(text).squeeze(-1), dim=-1)  # (Bt, Nt)
    video_weights = torch.softmax(video_fc(video).squeeze(-1), dim=-1)  # (Bv, Nv)
    return weighted_interaction(F.normalize(text, dim=-1), text_weights, F.normalize(video, dim=-1), video_weights,
                                chunk_size)  # (Bt, Bv)


class HBIHead(nn.Module):
    """HBI: WTI at the entity level (tokens and frames), then two token-merging levels per modality (action,
    event; model/token_merge.py), each scored by its own unmasked WTI. S = sum_l rate_l S_l; with the official
    rate (1, 0, 0) the test-time score is exactly the entity level's WTI (levels of rate 0 are not computed).

    Training (`training_levels`) scores every level; the Banzhaf students (one per level) and the frozen teacher
    (pre-trained by the `train_estimator` stage, loaded with `load_teacher`) feed the distillation loss
    (method/objectives.py `hbi_losses`). The teacher is a frozen submodule, saved in the checkpoint.
    """

    def __init__(self, width: int, chunk_size: int = DEFAULT_CHUNK_SIZE, *, rate: tuple[float, ...] = (1.0, 0.0, 0.0),
                 text_merge_rates: tuple[float, ...] = (0.25, 0.5), video_merge_rates: tuple[float, ...] = (0.25, 0.5),
                 knn: int = 3, merge_heads: int = 8, kl: float = 2.0, skl: float = 1.0,
                 banzhaf_planes: int = 64) -> None:
        super().__init__()
        if not len(rate) - 1 == len(text_merge_rates) == len(video_merge_rates):
            raise ValueError(f"hbi: rate has {len(rate)} levels but the merge rates give "
                             f"{len(text_merge_rates)} / {len(video_merge_rates)} merged levels; give one rate per "
                             f"level (entity + one per merge stage)")
        self.chunk_size, self.rate, self.kl, self.skl = chunk_size, tuple(rate), kl, skl
        self.entity = WTIHead(width, chunk_size)
        self.text_merge = MergeStages(width, tuple(text_merge_rates), knn, merge_heads)
        self.video_merge = MergeStages(width, tuple(video_merge_rates), knn, merge_heads)
        self.text_weight_fcs = nn.ModuleList(_weight_mlp(width) for _ in text_merge_rates)
        self.video_weight_fcs = nn.ModuleList(_weight_mlp(width) for _ in video_merge_rates)
        self.students = nn.ModuleList(BanzhafModule(banzhaf_planes) for _ in rate)
        self.teacher = BanzhafModule(banzhaf_planes).requires_grad_(False)
        self.teacher_loaded = False  # set by load_teacher; training refuses a random teacher

    @torch.no_grad()
    def load_teacher(self, state: dict[str, torch.Tensor]) -> None:
        """Copy a pre-trained estimator's weights into the frozen teacher (strict: every key, no other)."""
        self.teacher.load_state_dict(state, strict=True)
        self.teacher_loaded = True

    def _merged(self, text_tokens, text_mask, video_frames, video_mask) -> tuple[list, list]:
        return self.text_merge(text_tokens, text_mask), self.video_merge(video_frames, video_mask)

    def forward(
        self,
        text_tokens: torch.Tensor,
        text_mask: torch.Tensor,
        sentence: torch.Tensor,
        video_frames: torch.Tensor,
        video_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Similarity (Bt, Bv) = sum_l rate_l S_l over the levels of non-zero rate; `sentence` is unused."""
        scores = torch.zeros(text_tokens.shape[0], video_frames.shape[0], dtype=video_frames.dtype,
                             device=video_frames.device)
        if self.rate[0]:
            scores = scores + self.rate[0] * self.entity(text_tokens, text_mask, sentence, video_frames, video_mask)
        if any(self.rate[1:]):
            texts, videos = self._merged(text_tokens, text_mask, video_frames, video_mask)
            for level, weight in enumerate(self.rate[1:]):
                if weight:
                    scores = scores + weight * merged_wti(texts[level], self.text_weight_fcs[level], videos[level],
                                                          self.video_weight_fcs[level], self.chunk_size)
        return scores

    def training_levels(self, text_tokens: torch.Tensor, text_mask: torch.Tensor, video_frames: torch.Tensor,
                        video_mask: torch.Tensor) -> list[HBILevel]:
        """Every level of a square batch (caption a with video a): entity, then each merged level."""
        text_mask_f, video_mask_f = text_mask.to(text_tokens.dtype), video_mask.to(video_frames.dtype)
        entity = self.entity(text_tokens, text_mask, None, video_frames, video_mask)  # (B, B)
        map_mask = text_mask_f[:, :, None] * video_mask_f[:, None, :]  # (B, L, T)
        maps = torch.einsum("ald,afd->alf", F.normalize(text_tokens, dim=-1),
                            F.normalize(video_frames, dim=-1)) * map_mask  # (B, L, T)
        levels = [HBILevel(entity, maps, map_mask)]
        texts, videos = self._merged(text_tokens, text_mask, video_frames, video_mask)
        for level, (text, video) in enumerate(zip(texts, videos)):
            similarity = merged_wti(text, self.text_weight_fcs[level], video, self.video_weight_fcs[level],
                                    self.chunk_size)  # (B, B)
            maps = torch.einsum("ald,afd->alf", F.normalize(text, dim=-1), F.normalize(video, dim=-1))  # (B, t, v)
            levels.append(HBILevel(similarity, maps, None))
        return levels


SIMILARITY_HEADS: dict[str, type[nn.Module]] = {"wti": WTIHead, "meanP": MeanPoolHead, "emcl": EMCLHead,
                                                "dicosa": DiCoSAHead, "hbi": HBIHead}


def build_head(name: str, width: int, chunk_size: int = DEFAULT_CHUNK_SIZE, head_params: dict | None = None
               ) -> nn.Module:
    """The registered similarity head `name` for features of width `width`, with its own settings `head_params`
    (the fields of params.yaml's `model.<name>` block; none for wti and meanP)."""
    if name not in SIMILARITY_HEADS:
        raise ValueError(f"unknown similarity head {name!r}; choose one of {sorted(SIMILARITY_HEADS)}.")
    return SIMILARITY_HEADS[name](width, chunk_size, **(head_params or {}))


def score_tile(head: nn.Module) -> int | None:
    """Rows/columns of the tile each score depends on (EMCL's evaluation block); None for pair-local heads."""
    return getattr(head, "score_tile", None)
