"""Text-video similarity heads (reference §2.4): `wti` (DRL's token-wise weighted interaction) and `meanP`.

Common call: head(text_tokens (Bt, L, D), text_mask (Bt, L), sentence (Bt, D), video_frames (Bv, T, D),
video_mask (Bv, T)) -> (Bt, Bv). The (Bt, Bv, L, T) interaction is computed `chunk_size` x `chunk_size`
pairs at a time, so a 1000 x 1000 evaluation never holds the whole tensor.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

INVALID_WEIGHT_LOGIT = -9e15  # reference §2.4: fill for padded tokens/frames before the weight softmax
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
        """Similarity (Bt, Bv) of reference §2.4; `sentence` is unused by this head."""
        text_mask = text_mask.to(text_tokens.dtype)
        video_mask = video_mask.to(video_frames.dtype)
        text_weights = _masked_weights(self.text_weight_fc, text_tokens, text_mask)  # (Bt, L), unnormalised input
        video_weights = _masked_weights(self.video_weight_fc, video_frames, video_mask)  # (Bv, T)
        text_unit = F.normalize(text_tokens, dim=-1) * text_mask.unsqueeze(-1)  # (Bt, L, D), padded tokens 0
        video_unit = F.normalize(video_frames, dim=-1) * video_mask.unsqueeze(-1)  # (Bv, T, D), padded frames 0

        rows = []
        step = self.chunk_size
        for text_start in range(0, text_tokens.shape[0], step):
            text_slice = slice(text_start, text_start + step)
            row = []
            for video_start in range(0, video_frames.shape[0], step):
                video_slice = slice(video_start, video_start + step)
                # S[a, b, l, f] = <h_al, f_bf> mt[a, l] mv[b, f]: (bt, bv, L, T); masked entries are 0, not -inf
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


SIMILARITY_HEADS: dict[str, type[nn.Module]] = {"wti": WTIHead, "meanP": MeanPoolHead}


def build_head(name: str, width: int, chunk_size: int = DEFAULT_CHUNK_SIZE) -> nn.Module:
    """The registered similarity head `name` for features of width `width`."""
    if name not in SIMILARITY_HEADS:
        raise ValueError(f"unknown similarity head {name!r}; choose one of {sorted(SIMILARITY_HEADS)}.")
    return SIMILARITY_HEADS[name](width, chunk_size)
