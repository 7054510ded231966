"""ActivityNet Captions annotations (official loader's layout) -> `SplitAnnotations`, one paragraph per video.

Files under `root` (from captions.zip of the ActivityNet Captions project page):
- `train.json`, `val_1.json`, `val_2.json`: a JSON dict video id -> {"duration": seconds, "timestamps":
  [[start, end], ...], "sentences": [...]}. Ids carry the `v_` prefix (`v_QOlSCBRmfWY`).
The released loader joins all sentences of a video into one paragraph and reads the window [0, ceil(duration)];
the paragraph here joins the stripped sentences with single spaces, and the window is the video's span.
The test set of the papers is `val_1`. There is no validation file: `val_2` annotates the same videos as
`val_1` (using it for model selection would leak the test videos), so a validation split is carved from train.
Video files may be named with or without the `v_` prefix (`v_QOlSCBRmfWY.mp4` or `QOlSCBRmfWY.mp4`); the
validation (data/check.py) accepts both.
"""

from __future__ import annotations

import math
from pathlib import Path

from diffusionret.data.readers.files import AnnotationError, caption, expect, read_json
from diffusionret.data.records import SplitAnnotations

SPLIT_FILES = {"train": "train.json", "val_1": "val_1.json", "val_2": "val_2.json"}
DEFAULT_SPLITS = {"train": "train", "val": "", "test": "val_1"}
VIDEO_ID_PREFIX = "v_"  # may be absent from the file names


def read_activitynet(root: Path, split: str, *, benchmark: str = "activitynet",
                     source_split: str | None = None) -> SplitAnnotations:
    """Read one split (`source_split`: train, val_1 or val_2; default from `split`) as paragraphs with spans."""
    name = source_split or DEFAULT_SPLITS.get(split, split)
    if not name:
        raise ValueError("ActivityNet Captions has no validation file; carve one from train "
                         "(splits.val: '' with val_videos_from_train > 0)")
    if name not in SPLIT_FILES:
        raise ValueError(f"unknown ActivityNet Captions split {name!r}; choose one of {', '.join(SPLIT_FILES)}")
    path = Path(root) / SPLIT_FILES[name]
    if not path.is_file():
        raise FileNotFoundError(f"ActivityNet Captions annotation file {path} is missing; run the download stage "
                                "(captions.zip) or put the file there")
    data = read_json(path)
    if not isinstance(data, dict):
        raise AnnotationError(f"{path}: expected a JSON dict video id -> {{duration, timestamps, sentences}}")
    video_ids, paragraphs, spans = [], [], {}
    for video_id, item in data.items():
        if not isinstance(item, dict) or "sentences" not in item or "duration" not in item:
            raise AnnotationError(f"{path}: entry {video_id!r} lacks 'sentences' or 'duration'")
        where = f"{path}, video {video_id!r}"
        expect(item["sentences"], list, f"{where}, field `sentences`", "a list of sentence strings")
        sentences = [" ".join(expect(s, str, f"{where}, sentences[{i}]", "a sentence string").split())
                     for i, s in enumerate(item["sentences"])]
        sentences = [s for s in sentences if s]
        if not sentences:
            raise AnnotationError(f"{path}: video {video_id!r} has no sentence; fix that entry")
        duration = float(expect(item["duration"], (int, float), f"{where}, field `duration`", "seconds"))
        if not 0 < duration < math.inf:
            raise AnnotationError(f"{where}, field `duration`: {item['duration']!r} seconds; fix that entry")
        video_ids.append(video_id)
        paragraphs.append(caption(" ".join(sentences), f"{where}, field `sentences`"))
        spans[video_id] = (0.0, float(math.ceil(duration)))
    return SplitAnnotations(benchmark, split, tuple(video_ids), tuple(paragraphs), tuple(range(len(video_ids))),
                            spans)
