"""The stage-1 feature extractor (official models/modeling.py): CLIP, temporal module, similarity head, logit scale."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from diffusionret.model.backbone import ClipBackbone, build_clip
from diffusionret.model.heads import DEFAULT_CHUNK_SIZE, SIMILARITY_HEADS, build_head, score_tile
from diffusionret.model.temporal import TEMPORAL_MODULES, build_temporal

if TYPE_CHECKING:
    from transformers import CLIPModel

MAX_LOGIT_SCALE = math.log(100.0)  # clamped to at most ln 100 after every step, as the official code does


@dataclass
class TextFeatures:
    """Text side of the similarity: token features (B, L, D), their 0/1 mask (B, L), sentence feature (B, D)."""

    tokens: torch.Tensor
    mask: torch.Tensor
    sentence: torch.Tensor

    def __len__(self) -> int:
        return self.sentence.shape[0]

    def __getitem__(self, rows: slice | torch.Tensor) -> "TextFeatures":
        """The captions at `rows` (a slice or a (b,) index tensor) -> tokens (b, L, D), mask (b, L), sentence (b, D).

        `tokens` may be the feature cache's `TokenRows` (token features left on disk): indexing it reads only
        these rows, as float32, so a block of captions never loads the whole split.
        """
        return TextFeatures(tokens=self.tokens[rows], mask=self.mask[rows], sentence=self.sentence[rows])

    @staticmethod
    def cat(parts: "list[TextFeatures]") -> "TextFeatures":
        """Concatenate along the caption dimension (token features read whole where a part holds `TokenRows`)."""
        return TextFeatures(tokens=torch.cat([p.tokens[:] for p in parts]), mask=torch.cat([p.mask for p in parts]),
                            sentence=torch.cat([p.sentence for p in parts]))


@dataclass
class VideoFeatures:
    """Video side of the similarity: frame features after the temporal module (B, T, D) and 0/1 mask (B, T)."""

    frames: torch.Tensor
    mask: torch.Tensor

    def __len__(self) -> int:
        return self.frames.shape[0]

    def __getitem__(self, rows: slice | torch.Tensor) -> "VideoFeatures":
        """The videos at `rows` (a slice or a (b,) index tensor) -> frames (b, T, D), mask (b, T)."""
        return VideoFeatures(frames=self.frames[rows], mask=self.mask[rows])

    @staticmethod
    def cat(parts: "list[VideoFeatures]") -> "VideoFeatures":
        """Concatenate along the video dimension."""
        return VideoFeatures(frames=torch.cat([p.frames for p in parts]), mask=torch.cat([p.mask for p in parts]))


class FeatureExtractor(nn.Module):
    """DiffusionRet's discriminative model: text/video features and their (Bt, Bv) similarity."""

    def __init__(
        self,
        clip: "CLIPModel",
        temporal: str = "seqTransf",
        temporal_layers: int = 4,
        head: str = "wti",
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        head_params: dict | None = None,
        frame_feature: str = "cls",
        frame_grid: int = 2,
    ) -> None:
        super().__init__()
        self.backbone = ClipBackbone(clip, frame_feature=frame_feature, frame_grid=frame_grid)
        self.temporal = build_temporal(temporal, clip, temporal_layers)
        self.head = build_head(head, self.backbone.width, chunk_size, head_params)

    @property
    def logit_scale(self) -> nn.Parameter:
        """CLIP's learned log temperature (a CLIP parameter, so it sits in the coef_lr group as in the original)."""
        return self.backbone.clip.logit_scale

    @torch.no_grad()
    def clamp_logit_scale_(self) -> None:
        """Clamp the log temperature to at most ln 100 (done after every optimiser step)."""
        self.logit_scale.clamp_(max=MAX_LOGIT_SCALE)

    def clip_parameters(self) -> list[nn.Parameter]:
        """CLIP's parameters (lr * coef_lr group; frozen ones included, filter on requires_grad)."""
        return self.backbone.clip_parameters()

    def non_clip_parameters(self) -> list[nn.Parameter]:
        """Every other parameter: temporal module and similarity head (lr group)."""
        clip_ids = {id(parameter) for parameter in self.clip_parameters()}
        return [parameter for parameter in self.parameters() if id(parameter) not in clip_ids]

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TextFeatures:
        """Ids and mask (B, L) -> token features, mask and eos sentence feature."""
        tokens, sentence = self.backbone.encode_text(input_ids, attention_mask)
        return TextFeatures(tokens=tokens, mask=attention_mask, sentence=sentence)

    def encode_video(self, frames: torch.Tensor, mask: torch.Tensor) -> VideoFeatures:
        """uint8 frames (B, T, S, S, 3) and mask (B, T) -> frame features after the temporal module."""
        per_frame = self.backbone.encode_frames(frames, mask)  # (B, T, D); padded frames enter CLIP as 0 pixels
        return VideoFeatures(frames=self.temporal(per_frame, mask), mask=mask)

    def similarity(self, text: TextFeatures, video: VideoFeatures) -> torch.Tensor:
        """Similarity matrix (Bt, Bv) from the head (no temperature)."""
        return self.head(text.tokens, text.mask, text.sentence, video.frames, video.mask)

    @property
    def score_tile(self) -> int | None:
        """Rows/columns of the tile a score depends on (EMCL's evaluation block); None: every score is pair-local."""
        return score_tile(self.head)

    def forward(
        self, input_ids: torch.Tensor, text_mask: torch.Tensor, frames: torch.Tensor, video_mask: torch.Tensor
    ) -> torch.Tensor:
        """Similarity (Bt, Bv) straight from ids, text mask, uint8 frames and frame mask."""
        return self.similarity(self.encode_text(input_ids, text_mask), self.encode_video(frames, video_mask))


def build_feature_extractor(
    backbone: str,
    *,
    temporal: str = "seqTransf",
    temporal_layers: int = 4,
    head: str = "wti",
    vocab_size: int | None = None,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    head_params: dict | None = None,
    frame_feature: str = "cls",
    frame_grid: int = 2,
) -> FeatureExtractor:
    """A FeatureExtractor over build_clip(backbone, ...) (registered name, local dir or hub id)."""
    # fail on a bad name before the (slow) CLIP build
    if temporal not in TEMPORAL_MODULES:
        raise ValueError(f"unknown temporal module {temporal!r}; choose one of {sorted(TEMPORAL_MODULES)}.")
    if head not in SIMILARITY_HEADS:
        raise ValueError(f"unknown similarity head {head!r}; choose one of {sorted(SIMILARITY_HEADS)}.")
    clip = build_clip(
        backbone, vocab_size=vocab_size, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
    )
    return FeatureExtractor(clip, temporal=temporal, temporal_layers=temporal_layers, head=head,
                            chunk_size=chunk_size, head_params=head_params, frame_feature=frame_feature,
                            frame_grid=frame_grid)
