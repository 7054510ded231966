"""DiDeMo annotations (LocalizingMoments format, as the official loader) -> `SplitAnnotations`, one paragraph per video.

Files under `root` (LisaAnne/LocalizingMoments `data/`):
- `train_data.json`, `val_data.json`, `test_data.json`: a JSON list of moments {annotation_id, description,
  dl_link, num_segments, times, video}. `times` holds one [start_chunk, end_chunk] per annotator, in 5-second
  chunks (0..5, both ends inclusive).
- optional `train_list.txt`, `val_list.txt`, `test_list.txt` (CLIP4Clip): one video id per line; when present,
  only the listed videos are kept, in list order, and a listed video without a moment is an error.
The video id is the json `video` field, which INCLUDES the original extension (`..._265c3c8051.m4v`; some end
in a bare dot). Video files are therefore named `<id>.mp4` (`..._265c3c8051.m4v.mp4`, the CLIP4Clip convention:
the id is the file name minus its last extension); a file named exactly `<id>` is accepted too (data/check.py).
All descriptions of a video, in file order, are joined into one paragraph. The span of a video is the union of
its moments, [min start_chunk * 5, (max end_chunk + 1) * 5] seconds; the released loader overrides it with the
fixed window [0, 31] s, which is `clip_span: fixed` in params.yaml. test_data.json holds 4021 moments of 1037
videos.
"""

from __future__ import annotations

from pathlib import Path

from diffusionret.data.readers.files import AnnotationError, caption, expect, read_json, read_text
from diffusionret.data.records import SplitAnnotations

SPLIT_FILES = {"train": "train_data.json", "val": "val_data.json", "test": "test_data.json"}
LIST_FILES = {"train": "train_list.txt", "val": "val_list.txt", "test": "test_list.txt"}
DEFAULT_SPLITS = {"train": "train", "val": "val", "test": "test"}
CHUNK_S = 5.0  # seconds per DiDeMo time chunk


def read_didemo(root: Path, split: str, *, benchmark: str = "didemo",
                source_split: str | None = None) -> SplitAnnotations:
    """Read one split (`source_split`: train, val or test; default from `split`) as paragraphs with moment spans."""
    root = Path(root)
    name = source_split or DEFAULT_SPLITS.get(split, split)
    if name not in SPLIT_FILES:
        raise ValueError(f"unknown DiDeMo split {name!r}; choose one of {', '.join(SPLIT_FILES)}")
    path = root / SPLIT_FILES[name]
    if not path.is_file():
        raise FileNotFoundError(f"DiDeMo annotation file {path} is missing; run the download stage or take it from "
                                "https://github.com/LisaAnne/LocalizingMoments (data/)")
    moments = read_json(path)
    if not isinstance(moments, list):
        raise AnnotationError(f"{path}: expected a JSON list of moments, got {type(moments).__name__}")
    texts: dict[str, list[str]] = {}
    chunks: dict[str, list[int]] = {}
    for i, moment in enumerate(moments):
        if not isinstance(moment, dict) or not {"video", "description", "times"} <= set(moment):
            raise AnnotationError(f"{path}: moment {i} lacks 'video', 'description' or 'times': {moment!r:.200}")
        where = f"{path}, moment {i}"
        video_id = expect(moment["video"], str, f"{where}, field `video`", "a video id string")
        description = " ".join(expect(moment["description"], str, f"{where}, field `description`",
                                      "a description string").split())
        texts.setdefault(video_id, [])
        if description:
            texts[video_id].append(caption(description, f"{where}, field `description`"))
        expect(moment["times"], list, f"{where}, field `times`", "a list of [start, end] chunk pairs")
        for pair in moment["times"]:
            if not isinstance(pair, list) or len(pair) != 2 or not all(
                    isinstance(c, int) and not isinstance(c, bool) for c in pair):
                raise AnnotationError(f"{where} ({video_id}), field `times`: malformed time {pair!r:.80}; expected "
                                      "[start_chunk, end_chunk] integers")
            chunks.setdefault(video_id, []).extend(pair)
    video_ids = list(texts)
    list_path = root / LIST_FILES[name]
    if list_path.is_file():
        listed = [line.strip() for line in read_text(list_path).splitlines() if line.strip()]
        absent = [v for v in listed if v not in texts]
        if absent:
            raise ValueError(f"{list_path}: {len(absent)} listed videos have no moment in {path.name} "
                             f"(first: {absent[:5]}); ids must include the original extension, as in the json")
        video_ids = list(dict.fromkeys(listed))
    empty = [v for v in video_ids if not texts[v]]
    if empty:
        raise AnnotationError(f"{path}: videos without any description: {empty[:5]}; every video needs a caption")
    spans = {}
    for video_id in video_ids:
        if video_id in chunks:
            spans[video_id] = (min(chunks[video_id]) * CHUNK_S, (max(chunks[video_id]) + 1) * CHUNK_S)
    return SplitAnnotations(benchmark, split, tuple(video_ids), tuple(" ".join(texts[v]) for v in video_ids),
                            tuple(range(len(video_ids))), spans)
