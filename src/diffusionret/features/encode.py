"""Encode captions and videos with a (frozen) feature extractor, in batches, without gradients."""

from __future__ import annotations

import numpy as np
import torch

from diffusionret.data.frames import FrameCache
from diffusionret.data.records import SplitAnnotations
from diffusionret.model.extractor import FeatureExtractor, TextFeatures, VideoFeatures


def split_rows(annotations: SplitAnnotations, cache: FrameCache) -> np.ndarray:
    """Frame-cache row of every video of a split, (V,) int64."""
    return np.array([cache.row_of[video] for video in annotations.video_ids], dtype=np.int64)


@torch.no_grad()
def encode_captions(extractor: FeatureExtractor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    batch_size: int) -> TextFeatures:
    """Token features, masks and sentence features of all captions: (C, L, D), (C, L), (C, D)."""
    extractor.eval()
    parts = [extractor.encode_text(input_ids[i:i + batch_size], attention_mask[i:i + batch_size])
             for i in range(0, len(input_ids), batch_size)]
    return TextFeatures.cat(parts)


@torch.no_grad()
def encode_videos(extractor: FeatureExtractor, frames: np.ndarray, frame_mask: np.ndarray, rows: np.ndarray,
                  batch_size: int) -> VideoFeatures:
    """Frame features (after the temporal module) and masks of the videos at `rows`: (V, T, D), (V, T)."""
    extractor.eval()
    parts = []
    for start in range(0, len(rows), batch_size):
        batch_rows = np.asarray(rows[start:start + batch_size])
        video_frames = torch.from_numpy(np.array(frames[batch_rows]))  # (b, T, S, S, 3) uint8
        video_mask = torch.from_numpy(np.asarray(frame_mask[batch_rows], dtype=bool))  # (b, T)
        parts.append(extractor.encode_video(video_frames, video_mask))
    return VideoFeatures.cat(parts)
