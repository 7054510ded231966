"""The embedded benchmark: moving coloured shapes, written as real H.264 mp4s in the MSRVTT file layout.

Every video shows one shape (6 colours x 4 shapes) moving along one of 16 motions on a dark background:
4 single directions, 8 "A then B" paths at right angles (telling "left, then up" from "up, then left" needs
temporal order) and 4 back-and-forth paths. That is 6 x 4 x 16 = 384 caption meanings. Each leg of a path
is `amplitude` x the frame side (the original benchmark: 0.25-0.35, about one encoder patch; at 0.7 a path
crosses the frame, so motions also differ in start and end position). Videos are 64 px,
8 fps, 2-4 s long. Val and test meanings are drawn without replacement, so no two videos of one of those
splits share a meaning (a duplicate would cap R@1); train videos may repeat meanings. Each val/test video has
`captions_per_eval_video` captions, each from a different template (5 templates per set: 1000 t2v queries on
200 test videos), scored with the multi-caption protocol (every caption a t2v query; v2t counts a video's best
caption).

Caption templates (the seen and unseen sets are disjoint; colour, shape and direction synonyms are shared):
- seen (every split of `shift="none"`, and the train split of the shifted sets):
  "a {colour} {shape} moves {motion}", "the {colour} {shape} is moving {motion}",
  "{colour} {shape} moving {motion}", "a {shape} in {colour} goes {motion}",
  "there is a {colour} {shape} that travels {motion}"
- unseen (val/test of `shift="text"` and `shift="visual_text"`):
  "watch the {colour} {shape} slide {motion}", "one {shape}, coloured {colour}, heads {motion}",
  "in this clip a {colour} {shape} drifts {motion}", "we can see a {colour} {shape} shifting {motion}",
  "here a {shape}, {colour} in colour, glides {motion}"

Shifts (only val/test are shifted; train stays in distribution):
- "none": plain dark backgrounds, seen templates.
- "text": the same kind of videos, unseen templates only.
- "visual_text" (the `synthetic-shift` benchmark): unseen dark textured backgrounds (stripes, checkerboard,
  blotches, gradients) plus Gaussian pixel noise (sigma 6), and unseen templates. Bright backgrounds are
  deliberately absent: they drop every model to chance (measured on a prototype).

Every video is drawn from its own generator seeded by (seed, split, index), so the output does not depend on
the number of workers. Output: `videos/<id>.mp4`, `MSRVTT_train.9k.csv`, `MSRVTT_JSFUSION_{val,test}.csv`,
`MSRVTT_data.json` (sentences of all splits; video splits named as in the real file: train/validate/test)
and `meanings.json` (video id -> {colour, shape, motion}). With workers > 1 the videos are written by spawned
processes, so a calling script needs an `if __name__ == "__main__":` guard.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import multiprocessing
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

COLOURS = {  # name -> (RGB, caption words)
    "red": ((220, 40, 40), ("red",)),
    "green": ((40, 200, 60), ("green",)),
    "blue": ((50, 90, 235), ("blue",)),
    "yellow": ((230, 220, 40), ("yellow",)),
    "purple": ((165, 60, 205), ("purple", "violet")),
    "white": ((235, 235, 235), ("white",)),
}
SHAPES = {"circle": ("circle", "disc"), "square": ("square", "box"), "triangle": ("triangle",),
          "cross": ("cross", "plus sign")}
STEPS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}  # image coordinates (x, y)
DIRECTION_WORDS = {"left": ("left", "to the left", "leftward"), "right": ("right", "to the right", "rightward"),
                   "up": ("up", "upward"), "down": ("down", "downward")}
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}
# 16 motions: 4 like "left", 8 like "left-then-up" (right angles only), 4 like "left-and-back"
_RIGHT_ANGLES = [(a, b) for a, b in itertools.permutations(STEPS, 2) if np.dot(STEPS[a], STEPS[b]) == 0]
MOTIONS = [*STEPS, *(f"{a}-then-{b}" for a, b in _RIGHT_ANGLES), *(f"{d}-and-back" for d in STEPS)]
MEANINGS = [(c, s, m) for c in COLOURS for s in SHAPES for m in MOTIONS]  # 384 caption meanings

SEEN_TEMPLATES = (
    "a {colour} {shape} moves {motion}",
    "the {colour} {shape} is moving {motion}",
    "{colour} {shape} moving {motion}",
    "a {shape} in {colour} goes {motion}",
    "there is a {colour} {shape} that travels {motion}",
)
UNSEEN_TEMPLATES = (
    "watch the {colour} {shape} slide {motion}",
    "one {shape}, coloured {colour}, heads {motion}",
    "in this clip a {colour} {shape} drifts {motion}",
    "we can see a {colour} {shape} shifting {motion}",
    "here a {shape}, {colour} in colour, glides {motion}",
)
SHIFTS = ("none", "visual_text", "text")
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
NOISE_SIGMA = 6.0
DEFAULT_AMPLITUDE = (0.25, 0.35)  # path leg / frame side of the original benchmark


def motion_phrase(motion: str, rng: np.random.Generator) -> str:
    """Words for one motion, e.g. "left-then-up" -> "to the left, then upward"."""
    pick = lambda options: options[rng.integers(len(options))]  # noqa: E731
    if "-then-" in motion:
        a, b = motion.split("-then-")
        joiner = pick(("{a} then {b}", "{a} and then {b}", "{a}, then {b}", "first {a}, then {b}"))
        return joiner.format(a=pick(DIRECTION_WORDS[a]), b=pick(DIRECTION_WORDS[b]))
    if motion.endswith("-and-back"):
        a = motion.removesuffix("-and-back")
        joiner = pick(("{a} and back", "{a} and back again", "{a} and then back {b}"))
        return joiner.format(a=pick(DIRECTION_WORDS[a]), b=pick(DIRECTION_WORDS[OPPOSITE[a]]))
    return pick(DIRECTION_WORDS[motion])


def make_caption(meaning: tuple[str, str, str], templates: tuple[str, ...], rng: np.random.Generator,
                 template: str | None = None) -> str:
    """One caption for (colour, shape, motion) from `template` (default: a random one) and random synonyms."""
    colour, shape, motion = meaning
    template = templates[rng.integers(len(templates))] if template is None else template
    words = COLOURS[colour][1]
    return template.format(colour=words[rng.integers(len(words))],
                           shape=SHAPES[shape][rng.integers(len(SHAPES[shape]))],
                           motion=motion_phrase(motion, rng))


def eval_captions(meaning: tuple[str, str, str], templates: tuple[str, ...], count: int,
                  rng: np.random.Generator) -> list[str]:
    """`count` captions of one val/test video, each from a different template (drawn without replacement)."""
    if not 1 <= count <= len(templates):
        raise ValueError(f"captions_per_eval_video={count}: a val/test video takes each of its captions from a "
                         f"different template, so use 1 to {len(templates)} (the number of templates)")
    picks = rng.choice(len(templates), size=count, replace=False)
    return [make_caption(meaning, templates, rng, template=templates[int(i)]) for i in picks]


def shape_mask(shape: str, size: int) -> np.ndarray:
    """Boolean (size, size) mask of a filled shape."""
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    c = size / 2
    if shape == "circle":
        return (xx - c) ** 2 + (yy - c) ** 2 <= c**2
    if shape == "square":
        return np.ones((size, size), bool)
    if shape == "triangle":  # apex up
        return np.abs(xx - c) <= yy / 2
    if shape == "cross":
        bar = size / 6
        return (np.abs(xx - c) <= bar) | (np.abs(yy - c) <= bar)
    raise ValueError(f"unknown shape {shape!r}; known: {list(SHAPES)}")


def trajectory(motion: str, num_frames: int, amplitude: float) -> np.ndarray:
    """(T, 2) displacement (x, y) in pixels from the start position, frame by frame."""
    t = np.linspace(0.0, 1.0, num_frames)[:, None]  # (T, 1)
    first_half = np.minimum(t, 0.5) / 0.5
    second_half = np.maximum(t - 0.5, 0.0) / 0.5
    if "-then-" in motion:
        a, b = (np.array(STEPS[d], float) for d in motion.split("-then-"))
        return amplitude * (first_half * a + second_half * b)
    if motion.endswith("-and-back"):
        a = np.array(STEPS[motion.removesuffix("-and-back")], float)
        return amplitude * (first_half - second_half) * a
    return 1.4 * amplitude * t * np.array(STEPS[motion], float)


def textured_background(size: int, rng: np.random.Generator) -> np.ndarray:
    """A dark textured (size, size, 3) float background, never seen in training."""
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    kind = rng.integers(4)
    period = rng.uniform(4, 12)
    if kind == 0:  # stripes at a random angle
        angle = rng.uniform(0, np.pi)
        pattern = (np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period) > 0).astype(float)
    elif kind == 1:  # checkerboard
        pattern = ((xx // period + yy // period) % 2).astype(float)
    elif kind == 2:  # blotches: upsampled coarse noise
        coarse = rng.random((size // 8 + 1, size // 8 + 1))
        pattern = np.kron(coarse, np.ones((8, 8)))[:size, :size]
    else:  # diagonal gradient
        pattern = (xx + yy) / (2 * size - 2)
    low, high = rng.uniform(0, 25, 3), rng.uniform(35, 70, 3)
    return low + pattern[..., None] * (high - low)


def render_video(meaning: tuple[str, str, str], video_seed: list[int], *, textured: bool,
                 image_size: int, fps: int, amplitude: tuple[float, float] = DEFAULT_AMPLITUDE,
                 shape_size: tuple[float, float] | None = None) -> np.ndarray:
    """Draw one clip: uint8 (T, S, S, 3) frames of one moving shape.

    `amplitude` (low, high): each leg of the path, as a fraction of the frame side, drawn uniformly per video
    (a single-direction path goes 1.4 times as far); positions are clipped to the frame. `shape_size` (low, high):
    the shape's side as a fraction of the frame side, an integer number of pixels drawn uniformly per video
    (None: side // 6 to side // 4, the original benchmark).
    """
    rng = np.random.default_rng(video_seed)
    colour, shape, motion = meaning
    num_frames = int(rng.integers(2 * fps, 4 * fps + 1))  # 2-4 s
    low, high = (image_size // 6, image_size // 4) if shape_size is None else (int(shape_size[0] * image_size),
                                                                                int(shape_size[1] * image_size))
    shape_size = int(rng.integers(low, high + 1))
    mask = shape_mask(shape, shape_size)
    offsets = trajectory(motion, num_frames, amplitude=rng.uniform(*amplitude) * image_size)
    room = image_size - shape_size
    low = -offsets.min(0)
    high = room - offsets.max(0)
    start = low + rng.random(2) * np.maximum(high - low, 0)
    positions = np.clip(np.rint(start + offsets), 0, room).astype(int)  # (T, 2)
    if textured:
        background = textured_background(image_size, rng)
    else:
        background = rng.uniform(0, 45, 3) * np.ones((image_size, image_size, 3))
    rgb = np.clip(np.array(COLOURS[colour][0]) + rng.integers(-15, 16, 3), 0, 255).astype(np.uint8)
    frames = np.empty((num_frames, image_size, image_size, 3), np.uint8)  # (T, S, S, 3)
    frames[:] = np.rint(background).astype(np.uint8)
    for frame, (x, y) in zip(frames, positions):
        frame[y:y + shape_size, x:x + shape_size][mask] = rgb
    if textured:
        noise = rng.standard_normal(frames.shape, dtype=np.float32) * NOISE_SIGMA
        frames = np.clip(np.rint(frames + noise), 0, 255).astype(np.uint8)
    return frames


def write_mp4(path: Path, frames: np.ndarray, fps: int) -> None:
    """Encode uint8 (T, H, W, 3) frames as H.264/yuv420p; written to a temp name, then renamed."""
    import av

    tmp = path.with_name(path.name + ".tmp")
    with av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "crf": "18"})
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.codec_context.thread_count = 1
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    os.replace(tmp, path)


def _write_videos(jobs: list[tuple]) -> int:
    """Worker: render and encode a chunk of (path, meaning, seed, textured, image_size, fps, amplitude, shape_size)
    jobs."""
    for path, meaning, video_seed, textured, image_size, fps, amplitude, shape_size in jobs:
        frames = render_video(meaning, video_seed, textured=textured, image_size=image_size, fps=fps,
                              amplitude=amplitude, shape_size=shape_size)
        write_mp4(Path(path), frames, fps)
    return len(jobs)


def _write_text(path: Path, text: str) -> None:
    """Write a text file atomically (temp name, then rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _csv_text(header: list[str], rows: list[list]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


@dataclass
class SyntheticPlan:
    """Everything of a synthetic benchmark but the pixels: annotations, meanings and the video jobs."""

    sentences: list[dict]  # {video_id, caption, sen_id} of every split (MSRVTT_data.json)
    videos: list[dict]  # {video_id, split} (split named as in the real file: train / validate / test)
    meanings: dict[str, dict]  # video id -> {colour, shape, motion}
    split_rows: dict[str, list[list]]  # "val"/"test" -> csv rows [key, vid_key, video_id, sentence], one per caption
    jobs: list[tuple]  # (path, meaning, seed, textured, image_size, fps, amplitude, shape_size) per video, for `_write_videos`

    def captions(self, split: str) -> list[str]:
        """Every caption of "train", "val" or "test", in file order."""
        if split != "train":
            return [row[3] for row in self.split_rows[split]]
        train = {v["video_id"] for v in self.videos if v["split"] == "train"}
        return [s["caption"] for s in self.sentences if s["video_id"] in train]


def plan_synthetic(out_dir: Path, *, seed: int, num_train: int, num_val: int, num_test: int,
                   captions_per_train_video: int, captions_per_eval_video: int = 1, shift: str = "none",
                   image_size: int = 64, fps: int = 8,
                   amplitude: tuple[float, float] = DEFAULT_AMPLITUDE,
                   shape_size: tuple[float, float] | None = None) -> SyntheticPlan:
    """The annotations and video jobs `generate_synthetic` writes (cheap: no video is drawn)."""
    if shift not in SHIFTS:
        raise ValueError(f"unknown shift {shift!r}; choose one of {SHIFTS}")
    for name, n in {"num_val": num_val, "num_test": num_test}.items():
        if n > len(MEANINGS):
            raise ValueError(f"{name}={n} exceeds the {len(MEANINGS)} distinct caption meanings; "
                             "val/test meanings must be unique, so use at most that many videos")
    out_dir = Path(out_dir)
    shifted_templates = UNSEEN_TEMPLATES if shift != "none" else SEEN_TEMPLATES
    if (num_val or num_test) and not 1 <= captions_per_eval_video <= len(shifted_templates):
        raise ValueError(f"captions_per_eval_video={captions_per_eval_video}: each caption of a val/test video comes "
                         f"from a different template and shift={shift!r} has {len(shifted_templates)}; use 1 to "
                         f"{len(shifted_templates)}")

    sentences, videos, meanings, jobs = [], [], {}, []
    split_rows: dict[str, list[list]] = {"val": [], "test": []}
    next_id = 0
    for split, count in (("train", num_train), ("val", num_val), ("test", num_test)):
        split_rng = np.random.default_rng([seed, SPLIT_CODES[split]])
        if split == "train":
            picks = split_rng.integers(len(MEANINGS), size=count)
        else:
            picks = split_rng.choice(len(MEANINGS), size=count, replace=False)
        templates = SEEN_TEMPLATES if split == "train" else shifted_templates
        for index, pick in enumerate(picks):
            video_id = f"video{next_id}"
            next_id += 1
            meaning = MEANINGS[int(pick)]
            meanings[video_id] = dict(zip(("colour", "shape", "motion"), meaning))
            videos.append({"video_id": video_id, "split": {"val": "validate"}.get(split, split)})
            caption_rng = np.random.default_rng([seed, SPLIT_CODES[split], index, 0])
            if split == "train":
                captions = [make_caption(meaning, templates, caption_rng) for _ in range(captions_per_train_video)]
            else:
                captions = eval_captions(meaning, templates, captions_per_eval_video, caption_rng)
            for caption in captions:
                sentences.append({"video_id": video_id, "caption": caption, "sen_id": len(sentences)})
                if split != "train":
                    row = len(split_rows[split])
                    split_rows[split].append([f"ret{row}", f"msr{video_id[5:]}", video_id, caption])
            textured = shift == "visual_text" and split != "train"
            jobs.append((str(out_dir / "videos" / f"{video_id}.mp4"), meaning,
                         [seed, SPLIT_CODES[split], index, 1], textured, image_size, fps, tuple(amplitude),
                         None if shape_size is None else tuple(shape_size)))
    return SyntheticPlan(sentences, videos, meanings, split_rows, jobs)


def generate_synthetic(out_dir: Path, *, seed: int, num_train: int, num_val: int, num_test: int,
                       captions_per_train_video: int, captions_per_eval_video: int = 1, shift: str = "none",
                       image_size: int = 64, fps: int = 8, amplitude: tuple[float, float] = DEFAULT_AMPLITUDE,
                       shape_size: tuple[float, float] | None = None, workers: int = 1,
                       progress: bool = True) -> dict:
    """Write one synthetic benchmark to `out_dir` in the MSRVTT layout and return its counts.

    Every val/test video gets `captions_per_eval_video` captions from distinct templates, one csv row each
    (the MSRVTT reader groups rows by video: every caption a t2v query, multi-caption v2t).
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    plan = plan_synthetic(out_dir, seed=seed, num_train=num_train, num_val=num_val, num_test=num_test,
                          captions_per_train_video=captions_per_train_video,
                          captions_per_eval_video=captions_per_eval_video, shift=shift, image_size=image_size,
                          fps=fps, amplitude=amplitude, shape_size=shape_size)
    (out_dir / "videos").mkdir(parents=True, exist_ok=True)
    sentences, videos, meanings, split_rows, jobs = (plan.sentences, plan.videos, plan.meanings, plan.split_rows,
                                                     plan.jobs)

    chunks = [jobs[i:i + 64] for i in range(0, len(jobs), 64)]
    bar = tqdm(total=len(jobs), desc=f"synthetic ({shift})", unit="video", disable=not progress)
    if workers > 1 and len(chunks) > 1:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for done in pool.imap_unordered(_write_videos, chunks):
                bar.update(done)
    else:
        for chunk in chunks:
            bar.update(_write_videos(chunk))
    bar.close()

    train_ids = [v["video_id"] for v in videos if v["split"] == "train"]
    _write_text(out_dir / "MSRVTT_train.9k.csv", _csv_text(["video_id"], [[v] for v in train_ids]))
    for split, name in (("val", "MSRVTT_JSFUSION_val.csv"), ("test", "MSRVTT_JSFUSION_test.csv")):
        _write_text(out_dir / name, _csv_text(["key", "vid_key", "video_id", "sentence"], split_rows[split]))
    _write_text(out_dir / "MSRVTT_data.json", json.dumps({"videos": videos, "sentences": sentences}))
    _write_text(out_dir / "meanings.json", json.dumps(meanings, indent=1))
    return {"train_videos": num_train, "val_videos": num_val, "test_videos": num_test,
            "train_captions": num_train * captions_per_train_video, "val_captions": len(split_rows["val"]),
            "test_captions": len(split_rows["test"]), "shift": shift,
            "seconds": round(time.perf_counter() - started, 2)}
