"""The two training objectives as modules (accelerate wraps them, so DDP gradient sync applies).

`ContrastiveObjective` (stage 1): encode the local batch, gather all features across processes WITH
gradient, WTI similarity over the global batch, symmetric InfoNCE (reference §2.5, §8.1).
`GenerationObjective` (stage 2): frozen cached features; the global batch's similarity picks each
query's hardest negatives; both denoisers predict x0 from a noised one-hot (reference §5, §8.2).
"""

from __future__ import annotations

import torch
from torch import nn

from diffusionret.losses import contrastive_loss, gather_with_grad
from diffusionret.model.extractor import FeatureExtractor, TextFeatures, VideoFeatures


class ContrastiveObjective(nn.Module):
    def __init__(self, extractor: FeatureExtractor):
        super().__init__()
        self.extractor = extractor

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        text = self.extractor.encode_text(batch["input_ids"], batch["attention_mask"])
        video = self.extractor.encode_video(batch["frames"], batch["frame_mask"])
        text = TextFeatures(tokens=gather_with_grad(text.tokens), mask=gather_with_grad(text.mask),
                            sentence=gather_with_grad(text.sentence))  # (B, L, D), (B, L), (B, D): global batch
        video = VideoFeatures(frames=gather_with_grad(video.frames), mask=gather_with_grad(video.mask))
        similarity = self.extractor.similarity(text, video)  # (B, B)
        loss = contrastive_loss(similarity, self.extractor.logit_scale)
        return loss, {"loss/contrastive": loss.detach(), "logit_scale": self.extractor.logit_scale.detach().exp()}
