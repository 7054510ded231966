"""The embedded benchmark generator: determinism, unique test meanings, captions, motions, shifts, decoding."""

import csv
import json
import re
from pathlib import Path

import decord
import numpy as np
import pytest

from diffusionret.data import synthetic
from diffusionret.data.synthetic import generate_synthetic

# Written out here, independently of the module's tables.
COLOUR_WORDS = {"red": {"red"}, "green": {"green"}, "blue": {"blue"}, "yellow": {"yellow"},
                "purple": {"purple", "violet"}, "white": {"white"}}
SHAPE_WORDS = {"circle": {"circle", "disc"}, "square": {"square", "box"}, "triangle": {"triangle"},
               "cross": {"cross", "plus sign"}}
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}
UNIT = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


def generate(out: Path, seed: int = 5, shift: str = "none", **sizes) -> Path:
    counts = {"num_train": 4, "num_val": 3, "num_test": 5, "captions_per_train_video": 2, **sizes}
    generate_synthetic(out, seed=seed, shift=shift, progress=False, **counts)
    return out


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def all_frames(path: Path) -> np.ndarray:
    reader = decord.VideoReader(str(path))
    return reader.get_batch(list(range(len(reader)))).asnumpy()


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("synthetic") / "a")


TEXT_FILES = ("MSRVTT_train.9k.csv", "MSRVTT_JSFUSION_val.csv", "MSRVTT_JSFUSION_test.csv", "MSRVTT_data.json",
              "meanings.json")


def test_same_seed_gives_identical_files_and_frames(bench, tmp_path):
    again = generate(tmp_path / "b")
    for name in TEXT_FILES:
        assert (bench / name).read_bytes() == (again / name).read_bytes(), name
    for video in sorted((bench / "videos").glob("*.mp4")):
        np.testing.assert_array_equal(all_frames(video), all_frames(again / "videos" / video.name))


def test_different_seed_differs(bench, tmp_path):
    other = generate(tmp_path / "c", seed=6)
    assert (bench / "MSRVTT_data.json").read_bytes() != (other / "MSRVTT_data.json").read_bytes()
    assert (bench / "meanings.json").read_bytes() != (other / "meanings.json").read_bytes()
    first = all_frames(bench / "videos" / "video0.mp4")
    second = all_frames(other / "videos" / "video0.mp4")
    assert first.shape != second.shape or not np.array_equal(first, second)


def test_worker_count_does_not_change_output(tmp_path):
    # 65 videos = two chunks of work, so workers=2 really runs a pool
    one = generate(tmp_path / "one", num_train=60, workers=1)
    two = generate(tmp_path / "two", num_train=60, workers=2)
    assert (one / "MSRVTT_data.json").read_bytes() == (two / "MSRVTT_data.json").read_bytes()
    for name in ("video0.mp4", "video61.mp4"):
        np.testing.assert_array_equal(all_frames(one / "videos" / name), all_frames(two / "videos" / name))


def test_layout_and_counts(bench):
    assert [r["video_id"] for r in read_csv(bench / "MSRVTT_train.9k.csv")] == [f"video{i}" for i in range(4)]
    val, test = read_csv(bench / "MSRVTT_JSFUSION_val.csv"), read_csv(bench / "MSRVTT_JSFUSION_test.csv")
    assert [r["video_id"] for r in val] == ["video4", "video5", "video6"]
    assert [r["video_id"] for r in test] == [f"video{i}" for i in range(7, 12)]
    assert set(test[0]) == {"key", "vid_key", "video_id", "sentence"}
    data = json.loads((bench / "MSRVTT_data.json").read_text())
    per_video = {}
    for s in data["sentences"]:
        per_video.setdefault(s["video_id"], []).append(s["caption"])
    assert {v: len(c) for v, c in per_video.items()} == {**{f"video{i}": 2 for i in range(4)},
                                                         **{f"video{i}": 1 for i in range(4, 12)}}
    assert [s["sen_id"] for s in data["sentences"]] == list(range(16))
    for row in val + test:
        assert per_video[row["video_id"]] == [row["sentence"]]
    splits = {v["video_id"]: v["split"] for v in data["videos"]}
    assert [splits[f"video{i}"] for i in (0, 4, 7)] == ["train", "validate", "test"]
    assert sorted(p.name for p in (bench / "videos").iterdir()) == sorted(f"video{i}.mp4" for i in range(12))


def test_test_and_val_meanings_are_unique(tmp_path):
    out = generate(tmp_path / "u", num_train=0, num_val=30, num_test=40)
    meanings = json.loads((out / "meanings.json").read_text())
    for name in ("MSRVTT_JSFUSION_val.csv", "MSRVTT_JSFUSION_test.csv"):
        ids = [r["video_id"] for r in read_csv(out / name)]
        keys = [(meanings[v]["colour"], meanings[v]["shape"], meanings[v]["motion"]) for v in ids]
        assert len(set(keys)) == len(keys), name
    with pytest.raises(ValueError, match="num_test=385"):
        generate_synthetic(tmp_path / "x", seed=1, num_train=0, num_val=0, num_test=385,
                           captions_per_train_video=1, progress=False)


def test_meaning_space():
    assert len(synthetic.MOTIONS) == 16 and len(set(synthetic.MOTIONS)) == 16
    assert len(synthetic.MEANINGS) == 6 * 4 * 16 == len(set(synthetic.MEANINGS))


def test_captions_name_colour_shape_and_ordered_directions(bench):
    meanings = json.loads((bench / "meanings.json").read_text())
    data = json.loads((bench / "MSRVTT_data.json").read_text())
    for s in data["sentences"]:
        m, caption = meanings[s["video_id"]], s["caption"]
        assert any(re.search(rf"\b{w}\b", caption) for w in COLOUR_WORDS[m["colour"]]), caption
        assert any(re.search(rf"\b{w}\b", caption) for w in SHAPE_WORDS[m["shape"]]), caption
        said = re.findall(r"\b(left|right|up|down)", caption)
        parts = m["motion"].split("-")
        if "then" in parts:
            assert said == [parts[0], parts[2]], caption
        elif "back" in parts:
            assert said in ([parts[0]], [parts[0], OPPOSITE[parts[0]]]), caption
        else:
            assert said == [parts[0]], caption


def shape_track(frames: np.ndarray) -> np.ndarray:
    """(T, 2) centroid (x, y) of the pixels far from each frame's median (background) colour."""
    track = []
    for frame in frames.astype(float):
        distance = np.abs(frame - np.median(frame.reshape(-1, 3), axis=0)).sum(-1)
        ys, xs = np.nonzero(distance > 90)
        track.append((xs.mean(), ys.mean()))
    return np.array(track)


@pytest.mark.parametrize("amplitude", [(0.25, 0.35), (0.7, 0.7)])  # the original benchmark and the default
def test_rendered_motion_matches_meaning(tmp_path, amplitude):
    out = generate(tmp_path / "m", num_train=0, num_val=0, num_test=24, amplitude=amplitude)
    meanings = json.loads((out / "meanings.json").read_text())
    for video_id, m in meanings.items():
        track = shape_track(all_frames(out / "videos" / f"{video_id}.mp4"))
        middle = len(track) // 2
        first, second = track[middle] - track[0], track[-1] - track[middle]
        parts = m["motion"].split("-")
        along = lambda d, step: float(np.dot(UNIT[d], step))  # noqa: E731
        if "then" in parts:
            assert along(parts[0], first) > 5 and along(parts[2], second) > 5, (video_id, m, track)
        elif "back" in parts:
            assert along(parts[0], first) > 5 and np.abs(track[-1] - track[0]).max() < 3, (video_id, m, track)
        else:
            assert along(parts[0], first) > 5 and along(parts[0], second) > 5, (video_id, m, track)


def test_video_decodes_with_expected_size_and_length(bench):
    lengths = set()
    meanings = json.loads((bench / "meanings.json").read_text())
    for video in sorted((bench / "videos").glob("*.mp4")):
        reader = decord.VideoReader(str(video))
        assert reader.get_avg_fps() == 8
        assert 16 <= len(reader) <= 32  # 2-4 s at 8 fps
        assert reader[0].shape == (64, 64, 3)
        m = meanings[video.stem]
        rendered = synthetic.render_video((m["colour"], m["shape"], m["motion"]),
                                          [5, synthetic.SPLIT_CODES[split_of(video.stem)], index_of(video.stem), 1],
                                          textured=False, image_size=64, fps=8)
        assert len(reader) == len(rendered)  # the encoder kept every frame
        lengths.add(len(reader))
    assert len(lengths) > 1
    assert not list((bench / "videos").glob("*.tmp"))


def split_of(video_id: str) -> str:
    n = int(video_id[5:])
    return "train" if n < 4 else "val" if n < 7 else "test"


def index_of(video_id: str) -> int:
    n = int(video_id[5:])
    return n if n < 4 else n - 4 if n < 7 else n - 7


def template_regex(template: str) -> re.Pattern:
    parts = re.split(r"\{\w+\}", template)
    return re.compile("^" + "(.+)".join(re.escape(p) for p in parts) + "$")


@pytest.mark.parametrize("shift", ["text", "visual_text"])
def test_shifted_sets_use_only_unseen_templates(shift, tmp_path):
    assert not set(synthetic.SEEN_TEMPLATES) & set(synthetic.UNSEEN_TEMPLATES)
    seen = [template_regex(t) for t in synthetic.SEEN_TEMPLATES]
    unseen = [template_regex(t) for t in synthetic.UNSEEN_TEMPLATES]
    out = generate(tmp_path / shift, shift=shift, num_train=2, num_val=4, num_test=12)
    for name in ("MSRVTT_JSFUSION_val.csv", "MSRVTT_JSFUSION_test.csv"):
        for row in read_csv(out / name):
            assert not any(r.match(row["sentence"]) for r in seen), row
            assert any(r.match(row["sentence"]) for r in unseen), row
    data = json.loads((out / "MSRVTT_data.json").read_text())
    train = [s["caption"] for s in data["sentences"] if s["video_id"] in ("video0", "video1")]
    assert all(any(r.match(c) for r in seen) for c in train)


def test_unshifted_captions_use_seen_templates(bench):
    seen = [template_regex(t) for t in synthetic.SEEN_TEMPLATES]
    data = json.loads((bench / "MSRVTT_data.json").read_text())
    assert all(any(r.match(s["caption"]) for r in seen) for s in data["sentences"])


def background_spread(video: Path) -> float:
    """Largest per-channel median absolute deviation of the first frame (the shape is too small to matter)."""
    frame = all_frames(video)[0].astype(float)
    pixels = frame.reshape(-1, 3)
    return float(np.median(np.abs(pixels - np.median(pixels, axis=0)), axis=0).max())


def test_visual_shift_textures_only_val_and_test(tmp_path):
    text = generate(tmp_path / "t", shift="text", num_train=2, num_val=0, num_test=4)
    visual = generate(tmp_path / "v", shift="visual_text", num_train=2, num_val=0, num_test=4)
    plain = [background_spread(text / "videos" / f"video{i}.mp4") for i in range(6)]
    textured = [background_spread(visual / "videos" / f"video{i}.mp4") for i in range(2, 6)]
    train_of_visual = [background_spread(visual / "videos" / f"video{i}.mp4") for i in range(2)]
    assert max(plain + train_of_visual) < 1.5 < 3 < min(textured), (plain, train_of_visual, textured)
    assert all(np.median(all_frames(visual / "videos" / f"video{i}.mp4")) < 80 for i in range(2, 6))  # dark


def test_unknown_shift_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="unknown shift 'bright'"):
        generate(tmp_path / "x", shift="bright")


@pytest.mark.parametrize("shift", ["none", "text"])
def test_eval_videos_have_five_captions_from_distinct_templates_read_as_multi_caption(shift, tmp_path):
    from diffusionret.data.readers.msrvtt import read_msrvtt

    templates = synthetic.SEEN_TEMPLATES if shift == "none" else synthetic.UNSEEN_TEMPLATES
    patterns = [template_regex(t) for t in templates]
    out = generate(tmp_path / shift, shift=shift, num_train=2, num_val=3, num_test=8, captions_per_eval_video=5)
    meanings = json.loads((out / "meanings.json").read_text())
    for role, name in (("val", "jsfusion_val"), ("test", "1k-A")):
        split = read_msrvtt(out, role, source_split=name)
        assert split.num_videos == (3 if role == "val" else 8) and split.num_captions == 5 * split.num_videos
        assert np.bincount(split.caption_video).tolist() == [5] * split.num_videos
        rows = [r for r in read_csv(out / f"MSRVTT_JSFUSION_{role}.csv")]
        for video_index, video_id in enumerate(split.video_ids):
            captions = [c for c, v in zip(split.captions, split.caption_video) if v == video_index]
            assert captions == [r["sentence"] for r in rows if r["video_id"] == video_id]
            used = [next(i for i, p in enumerate(patterns) if p.match(c)) for c in captions]
            assert sorted(used) == list(range(5)), captions  # every template once: disjoint within the video
            meaning = meanings[video_id]
            for caption in captions:  # each caption names its own video's colour and shape
                assert any(w in caption for w in COLOUR_WORDS[meaning["colour"]]), caption
                assert any(re.search(rf"\b{w}\b", caption) for w in SHAPE_WORDS[meaning["shape"]]), caption
        described = [tuple(meanings[v].values()) for v in split.video_ids]
        assert len(set(described)) == len(described)  # no two videos of a split share a caption meaning


def test_more_eval_captions_than_templates_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="captions_per_eval_video=6"):
        generate(tmp_path / "x", captions_per_eval_video=6)


@pytest.mark.parametrize("amplitude", [(0.25, 0.25), (0.55, 0.55)])
def test_amplitude_sets_how_far_a_shape_travels(amplitude):
    """A single-direction path spans 1.4 x amplitude x frame side, a leg of a turning path amplitude x side
    (measured on the drawn pixels; the square fills its box, so its centroid moves exactly as it does)."""
    side = 64
    for motion, legs in (("right", [("right", 1.4)]), ("up-then-left", [("up", 1.0), ("left", 1.0)])):
        frames = synthetic.render_video(("white", "square", motion), [3], textured=False, image_size=side, fps=8,
                                        amplitude=amplitude)
        track = shape_track(frames)
        middle = (len(track) - 1) / 2
        if len(legs) == 1:
            travelled = [float(np.dot(UNIT[legs[0][0]], track[-1] - track[0]))]
        else:  # the turn happens at the middle time (between frames when the count is even)
            turn = np.interp(middle, np.arange(len(track)), track[:, 0]), np.interp(middle, np.arange(len(track)),
                                                                                    track[:, 1])
            turn = np.array(turn)
            travelled = [float(np.dot(UNIT[legs[0][0]], turn - track[0])),
                         float(np.dot(UNIT[legs[1][0]], track[-1] - turn))]
        for (_, factor), distance in zip(legs, travelled):
            assert abs(distance - factor * amplitude[0] * side) <= 1.5, (motion, amplitude, distance)



@pytest.mark.parametrize("shape_size, side_px", [((0.25, 0.25), 16), ((0.4, 0.4), 25)])
def test_shape_size_sets_the_drawn_square(shape_size, side_px):
    """A square of shape_size x 64 px (floored) fills exactly side_px^2 pixels of every frame."""
    frames = synthetic.render_video(("white", "square", "left"), [4], textured=False, image_size=64, fps=8,
                                    shape_size=shape_size)
    for frame in frames.astype(int):
        background = np.median(frame.reshape(-1, 3), axis=0)
        assert int((np.abs(frame - background).sum(-1) > 90).sum()) == side_px ** 2
