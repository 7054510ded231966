"""`preprocess` stage: annotations in the common form + the uint8 frame cache, read once per video.

Order of work: read the manifest written by `download` (the raw folder and its video files), read every split
with the benchmark's reader, and check that every annotated video has exactly one file (data/check.py) before
decoding anything. Missing videos stop the stage (full list in `<frames>/missing_videos.txt`) unless
`data.allow_missing` is true; then they are dropped with their captions. Decoding is parallel and resumable
(data/frames.py): finished videos are kept under `data.partial_root/frames/<raw folder>/`, so benchmarks that
read the same video files with the same settings (e.g. MSRVTT 9k and 7k) decode each video once. Videos that
cannot be decoded are listed in `failures.json`; they stop the stage after every other video has been decoded,
unless `data.allow_missing` is true, in which case they are dropped too. Whenever something is dropped, the
counts are written to `<frames>/data_report.json` and logged to MLflow (run `preprocess` of the benchmark's
experiment).

Caption length: `<frames>/truncation.json` holds, per split, how many captions `max_words` would cut and by how many
tokens (data/truncation.py). No tokenizer exists before stage 1, so this is the lower bound of word pieces (a
caption cut here is cut by any tokenizer); `extract` counts with the real tokenizer. A cut caption is logged to
MLflow with the dropped videos (`captions/<split>/truncated`, `.../max_excess`, `.../mean_excess`).

Paper mode (`eval.selection: test`, the official protocol: checkpoints are chosen on the test split) carves
no validation split out of train: a benchmark whose `splits.val` is "" (MSRVTT, ActivityNet) then trains on
its whole training split (MSRVTT-9k: all 9,000 videos) and has no val split.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from diffusionret import tracking
from diffusionret.config import BenchmarkParams, Params, PreprocessParams
from diffusionret.data.check import check_benchmark, drop_videos, enforce_complete
from diffusionret.data.frames import build_frame_cache
from diffusionret.data.records import SplitAnnotations, save_annotations
from diffusionret.data.sources import SOURCES
from diffusionret.data.truncation import LOWER_BOUND, flat_truncation, split_truncation, word_piece_lengths
from diffusionret.data.videos import VIDEO_EXTENSIONS, index_video_files
from diffusionret.pipeline.download import benchmark_raw_dir, manifest_path, read_manifest
from diffusionret.pipeline.paths import Paths

SPLITS = ("train", "val", "test")
MISSING_FILE = "missing_videos.txt"
REPORT_FILE = "data_report.json"
TRUNCATION_FILE = "truncation.json"


class PreprocessFailed(RuntimeError):
    """Some videos could not be decoded."""


def id_prefix_of(settings: BenchmarkParams) -> str:
    """The optional id prefix file names may omit (ActivityNet `v_`), from the source registry."""
    return SOURCES[settings.source].videos.id_prefix if settings.source in SOURCES else ""


def clip_spans(splits: dict[str, SplitAnnotations], settings: BenchmarkParams) -> dict[str, tuple[float, float]]:
    """(start_s, end_s) per video as `clip_span` says: none (whole video), the reader's spans, or one fixed span."""
    if settings.clip_span == "video":
        return {}
    if settings.clip_span == "fixed":
        start, end = settings.clip_span_s
        return {v: (float(start), float(end)) for a in splits.values() for v in a.video_ids}
    return {v: span for a in splits.values() for v, span in a.spans.items()}


def carved_validation_videos(settings: BenchmarkParams, selection: str) -> int:
    """Training videos carved off as the val split: none in paper mode (selection on test), else the benchmark's."""
    return settings.val_videos_from_train if selection == "val" else 0


def preprocess_benchmark(name: str, settings: BenchmarkParams, preprocess: PreprocessParams, paths: Paths,
                         *, progress: bool = True, selection: str = "val") -> dict:
    """Validate, decode and write annotations/<split>.json + the frame cache; returns a summary.

    Reads the manifest of the download stage when it exists, else walks the raw folder. `paths.data.allow_missing`
    decides whether missing or undecodable videos stop the stage or are dropped (and counted in the summary).
    """
    out_dir = paths.frames(name)
    manifest_file = manifest_path(paths, name)
    if manifest_file.is_file():
        _, raw_dir, index = read_manifest(manifest_file, paths.root)
    else:
        raw_dir, index = benchmark_raw_dir(paths, name, settings), None
    allow_missing = paths.data.allow_missing
    extensions = SOURCES[settings.source].videos.extensions if settings.source in SOURCES else None
    check = check_benchmark(raw_dir, benchmark=name, reader=settings.reader, splits=settings.splits,
                            val_videos_from_train=carved_validation_videos(settings, selection), index=index,
                            id_prefix=id_prefix_of(settings), **({"extensions": extensions} if extensions else {}))
    for stale in (out_dir / MISSING_FILE, out_dir / REPORT_FILE):
        stale.unlink(missing_ok=True)
    splits = enforce_complete(check, allow_missing=allow_missing, missing_file=out_dir / MISSING_FILE,
                              where=str(raw_dir))
    video_ids = sorted({video for annotations in splits.values() for video in annotations.video_ids})
    videos = {video: check.files[video] for video in video_ids}
    spans = clip_spans(splits, settings)
    summary = build_frame_cache(
        videos, out_dir, sample_fps=settings.fps, max_frames=settings.max_frames,
        image_size=preprocess.image_size, spans=spans, workers=preprocess.workers,
        partial_dir=paths.partial("frames", raw_dir.name), progress=progress,
    )
    failures = summary["failures"]
    if failures and not allow_missing:
        listed = "\n".join(f"  {item['video_id']}: {item['path']}: {item['error']}" for item in failures[:20])
        raise PreprocessFailed(
            f"{len(failures)} of {len(videos)} videos of `{name}` could not be decoded (full list in "
            f"{out_dir / 'failures.json'}):\n{listed}\nReplace or remove these files and re-run (the "
            f"{len(videos) - len(failures)} decoded videos are kept in {paths.partial('frames', raw_dir.name)} and "
            f"not decoded again), or set data.allow_missing: true to leave them out."
        )
    failed = {item["video_id"] for item in failures}
    emptied = [split for split, a in splits.items() if a.num_videos and not set(a.video_ids) - failed]
    if emptied:
        raise PreprocessFailed(f"no video of the {', '.join(emptied)} split(s) of `{name}` could be decoded (see "
                               f"{out_dir / 'failures.json'}); data.allow_missing cannot help here")
    for split, annotations in splits.items():
        kept = drop_videos(annotations, failed)
        kept = SplitAnnotations(kept.benchmark, kept.split, kept.video_ids, kept.captions, kept.caption_video,
                                {v: spans[v] for v in kept.video_ids if v in spans})
        splits[split] = kept
        save_annotations(kept, paths.annotations(name, split))
    if "val" not in splits:  # paper mode carves none: a val file of an earlier run must not linger (only now,
        paths.annotations(name, "val").unlink(missing_ok=True)  # once the new cache is complete)
    counts = {split: {"videos": a.num_videos, "captions": a.num_captions} for split, a in splits.items()}
    truncation = split_truncation({split: a.captions for split, a in splits.items()}, settings.max_words)
    (out_dir / TRUNCATION_FILE).write_text(json.dumps({"counted_with": LOWER_BOUND, "splits": truncation},
                                                      indent=1) + "\n")
    report = {"splits": counts, "missing_videos": len(check.missing_ids), "undecodable_videos": len(failed),
              "annotated": check.counts(), "truncation": truncation}
    if report["missing_videos"] or report["undecodable_videos"]:
        (out_dir / REPORT_FILE).write_text(json.dumps(report, indent=1) + "\n")
    return {**report, **{key: value for key, value in summary.items() if key != "failures"}}


def log_dropped_videos(name: str, report: dict, params: Params, repo_root: Path, files: list[Path]) -> str:
    """Log the counts of skipped videos (and the lists) to MLflow; returns the run id."""
    tracking.configure(params.tracking.tracking_uri, params.tracking.artifact_root, repo_root)
    experiment = f"{params.tracking.experiment_prefix}/{name}"
    with tracking.start_run(experiment=experiment, run_name="preprocess",
                            tags={"stage": "preprocess", "benchmark": name,
                                  "git_commit": tracking.git_commit(repo_root)}) as run:
        metrics = {"data/missing_videos": report["missing_videos"],
                   "data/undecodable_videos": report["undecodable_videos"]}
        for split, count in report["splits"].items():
            metrics[f"data/{split}_videos"] = count["videos"]
            metrics[f"data/{split}_captions"] = count["captions"]
        metrics.update(flat_truncation(report.get("truncation", {}), "captions"))
        tracking.log_metrics(metrics)
        tracking.log_artifacts([f for f in files if f.is_file()], artifact_path="data")
        return run.info.run_id


def run_preprocess(name: str, params: Params, paths: Paths, repo_root: Path, *, progress: bool = True) -> dict:
    """The stage: `preprocess_benchmark`, then the MLflow record when videos were skipped or captions are cut."""
    summary = preprocess_benchmark(name, params.benchmark(name), params.preprocess, paths, progress=progress,
                                   selection=params.eval.selection)
    cut = any(split["truncated"] for split in summary["truncation"].values())
    if summary["missing_videos"] or summary["undecodable_videos"] or cut:
        out_dir = paths.frames(name)
        summary["mlflow_run"] = log_dropped_videos(
            name, summary, params, repo_root, [out_dir / MISSING_FILE, out_dir / "failures.json",
                                               out_dir / REPORT_FILE, out_dir / TRUNCATION_FILE])
    return summary


def check_benchmark_files(name: str, settings: BenchmarkParams, raw_dir: Path,
                          token_counts: dict[str, Callable[[Sequence[str]], np.ndarray]] | None = None) -> dict:
    """What `diffusionret data check` reports: per-split counts (videos, captions, missing) of a folder, no decoding,
    and the captions max_words cuts (`truncation`): the word-piece lower bound, and one exact count per entry of
    `token_counts` (name -> token lengths of a list of captions, e.g. a stage-1 tokenizer's)."""
    extensions = SOURCES[settings.source].videos.extensions if settings.source in SOURCES else VIDEO_EXTENSIONS
    index = index_video_files(raw_dir, extensions) if Path(raw_dir).is_dir() else {}
    check = check_benchmark(raw_dir, benchmark=name, reader=settings.reader, splits=settings.splits,
                            val_videos_from_train=settings.val_videos_from_train, index=index,
                            id_prefix=id_prefix_of(settings), keep_going=True)
    shared = check.shared
    captions_of = {split: a.captions for split, a in check.splits.items()}
    return {"benchmark": name, "root": str(raw_dir), "video_files": len(index), "splits": check.counts(),
            "truncation": {counted_with: split_truncation(captions_of, settings.max_words, lengths)
                           for counted_with, lengths in {LOWER_BOUND: word_piece_lengths,
                                                         **(token_counts or {})}.items()},
            "missing_videos": len(check.missing_ids), "missing": check.missing_ids,
            "shared_videos": shared, "train_test_overlap": bool(shared.get("train-test")),
            "complete": not check.missing_ids and not check.errors and not shared.get("train-test")}
