"""Torch datasets over the preprocessed caches (frames for stage 1; features are indexed directly)."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset


class CaptionVideoDataset(Dataset):
    """One item per caption: its token ids, and the uint8 frames of its video from the frame cache."""

    def __init__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, caption_video: np.ndarray,
                 video_rows: np.ndarray, frames: np.ndarray, frame_mask: np.ndarray):
        # input_ids, attention_mask: (C, L); caption_video: (C,) index into the split's videos;
        # video_rows: (V_split,) row of each split video in the frame cache; frames: (V_all, T, S, S, 3)
        self.input_ids, self.attention_mask = input_ids, attention_mask
        self.caption_video = np.asarray(caption_video)
        self.video_rows = np.asarray(video_rows)
        self.frames, self.frame_mask = frames, frame_mask

    def __len__(self) -> int:
        return len(self.caption_video)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        video = int(self.caption_video[index])
        row = int(self.video_rows[video])
        return {
            "input_ids": self.input_ids[index],
            "attention_mask": self.attention_mask[index],
            "frames": torch.from_numpy(np.array(self.frames[row])),  # (T, S, S, 3) uint8
            "frame_mask": torch.from_numpy(np.asarray(self.frame_mask[row], dtype=bool)),  # (T,)
            "video_key": torch.tensor(video, dtype=torch.long),
        }


class VideoDataset(Dataset):
    """One item per video of a split (for encoding galleries)."""

    def __init__(self, video_rows: np.ndarray, frames: np.ndarray, frame_mask: np.ndarray):
        self.video_rows, self.frames, self.frame_mask = np.asarray(video_rows), frames, frame_mask

    def __len__(self) -> int:
        return len(self.video_rows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        row = int(self.video_rows[index])
        return {
            "frames": torch.from_numpy(np.array(self.frames[row])),
            "frame_mask": torch.from_numpy(np.asarray(self.frame_mask[row], dtype=bool)),
        }
