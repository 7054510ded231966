"""Decode videos into a uint8 frame cache: the only module that decodes video.

Frames are sampled on a fixed time grid (`sample_frame_indices`), resized so the short side is `image_size`
(bicubic, PIL) and centre-cropped to a square, as the official transform does before normalisation. Decoding
goes through a small decoder function (decord by default; `DECODERS` can take a PyAV one where decord has no
wheel, e.g. aarch64).

`build_frame_cache` decodes every video in a pool of processes. Each finished video is saved at once under
`partial_dir/<settings>/`, so a killed run resumes and a re-run decodes nothing. A video that fails to decode,
crashes the decoder or runs past the per-video time limit is listed in `failures.json` and left out of the
cache; the caller decides whether that is fatal. Only a decoder's error counts against a video: an OSError
while saving frames (disk full, quota, permissions) stops the whole build with a `StorageError` naming the file,
and `frames.npy` is written row by row with its size reserved first (storage.py), so a full disk is a message,
not a bus error. Workers are spawned processes (even for workers=1, so a crashing decoder cannot take the caller
down) that die with their parent (`_die_with_parent`): a calling script needs an `if __name__ == "__main__":`
guard.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import json
import math
import multiprocessing
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from diffusionret.storage import NpyRowWriter, StorageError, writing

CACHE_FORMAT = 1  # bump when the stored frames change meaning, so old partial files are not reused
Decoder = Callable[[Path, Callable[[int, float], np.ndarray]], np.ndarray]


class VideoDecodeError(RuntimeError):
    """A video file could not be decoded into frames."""

    def __init__(self, path: Path | str, reason: str):
        super().__init__(f"cannot decode video {path}: {reason}")
        self.path, self.reason = Path(path), reason


def sample_frame_indices(num_video_frames: int, video_fps: float, sample_fps: float, max_frames: int,
                         start_s: float | None = None, end_s: float | None = None) -> np.ndarray:
    """Indices of the frames to read: a time grid at `sample_fps`, thinned to at most `max_frames`.

    Rule: the video lasts `num_video_frames / video_fps` seconds; start = `start_s` (default 0) and end = `end_s`
    (default the duration), both clipped to the video. Sample times are start, start + 1/sample_fps, ... strictly
    before end; each time t reads frame int(t * video_fps), clipped to the last frame. If there are more than
    `max_frames` times, keep those at positions np.linspace(0, n - 1, max_frames) truncated to integers (the
    official thinning). A non-empty video always gives at least one frame (the one at start).
    Unlike the official cv2 reader (integer fps, every second up to ceil(duration) inclusive), the grid uses the
    real fps and stops before the end.
    """
    if num_video_frames <= 0:
        return np.zeros(0, dtype=np.int64)
    if video_fps <= 0 or sample_fps <= 0 or max_frames < 1:
        raise ValueError(f"need video_fps > 0, sample_fps > 0, max_frames >= 1; got {video_fps}, {sample_fps}, "
                         f"{max_frames}")
    times = sample_times(num_video_frames / video_fps, sample_fps, max_frames, start_s, end_s)
    return np.minimum(np.floor(times * video_fps + 1e-6).astype(np.int64), num_video_frames - 1)


def sample_times(duration_s: float, sample_fps: float, max_frames: int, start_s: float | None = None,
                 end_s: float | None = None) -> np.ndarray:
    """The times (s) that `sample_frame_indices` reads in a video of `duration_s` seconds (its rule, in seconds)."""
    start = min(max(start_s or 0.0, 0.0), duration_s)
    end = duration_s if end_s is None else min(max(end_s, 0.0), duration_s)
    count = max(math.ceil((end - start) * sample_fps - 1e-9), 1)  # times t < end; tolerance for float error
    times = start + np.arange(count) / sample_fps
    if len(times) > max_frames:
        times = times[np.linspace(0, len(times) - 1, max_frames).astype(np.int64)]
    return times


def decode_with_decord(path: Path, choose: Callable[[int, float], np.ndarray]) -> np.ndarray:
    """Open `path` with decord, pick indices with choose(num_frames, fps), return uint8 (T, H, W, 3)."""
    from decord import VideoReader, cpu

    reader = VideoReader(str(path), ctx=cpu(0), num_threads=1)
    indices = choose(len(reader), float(reader.get_avg_fps()))
    return reader.get_batch(list(map(int, indices))).asnumpy()


def decode_with_pyav(path: Path, choose: Callable[[int, float], np.ndarray]) -> np.ndarray:
    """The same with PyAV, decoding sequentially (for machines without a decord wheel, e.g. aarch64)."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps, count = float(stream.average_rate or 0), stream.frames
        decoded: dict[int, np.ndarray] = {}
        if count <= 0:  # frame count not in the header: decode everything once
            decoded = {i: f.to_ndarray(format="rgb24") for i, f in enumerate(container.decode(stream))}
            count = len(decoded)
        indices = [int(i) for i in choose(count, fps)]
        if not decoded:
            wanted = set(indices)
            for i, frame in enumerate(container.decode(stream)):
                if i in wanted:
                    decoded[i] = frame.to_ndarray(format="rgb24")
                if i >= max(indices):
                    break
    missing = [i for i in indices if i not in decoded]
    if missing:
        raise VideoDecodeError(path, f"frames {missing[:5]} of {count} could not be decoded")
    return np.stack([decoded[i] for i in indices])


DECODERS: dict[str, Decoder] = {"decord": decode_with_decord, "pyav": decode_with_pyav}


def resize_and_crop(frames: np.ndarray, image_size: int) -> np.ndarray:
    """Resize uint8 (T, H, W, 3) so the short side is image_size (bicubic), then centre-crop to a square."""
    from PIL import Image

    _, height, width, _ = frames.shape
    # as torchvision Resize(int): the short side becomes image_size, the long side int(image_size * long / short)
    if width <= height:
        new_w, new_h = image_size, int(image_size * height / width)
    else:
        new_w, new_h = int(image_size * width / height), image_size
    top, left = int(round((new_h - image_size) / 2.0)), int(round((new_w - image_size) / 2.0))
    out = np.empty((len(frames), image_size, image_size, 3), np.uint8)  # (T, S, S, 3)
    for i, frame in enumerate(frames):
        image = Image.fromarray(frame)
        if (new_w, new_h) != (width, height):
            image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
        out[i] = np.asarray(image)[top:top + image_size, left:left + image_size]
    return out


def read_video_frames(path: Path, *, sample_fps: float, max_frames: int, image_size: int,
                      span: tuple[float, float] | None = None, decoder: str | Decoder = "decord") -> np.ndarray:
    """Sampled, resized and cropped frames of one video: uint8 (T', S, S, 3) with T' <= max_frames."""
    decode = DECODERS[decoder] if isinstance(decoder, str) else decoder
    start_s, end_s = span if span is not None else (None, None)

    def choose(num_frames: int, fps: float) -> np.ndarray:
        if num_frames <= 0 or not fps > 0:
            raise VideoDecodeError(path, f"no usable frames (frames={num_frames}, fps={fps})")
        return sample_frame_indices(num_frames, fps, sample_fps, max_frames, start_s, end_s)

    try:
        frames = np.asarray(decode(Path(path), choose))
    except VideoDecodeError:
        raise
    except Exception as exc:  # decoders raise their own types (decord.DECORDError, av.FFmpegError, ...)
        raise VideoDecodeError(path, f"{type(exc).__name__}: {exc}") from exc
    if frames.ndim != 4 or frames.shape[0] == 0 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise VideoDecodeError(path, f"decoder returned {frames.dtype} frames of shape {frames.shape}")
    return resize_and_crop(frames, image_size)


# ---------------------------------------------------------------- frame cache -----------------------------------

@dataclass(frozen=True)
class _Task:
    video_id: str
    path: str
    span: tuple[float, float] | None
    partial: str  # finished frames, uint8 (T', S, S, 3)
    sample_fps: float
    max_frames: int
    image_size: int
    decoder: str | Decoder
    time_limit_s: float

    @property
    def marker(self) -> Path:
        return Path(self.partial + ".started")  # exists while a worker decodes this video


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent(parent_pid: int) -> None:
    """Worker initializer: end this worker when the process that started it dies (even by SIGKILL).

    Linux: prctl(PR_SET_PDEATHSIG, SIGKILL), then a check that the parent did not die before the call. Elsewhere:
    a daemon thread that exits the worker once its parent id changes (re-parented to init)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
            if os.getppid() != parent_pid:
                os._exit(1)
            return

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def _decode_one(task: _Task) -> tuple[str, str | None]:
    """Worker: decode one video into its partial file; returns (video id, decoder error or None).

    Only a `VideoDecodeError` is the video's failure; a failed write raises `StorageError` (the build stops)."""
    marker = task.marker
    with writing(marker):
        marker.touch()
    signal.signal(signal.SIGALRM, signal.SIG_DFL)  # a decoder stuck past the limit kills this worker
    signal.setitimer(signal.ITIMER_REAL, task.time_limit_s)
    try:
        try:
            frames = read_video_frames(Path(task.path), sample_fps=task.sample_fps, max_frames=task.max_frames,
                                       image_size=task.image_size, span=task.span, decoder=task.decoder)
        except VideoDecodeError as exc:
            return task.video_id, exc.reason
        signal.setitimer(signal.ITIMER_REAL, 0)
        tmp = Path(task.partial + ".tmp")
        try:
            with writing(tmp, f"saving the frames of video {task.video_id} to"):
                with tmp.open("wb") as f:
                    np.save(f, frames)
                tmp.replace(task.partial)
        except StorageError:
            tmp.unlink(missing_ok=True)
            raise
        return task.video_id, None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        marker.unlink(missing_ok=True)


def _run_pool(tasks: list[_Task], workers: int, bar: tqdm) -> tuple[dict[str, str], bool]:
    """Decode `tasks` in a fresh process pool; returns (errors by video id, whether a worker died)."""
    errors: dict[str, str] = {}
    context = multiprocessing.get_context("spawn")  # no fork: the caller may hold threads (torch, tqdm)
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_die_with_parent,
                             initargs=(os.getpid(),)) as pool:
        futures = [pool.submit(_decode_one, task) for task in tasks]
        try:
            for future in as_completed(futures):
                video_id, error = future.result()
                if error is not None:
                    errors[video_id] = error
                bar.update(1)
        except BrokenProcessPool:
            return errors, True
        except BaseException:  # a write failed (StorageError) or the caller was interrupted: stop queued work
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return errors, False


def _decode_all(tasks: list[_Task], workers: int, bar: tqdm) -> dict[str, str]:
    """Decode every task; a video whose worker dies (crash or time limit) becomes an error, the rest go on."""
    errors: dict[str, str] = {}
    pending = tasks
    while pending:
        new_errors, broken = _run_pool(pending, workers, bar)
        errors.update(new_errors)
        pending = [t for t in pending if t.video_id not in errors and not Path(t.partial).exists()]
        if not broken:
            break
        suspects = [t for t in pending if t.marker.exists()]  # in flight when the pool died
        if not suspects:
            raise RuntimeError("the frame-decoding worker pool died before starting any video; a script that "
                               "calls build_frame_cache needs an `if __name__ == '__main__':` guard (spawn)")
        for task in suspects:  # alone, so a death points at exactly one video
            task.marker.unlink(missing_ok=True)
            solo_errors, solo_broken = _run_pool([task], 1, bar)
            errors.update(solo_errors)
            if solo_broken:
                errors[task.video_id] = (f"the decoder crashed or ran past the time limit of {task.time_limit_s} s")
                task.marker.unlink(missing_ok=True)
                bar.update(1)
        pending = [t for t in pending if t not in suspects]
    return errors


def _partial_name(video_id: str, path: Path, span: tuple[float, float] | None) -> str:
    """File name of one video's finished frames: readable id + hash of (id, span, file size)."""
    key = f"{video_id}|{span}|{path.stat().st_size if path.exists() else -1}"
    readable = re.sub(r"[^A-Za-z0-9._-]", "_", video_id)[:80]
    return f"{readable}-{hashlib.sha1(key.encode()).hexdigest()[:12]}.npy"


def build_frame_cache(videos: dict[str, Path], out_dir: Path, *, sample_fps: float, max_frames: int,
                      image_size: int, spans: dict[str, tuple[float, float]] | None = None, workers: int = 1,
                      partial_dir: Path, progress: bool = True, time_limit_s: float = 300.0,
                      decoder: str | Decoder = "decord") -> dict:
    """Decode `videos` (id -> file) into out_dir/{frames.npy, mask.npy, videos.json, failures.json}; returns a summary.

    Rows follow the order of `videos`, minus the failed ones. `spans` gives (start_s, end_s) windows per id;
    `time_limit_s` bounds each video's decoding (0 = no limit); `partial_dir` keeps finished videos between runs
    and must lie outside `out_dir`. Summary: videos, cached, decoded (this run), reused, failed, failures, seconds.
    """
    started = time.perf_counter()
    out_resolved = Path(out_dir).resolve()
    if out_resolved == Path(partial_dir).resolve() or out_resolved in Path(partial_dir).resolve().parents:
        raise ValueError(f"partial_dir {partial_dir} lies inside out_dir {out_dir}; DVC deletes out_dir before a "
                         "re-run, which would throw away the finished videos. Put it elsewhere.")
    spans = spans or {}
    decoder_name = decoder if isinstance(decoder, str) else decoder.__name__
    settings = {"sample_fps": sample_fps, "max_frames": max_frames, "image_size": image_size,
                "decoder": decoder_name, "format": CACHE_FORMAT}
    settings_name = f"fps{sample_fps:g}_T{max_frames}_S{image_size}_{decoder_name}_v{CACHE_FORMAT}"
    settings_dir = Path(partial_dir) / settings_name
    with writing(settings_dir, "creating the folder"):
        settings_dir.mkdir(parents=True, exist_ok=True)
    for stale in settings_dir.glob("*.started"):  # left by a killed run
        stale.unlink()
    tasks = [_Task(video_id, str(path), spans.get(video_id),
                   str(settings_dir / _partial_name(video_id, Path(path), spans.get(video_id))),
                   sample_fps, max_frames, image_size, decoder, time_limit_s)
             for video_id, path in videos.items()]
    todo = [t for t in tasks if not Path(t.partial).exists()]
    with tqdm(total=len(todo), desc="decoding videos", unit="video", disable=not progress) as bar:
        errors = _decode_all(todo, workers, bar) if todo else {}

    done = [t for t in tasks if t.video_id not in errors]
    out_dir = Path(out_dir)
    shape = (len(done), max_frames, image_size, image_size, 3)  # (V, T, S, S, 3)
    mask = np.zeros(shape[:2], dtype=bool)  # (V, T) valid frames
    with writing(out_dir, "creating the folder"):
        out_dir.mkdir(parents=True, exist_ok=True)
    rows = NpyRowWriter(out_dir / "frames.npy", shape, np.uint8)  # its full size is reserved here
    try:
        for row, task in enumerate(done):
            clip = np.load(task.partial)  # (T', S, S, 3), T' <= max_frames
            padded = np.zeros((1, *shape[1:]), np.uint8)  # (1, T, S, S, 3)
            padded[0, :len(clip)] = clip
            mask[row, :len(clip)] = True
            rows.write(padded)
        rows.close()
    except BaseException:
        rows.abort()
        raise
    failures = [{"video_id": t.video_id, "path": t.path, "error": errors[t.video_id]}
                for t in tasks if t.video_id in errors]
    with writing(out_dir / "mask.npy"):
        np.save(out_dir / "mask.npy", mask)
    with writing(out_dir / "failures.json"):
        (out_dir / "failures.json").write_text(json.dumps(failures, indent=1))
    with writing(out_dir / "videos.json"):
        (out_dir / "videos.json").write_text(json.dumps(
            {"video_ids": [t.video_id for t in done], "settings": settings,
             "spans": {t.video_id: list(t.span) for t in done if t.span is not None}}, indent=1))
    return {"videos": len(tasks), "cached": len(done), "decoded": len(todo) - len(errors),
            "reused": len(tasks) - len(todo), "failed": len(failures), "failures": failures,
            "seconds": round(time.perf_counter() - started, 2)}


@dataclass(frozen=True)
class FrameCache:
    """A frame cache opened read-only: frames (V, T, S, S, 3) uint8 memmap, mask (V, T) bool, row per video id."""

    frames: np.ndarray
    mask: np.ndarray
    video_ids: tuple[str, ...]
    row_of: dict[str, int]
    settings: dict


def load_frame_cache(out_dir: Path) -> FrameCache:
    """Open the cache written by `build_frame_cache` (frames memory-mapped, read-only)."""
    out_dir = Path(out_dir)
    missing = [n for n in ("frames.npy", "mask.npy", "videos.json") if not (out_dir / n).is_file()]
    if missing:
        raise FileNotFoundError(f"frame cache {out_dir} lacks {missing}; run `dvc repro preprocess@<benchmark>` "
                                "for this benchmark first")
    frames = np.load(out_dir / "frames.npy", mmap_mode="r")
    mask = np.load(out_dir / "mask.npy")
    meta = json.loads((out_dir / "videos.json").read_text())
    video_ids = tuple(meta["video_ids"])
    if not len(video_ids) == frames.shape[0] == mask.shape[0]:
        raise ValueError(f"frame cache {out_dir} is inconsistent: {len(video_ids)} ids, frames {frames.shape}, "
                         f"mask {mask.shape}; delete it and run `dvc repro preprocess@<benchmark>`")
    return FrameCache(frames, mask, video_ids, {v: i for i, v in enumerate(video_ids)}, meta.get("settings", {}))
