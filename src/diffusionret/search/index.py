"""Build or update a search index over a folder of videos (`diffusionret index`).

Frames are decoded by `data/frames.build_frame_cache` with the model's own settings (disc/model.json: fps,
max_frames, image_size), i.e. exactly as `preprocess@<benchmark>` sampled the training videos, and encoded by
`encode.encode_videos`: no second copy of either. What is stored per video is in store.py.

Incremental: a file whose size and modification time match its entry is not read again. Any other file is
hashed (sha256); content already in the index (a touched, renamed or copied file) reuses its features; only new
content is decoded and encoded. Entries of deleted files are dropped. Undecodable files are reported and kept
in the manifest with their size and time, so an unchanged broken file is not retried. Work goes in batches;
each finished batch is saved under work/ and an interrupted run resumes from there.
"""

from __future__ import annotations

import fcntl
import shutil
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from tqdm import tqdm

from diffusionret.data.download import sha256_of
from diffusionret.data.frames import build_frame_cache, load_frame_cache
from diffusionret.features.encode import encode_videos
from diffusionret.search.files import VideoFile, scan_videos
from diffusionret.search.model import (FrameSettings, Fingerprint, SearchModel, fingerprint_model, frame_settings,
                                       load_search_model)
from diffusionret.search.store import (FORMAT, MANIFEST, SearchIndexError, WorkDir, generation_dir, read_manifest,
                                       remove_stale, thumb_path, write_json_atomic, write_strip)

DEFAULT_BATCH = 128  # videos decoded, encoded and saved per round (the unit an interrupted run loses)
ENCODE_BATCH = 32  # videos per extractor forward pass


@dataclass
class IndexReport:
    """What an update did; each list holds relative paths (failures: {path, error})."""

    index_dir: Path
    fingerprint: Fingerprint
    videos: int = 0  # in the index after the update
    unchanged: list[str] = field(default_factory=list)  # same size and time: not read
    reused: list[str] = field(default_factory=list)  # content already indexed (touched, renamed, copied): not decoded
    resumed: list[str] = field(default_factory=list)  # encoded by an earlier, interrupted run
    encoded: list[str] = field(default_factory=list)  # decoded and encoded now
    removed: list[str] = field(default_factory=list)  # deleted from the folder since the last update
    failed: list[dict] = field(default_factory=list)  # could not be decoded now
    still_failing: list[dict] = field(default_factory=list)  # failed before and unchanged since: not retried
    generator_updated: bool = False  # same extractor, new generator: features kept, fingerprint updated
    seconds: float = 0.0

    def counts(self) -> dict:
        return {"videos": self.videos, "unchanged": len(self.unchanged), "reused": len(self.reused),
                "resumed": len(self.resumed), "encoded": len(self.encoded), "removed": len(self.removed),
                "failed": len(self.failed), "still_failing": len(self.still_failing)}

    def as_dict(self) -> dict:
        return {"index": str(self.index_dir), **self.fingerprint.as_dict(), **self.counts(),
                "generator_updated": self.generator_updated, "seconds": round(self.seconds, 2),
                "paths": {"encoded": self.encoded, "reused": self.reused, "resumed": self.resumed,
                          "removed": self.removed},
                "failures": self.failed + self.still_failing}


@contextmanager
def _exclusive(index_dir: Path):
    """Hold INDEX_DIR/.lock so two updates cannot interleave."""
    index_dir.mkdir(parents=True, exist_ok=True)
    with (index_dir / ".lock").open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SearchIndexError(f"another `diffusionret index` is updating {index_dir}; wait for it to "
                                   "finish") from None
        yield


def probe_duration(path: Path) -> float | None:
    """Length in seconds from the container header (frames / average rate, else the stream duration); None if absent."""
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            if stream.frames and stream.average_rate:
                return float(stream.frames / stream.average_rate)
            if stream.duration and stream.time_base:
                return float(stream.duration * stream.time_base)
            if container.duration:
                return container.duration / 1e6
    except Exception:  # the frames decoded, so a missing header figure is not an error
        return None
    return None


def _check_compatible(manifest: dict, videos_dir: Path, fingerprint: Fingerprint, settings: FrameSettings,
                      index_dir: Path) -> None:
    """Refuse to update an index of another folder, extractor or frame sampling (unless --rebuild)."""
    fix = f"pass --rebuild to re-encode every video, or choose another --out than {index_dir}"
    if manifest["videos_root"] != str(videos_dir):
        raise SearchIndexError(f"{index_dir} indexes the folder {manifest['videos_root']}, not {videos_dir}; {fix}")
    built = manifest["model"]
    if built["disc_sha256"] != fingerprint.disc_sha256:
        raise SearchIndexError(
            f"{index_dir} was built with the extractor {built['disc_sha256'][:16]} ({built['dir']}/disc) but the "
            f"model given has {fingerprint.disc_sha256[:16]}; features of two extractors cannot be mixed: {fix}")
    if manifest["frames"] != settings.as_dict():
        raise SearchIndexError(f"{index_dir} sampled frames with {manifest['frames']} but the model asks for "
                               f"{settings.as_dict()}; {fix}")


def _hash_files(files: list[VideoFile], root: Path, progress: bool) -> dict[str, str]:
    """Relative path -> sha256 of each file."""
    hashes = {}
    for video in tqdm(files, desc="hashing new or changed files", unit="file", disable=not progress or not files):
        hashes[video.path] = sha256_of(root / video.path)
    return hashes


def _encode_round(model: SearchModel, work: WorkDir, videos: dict[str, Path], *, workers: int,
                  time_limit_s: float, progress: bool) -> dict[str, str]:
    """Decode, encode and save one batch (content hash -> file); returns hash -> error of the undecodable ones."""
    frames = model.frames
    summary = build_frame_cache(videos, work.batch, sample_fps=frames.sample_fps, max_frames=frames.max_frames,
                                image_size=frames.image_size, workers=workers, partial_dir=work.decoded,
                                progress=progress, time_limit_s=time_limit_s, decoder=frames.decoder)
    errors = {item["video_id"]: item["error"] for item in summary["failures"]}
    cache = load_frame_cache(work.batch)
    if cache.video_ids:
        rows = np.arange(len(cache.video_ids))
        encoded = encode_videos(model.extractor, cache.frames, cache.mask, rows, ENCODE_BATCH)
        for row, sha in enumerate(cache.video_ids):
            write_strip(np.asarray(cache.frames[row][cache.mask[row]]), thumb_path(work.path.parent, sha))
        durations = [probe_duration(videos[sha]) for sha in cache.video_ids]
        work.save_shard(list(cache.video_ids), encoded.frames.float().numpy(), encoded.mask.numpy(),
                        [float("nan") if d is None else d for d in durations])
    shutil.rmtree(work.decoded, ignore_errors=True)  # encoded now: the decoded frames are no longer needed
    return errors


def build_index(videos_dir: Path, model_dir: Path, index_dir: Path, *, batch_size: int = DEFAULT_BATCH,
                workers: int = 2, decoder: str = "decord", rebuild: bool = False, progress: bool = True,
                time_limit_s: float = 300.0,
                after_batch: Callable[[int], None] | None = None) -> IndexReport:
    """Create or update the index of `videos_dir` in `index_dir` with the model in `model_dir` (disc/ + gen/).

    `after_batch(number)` is called after each saved batch (progress hooks, tests of interruption).
    """
    started = time.perf_counter()
    videos_dir, model_dir, index_dir = Path(videos_dir).resolve(), Path(model_dir).resolve(), Path(index_dir)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    fingerprint = fingerprint_model(model_dir)
    settings, max_words = frame_settings(model_dir, decoder)
    with _exclusive(index_dir):
        existing = read_manifest(index_dir)
        manifest = None if rebuild else existing
        if manifest is not None:
            _check_compatible(manifest, videos_dir, fingerprint, settings, index_dir)
        report = IndexReport(index_dir, fingerprint)
        report.generator_updated = manifest is not None and manifest["model"]["gen_sha256"] != fingerprint.gen_sha256

        old_entries = manifest["videos"] if manifest else []
        old_by_path = {entry["path"]: (row, entry) for row, entry in enumerate(old_entries)}
        old_row_by_sha = {}
        for row, entry in enumerate(old_entries):
            old_row_by_sha.setdefault(entry["sha256"], row)
        old_failures = {item["path"]: item for item in manifest["failures"]} if manifest else {}

        files = scan_videos(videos_dir)
        source: dict[str, tuple[str, object]] = {}  # path -> ("row", old row) | ("new", sha256)
        kept_failures, to_hash = [], []
        for video in files:
            if video.path in old_by_path and video.same_stat(old_by_path[video.path][1]):
                source[video.path] = ("row", old_by_path[video.path][0])
                report.unchanged.append(video.path)
            elif video.path in old_failures and video.same_stat(old_failures[video.path]):
                kept_failures.append(old_failures[video.path])
            else:
                to_hash.append(video)
        current = {video.path for video in files}
        report.removed = sorted(path for path in old_by_path if path not in current)
        report.still_failing = [{"path": item["path"], "error": item["error"]} for item in kept_failures]

        hashes = _hash_files(to_hash, videos_dir, progress)
        work = WorkDir(index_dir, {"format": FORMAT, "disc_sha256": fingerprint.disc_sha256,
                                   "frames": settings.as_dict()})
        finished = work.load_shards()
        failed_now = work.load_failures()
        todo: dict[str, Path] = {}  # content hash -> one file with that content
        for video in to_hash:
            sha = hashes[video.path]
            if sha in old_row_by_sha:
                source[video.path] = ("row", old_row_by_sha[sha])
                report.reused.append(video.path)
            else:
                source[video.path] = ("new", sha)
                if sha in finished:
                    report.resumed.append(video.path)
                elif sha not in failed_now:
                    todo.setdefault(sha, videos_dir / video.path)

        if todo:
            model = load_search_model(model_dir, with_generator=False, decoder=decoder, fingerprint=fingerprint)
            pending = list(todo.items())
            with tqdm(total=len(pending), desc="indexing videos", unit="video", disable=not progress) as bar:
                for number, start in enumerate(range(0, len(pending), batch_size)):
                    batch = dict(pending[start:start + batch_size])
                    failed_now.update(_encode_round(model, work, batch, workers=workers, time_limit_s=time_limit_s,
                                                    progress=False))
                    work.save_failures(failed_now)
                    bar.update(len(batch))
                    if after_batch is not None:
                        after_batch(number)
            finished = work.load_shards()

        new_failures = []
        for video in to_hash:
            kind, sha = source[video.path]
            if kind == "new" and sha not in finished:
                error = failed_now.get(sha, "not encoded (unknown reason)")
                new_failures.append({"path": video.path, "size": video.size, "mtime_ns": video.mtime_ns,
                                     "sha256": sha, "error": error})
                del source[video.path]
            elif kind == "new" and video.path not in report.resumed:
                report.encoded.append(video.path)
        report.failed = [{"path": item["path"], "error": item["error"]} for item in new_failures]

        changed = bool(to_hash or report.removed or report.generator_updated or manifest is None
                       or {item["path"] for item in kept_failures} != set(old_failures))
        if changed:
            _commit(index_dir, existing, manifest, files, source, finished, kept_failures + new_failures,
                    videos_dir, model_dir, fingerprint, settings, max_words)
        work.remove()
        report.videos = len(source)
        report.seconds = time.perf_counter() - started
        return report


def _commit(index_dir: Path, existing: dict | None, manifest: dict | None, files: list[VideoFile],
            source: dict[str, tuple[str, object]], finished: dict[str, dict], failures: list[dict],
            videos_dir: Path, model_dir: Path, fingerprint: Fingerprint, settings: FrameSettings,
            max_words: int) -> None:
    """Write the new generation of features and swap the manifest to it; then delete what is stale."""
    generation = (existing["generation"] + 1) if existing else 1
    folder = generation_dir(index_dir, generation)
    shutil.rmtree(folder, ignore_errors=True)  # half-written by an interrupted commit
    folder.mkdir(parents=True)
    old_features = old_mask = None
    if manifest is not None and manifest["videos"]:  # rows kept from the current generation
        old_folder = generation_dir(index_dir, manifest["generation"])
        old_features = np.load(old_folder / "features.npy", mmap_mode="r")
        old_mask = np.load(old_folder / "mask.npy", mmap_mode="r")

    rows = [video for video in files if video.path in source]
    width = _width(old_features, finished)
    features = np.lib.format.open_memmap(folder / "features.npy", mode="w+", dtype=np.float32,
                                         shape=(len(rows), settings.max_frames, width))  # (V, T, D)
    mask = np.zeros((len(rows), settings.max_frames), dtype=bool)  # (V, T)
    entries = []
    for row, video in enumerate(rows):
        kind, key = source[video.path]
        if kind == "row":
            features[row], mask[row] = old_features[key], old_mask[key]
            old = manifest["videos"][key]
            sha, duration, count = old["sha256"], old["duration_s"], old["frames"]
        else:
            done = finished[key]
            features[row], mask[row] = done["features"], done["mask"]
            sha, duration, count = key, done["duration_s"], done["frames"]
            duration = None if duration != duration else round(duration, 3)  # NaN: the header did not say
        entries.append({"path": video.path, "size": video.size, "mtime_ns": video.mtime_ns, "duration_s": duration,
                        "sha256": sha, "frames": int(count)})
    features.flush()
    del features
    np.save(folder / "mask.npy", mask)
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    new_manifest = {
        "format": FORMAT, "created": existing["created"] if existing and manifest else now, "updated": now,
        "model": {"dir": str(model_dir), **fingerprint.as_dict()}, "frames": settings.as_dict(),
        "max_words": max_words, "width": width, "videos_root": str(videos_dir), "generation": generation,
        "videos": entries, "failures": sorted(failures, key=lambda item: item["path"]),
    }
    write_json_atomic(index_dir / MANIFEST, new_manifest)
    remove_stale(index_dir, new_manifest)


def _width(old_features, finished: dict[str, dict]) -> int:
    """D of the stored features (0 for an empty index)."""
    if old_features is not None and old_features.shape[0]:
        return int(old_features.shape[-1])
    for done in finished.values():
        return int(done["features"].shape[-1])
    return 0
