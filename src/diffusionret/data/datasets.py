"""Torch datasets over the preprocessed caches (frames for stage 1; features are indexed directly)."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from diffusionret.data.augment import RAND_AUGMENT, augment_video


class CaptionVideoDataset(Dataset):
    """One item per caption: its token ids, and the uint8 frames of its video from the frame cache."""

    def __init__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, caption_video: np.ndarray,
                 video_rows: np.ndarray, frames: np.ndarray, frame_mask: np.ndarray, *, augment: str = "none",
                 augment_seed: int = 0):
        # input_ids, attention_mask: (C, L); caption_video: (C,) index into the split's videos;
        # video_rows: (V_split,) row of each split video in the frame cache; frames: (V_all, T, S, S, 3)
        # augment: "none" or "rand-m7-n4-mstd0.5-inc1" (training frames only; data/augment.py)
        if augment not in ("none", RAND_AUGMENT):
            raise ValueError(f"unknown frame augmentation {augment!r}; choose none or {RAND_AUGMENT}")
        self.augment, self.augment_seed, self._draws = augment, augment_seed, 0
        self.input_ids, self.attention_mask = input_ids, attention_mask
        self.caption_video = np.asarray(caption_video)
        self.video_rows = np.asarray(video_rows)
        self.frames, self.frame_mask = frames, frame_mask

    def __len__(self) -> int:
        return len(self.caption_video)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        video = int(self.caption_video[index])
        row = int(self.video_rows[video])
        frames = np.array(self.frames[row])  # (T, S, S, 3) uint8
        mask = np.asarray(self.frame_mask[row], dtype=bool)  # (T,)
        if self.augment != "none":
            # one draw per item fetched: seeded by (seed, caption, fetch count) so a run is reproducible
            self._draws += 1
            frames = augment_video(frames, mask, np.random.default_rng([self.augment_seed, index, self._draws]))
        return {
            "input_ids": self.input_ids[index],
            "attention_mask": self.attention_mask[index],
            "frames": torch.from_numpy(frames),  # (T, S, S, 3) uint8
            "frame_mask": torch.from_numpy(mask),  # (T,)
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
