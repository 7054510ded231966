"""The frozen-feature cache written by `extract` and read by stage 2 and evaluation (no CLIP re-run)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from diffusionret.data.records import SplitAnnotations, load_annotations, save_annotations
from diffusionret.model.extractor import TextFeatures, VideoFeatures


@dataclass
class SplitFeatures:
    text: TextFeatures  # tokens (C, L, D), mask (C, L), sentence (C, D)
    video: VideoFeatures  # frames (V, T, D) after the temporal module, mask (V, T)
    annotations: SplitAnnotations


def save_split_features(directory: Path, split: str, text: TextFeatures, video: VideoFeatures,
                        annotations: SplitAnnotations) -> None:
    """<directory>/<split>.safetensors + <split>.json (ids and caption->video mapping)."""
    directory.mkdir(parents=True, exist_ok=True)
    save_file({"text_tokens": text.tokens.contiguous(), "text_mask": text.mask.contiguous(),
               "sentence": text.sentence.contiguous(), "video_frames": video.frames.contiguous(),
               "video_mask": video.mask.contiguous()}, str(directory / f"{split}.safetensors"))
    save_annotations(annotations, directory / f"{split}.json")


def load_split_features(directory: Path, split: str) -> SplitFeatures:
    """Read a cached split, with a clear error naming the stage to run when it is missing."""
    path = directory / f"{split}.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run the `extract` stage that writes {directory} "
                                f"(`dvc repro`)")
    tensors = load_file(str(path))
    return SplitFeatures(
        text=TextFeatures(tokens=tensors["text_tokens"], mask=tensors["text_mask"], sentence=tensors["sentence"]),
        video=VideoFeatures(frames=tensors["video_frames"], mask=tensors["video_mask"]),
        annotations=load_annotations(directory / f"{split}.json"),
    )


def write_info(directory: Path, info: dict) -> None:
    (directory / "info.json").write_text(json.dumps(info, indent=2) + "\n")


def video_keys(annotations: SplitAnnotations) -> torch.Tensor:
    """Stable integer id of each caption's video (its gallery index; never Python's salted hash)."""
    return torch.tensor(annotations.caption_video, dtype=torch.long)  # (C,)
