"""Each video's meaning (colour, shape, motion) from the synthetic generator's meanings.json, as label arrays.

A real benchmark has no meanings.json: `load_meanings` returns None and the diagnostics are skipped.
Captions take the labels of their video through the caption -> video map of the split (several captions per
video are fine).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

ATTRIBUTES = ("colour", "shape", "motion")
MEANINGS_FILE = "meanings.json"

Labels = dict[str, np.ndarray]  # attribute -> (N,) str labels


def load_meanings(path: Path) -> dict[str, dict[str, str]] | None:
    """video id -> {colour, shape, motion}; None when the file does not exist (a real benchmark)."""
    path = Path(path)
    if not path.is_file():
        return None
    meanings = json.loads(path.read_text())
    bad = [video for video, meaning in meanings.items()
           if not isinstance(meaning, dict) or any(attribute not in meaning for attribute in ATTRIBUTES)]
    if bad:
        raise ValueError(f"{path}: video {bad[0]!r} lacks one of {ATTRIBUTES}; re-run `dvc repro download@<benchmark>`"
                         f" to regenerate the synthetic benchmark")
    return meanings


def video_labels(meanings: dict[str, dict[str, str]], video_ids: tuple[str, ...] | list[str], where: str) -> Labels:
    """Labels of the videos `video_ids` (a split's gallery order); `where` names the file in the error."""
    missing = [video for video in video_ids if video not in meanings]
    if missing:
        raise ValueError(f"{where}: no meaning for videos {missing[:5]} ({len(missing)} of {len(video_ids)}); the "
                         f"features and meanings.json come from different generations: re-run `dvc repro`")
    return {attribute: np.array([meanings[video][attribute] for video in video_ids]) for attribute in ATTRIBUTES}


def caption_labels(videos: Labels, caption_video: np.ndarray | tuple[int, ...]) -> Labels:
    """Labels of each caption: its video's, through the caption -> video index map."""
    index = np.asarray(caption_video, dtype=np.int64)
    return {attribute: values[index] for attribute, values in videos.items()}


def combined(labels: Labels, attributes: tuple[str, ...]) -> np.ndarray:
    """One label per item joining several attributes, e.g. colour+shape -> "red|circle"."""
    parts = [labels[attribute].astype(str) for attribute in attributes]
    joined = parts[0]
    for part in parts[1:]:
        joined = np.char.add(np.char.add(joined, "|"), part)
    return joined
