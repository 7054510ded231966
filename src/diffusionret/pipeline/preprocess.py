"""`preprocess` stage: parse annotations into the common form and cache sampled frames once per video."""

from __future__ import annotations

import json
from pathlib import Path

from diffusionret.config import BenchmarkParams, PreprocessParams
from diffusionret.data.readers import read_split
from diffusionret.data.records import SplitAnnotations, save_annotations
from diffusionret.data.videos import index_video_files, resolve_videos
from diffusionret.pipeline.paths import Paths

SPLITS = ("train", "val", "test")


class PreprocessFailed(RuntimeError):
    """Some videos could not be decoded."""


def read_benchmark_splits(name: str, settings: BenchmarkParams, raw_dir: Path) -> dict[str, SplitAnnotations]:
    """Every split of a benchmark in the common form; a split without videos is left out."""
    splits = {}
    for split in SPLITS:
        options = {"benchmark": name}
        if settings.val_videos_from_train:
            options["val_fraction_videos"] = settings.val_videos_from_train
        annotations = read_split(settings.reader, raw_dir, split, **options)
        if annotations.num_videos:
            splits[split] = annotations
    if "test" not in splits:
        raise ValueError(f"benchmark `{name}` under {raw_dir} has no test videos")
    return splits


def preprocess_benchmark(name: str, settings: BenchmarkParams, preprocess: PreprocessParams, paths: Paths,
                         *, progress: bool = True) -> dict:
    """Write annotations/<split>.json and the frame cache of every video of the benchmark."""
    raw_dir, out_dir = paths.raw(name), paths.frames(name)
    splits = read_benchmark_splits(name, settings, raw_dir)
    for split, annotations in splits.items():
        save_annotations(annotations, paths.annotations(name, split))
    video_ids = sorted({video for annotations in splits.values() for video in annotations.video_ids})
    videos = resolve_videos(video_ids, index_video_files(raw_dir), where=str(raw_dir))
    spans = {video: span for annotations in splits.values() for video, span in annotations.spans.items()}

    from diffusionret.data.frames import build_frame_cache

    summary = build_frame_cache(
        videos, out_dir, sample_fps=settings.fps, max_frames=settings.max_frames,
        image_size=preprocess.image_size, spans=spans, workers=preprocess.workers,
        partial_dir=paths.partial("frames", name), progress=progress,
    )
    failures = json.loads((out_dir / "failures.json").read_text())
    if failures:
        listed = "\n".join(f"  {item['video_id']}: {item['path']}: {item['error']}" for item in failures[:20])
        raise PreprocessFailed(
            f"{len(failures)} of {len(videos)} videos of `{name}` could not be decoded (full list in "
            f"{out_dir / 'failures.json'}):\n{listed}\nReplace or remove these files and re-run; the "
            f"{len(videos) - len(failures)} decoded videos are kept in {paths.partial('frames', name)}."
        )
    return {"splits": {split: {"videos": a.num_videos, "captions": a.num_captions} for split, a in splits.items()},
            **{key: value for key, value in summary.items() if key != "failures"}}
