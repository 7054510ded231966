"""MSRVTT reader and the reader registry: generated data, the real annotation csvs, malformed files."""

import csv
import json
import shutil
from pathlib import Path

import pytest

from diffusionret.data.readers import READERS, read_split
from diffusionret.data.readers.msrvtt import read_msrvtt
from diffusionret.data.synthetic import generate_synthetic


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("msrvtt") / "synthetic"
    generate_synthetic(out, seed=11, num_train=5, num_val=2, num_test=3, captions_per_train_video=3, progress=False)
    return out


def pairs(split) -> list[tuple[str, str]]:
    """(video id, caption) of every caption of a SplitAnnotations."""
    return [(split.video_ids[v], c) for c, v in zip(split.captions, split.caption_video)]


def raw_rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def copy_bench(bench: Path, to: Path) -> Path:
    for name in ("MSRVTT_train.9k.csv", "MSRVTT_JSFUSION_val.csv", "MSRVTT_JSFUSION_test.csv", "MSRVTT_data.json"):
        to.mkdir(exist_ok=True)
        shutil.copy(bench / name, to / name)
    return to


def test_train_has_every_caption_of_train_videos(bench):
    train = read_msrvtt(bench, "train", benchmark="synthetic")
    assert (train.benchmark, train.split) == ("synthetic", "train")
    assert train.video_ids == tuple(f"video{i}" for i in range(5))
    sentences = json.loads((bench / "MSRVTT_data.json").read_text())["sentences"]
    expected = [(s["video_id"], s["caption"]) for s in sentences if int(s["video_id"][5:]) < 5]
    assert len(expected) == 15 and pairs(train) == expected


def test_test_and_val_follow_csv_rows(bench):
    for split, name in (("test", "MSRVTT_JSFUSION_test.csv"), ("val", "MSRVTT_JSFUSION_val.csv")):
        rows = raw_rows(bench / name)
        annotations = read_msrvtt(bench, split)
        assert annotations.video_ids == tuple(r["video_id"] for r in rows)
        assert pairs(annotations) == [(r["video_id"], r["sentence"]) for r in rows]
        assert annotations.caption_video == tuple(range(len(rows)))


def test_csv_with_repeated_video_groups_its_captions(tmp_path):
    (tmp_path / "MSRVTT_JSFUSION_test.csv").write_text(
        "key,vid_key,video_id,sentence\nret0,m1,v1,a\nret1,m2,v2,b\nret2,m1,v1,c\n")
    test = read_msrvtt(tmp_path, "test")
    assert test.video_ids == ("v1", "v2") and test.caption_video == (0, 1, 0) and test.captions == ("a", "b", "c")


def test_val_carved_from_train_when_no_val_csv(bench, tmp_path):
    root = copy_bench(bench, tmp_path / "carve")
    (root / "MSRVTT_JSFUSION_val.csv").unlink()
    val = read_msrvtt(root, "val", val_fraction_videos=2)
    train = read_msrvtt(root, "train", val_fraction_videos=2)
    all_train = [f"video{i}" for i in range(5)]
    assert len(val.video_ids) == 2 and not set(val.video_ids) & set(train.video_ids)
    assert sorted(val.video_ids + train.video_ids) == sorted(all_train)
    assert val.video_ids == read_msrvtt(root, "val", val_fraction_videos=2).video_ids  # deterministic
    sentences = json.loads((root / "MSRVTT_data.json").read_text())["sentences"]
    first = {}
    for s in sentences:
        first.setdefault(s["video_id"], s["caption"])
    assert pairs(val) == [(v, first[v]) for v in val.video_ids]
    assert len(train.captions) == 3 * 3
    with pytest.raises(FileNotFoundError, match="val_fraction_videos"):
        read_msrvtt(root, "val")


def test_val_csv_wins_over_carving(bench):
    assert read_msrvtt(bench, "val", val_fraction_videos=2).video_ids == ("video5", "video6")
    assert len(read_msrvtt(bench, "train", val_fraction_videos=2).video_ids) == 5


def test_registry(bench):
    assert READERS["msrvtt"] is read_msrvtt
    assert read_split("msrvtt", bench, "test") == read_msrvtt(bench, "test")
    with pytest.raises(KeyError, match="msrvtt"):
        read_split("nope", bench, "test")
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        read_split("msrvtt", bench, "dev")


def test_missing_column_names_file_and_column(bench, tmp_path):
    root = copy_bench(bench, tmp_path / "bad")
    (root / "MSRVTT_JSFUSION_test.csv").write_text("key,vid_key,video_id\nret0,m0,video0\n")
    with pytest.raises(ValueError, match=r"MSRVTT_JSFUSION_test\.csv.*sentence"):
        read_msrvtt(root, "test")
    (root / "MSRVTT_train.9k.csv").write_text("id\nvideo0\n")
    with pytest.raises(ValueError, match=r"MSRVTT_train\.9k\.csv.*video_id"):
        read_msrvtt(root, "train")


def test_json_without_sentences_names_file(bench, tmp_path):
    root = copy_bench(bench, tmp_path / "bad")
    (root / "MSRVTT_data.json").write_text(json.dumps({"videos": []}))
    with pytest.raises(ValueError, match=r"MSRVTT_data\.json.*'sentences'"):
        read_msrvtt(root, "train")


def test_train_video_without_caption_is_named(bench, tmp_path):
    root = copy_bench(bench, tmp_path / "bad")
    data = json.loads((root / "MSRVTT_data.json").read_text())
    data["sentences"] = [s for s in data["sentences"] if s["video_id"] != "video3"]
    (root / "MSRVTT_data.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"MSRVTT_data\.json: 1 train videos have no caption.*video3"):
        read_msrvtt(root, "train")


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="MSRVTT_JSFUSION_test.csv"):
        read_msrvtt(tmp_path, "test")


@pytest.mark.shared
def test_real_jsfusion_test_csv(shared_root):
    root = shared_root / "real-annotations" / "msrvtt"
    test = read_msrvtt(root, "test")
    assert test.num_videos == 1000 and test.num_captions == 1000
    assert (test.video_ids[0], test.captions[0]) == ("video9770", "a person is connecting something to system")
    assert test.caption_video == tuple(range(1000))


@pytest.mark.shared
def test_real_train_csv_with_a_small_json(shared_root, tmp_path):
    real = shared_root / "real-annotations" / "msrvtt"
    shutil.copy(real / "MSRVTT_train.9k.csv", tmp_path / "MSRVTT_train.9k.csv")
    with (real / "MSRVTT_train.9k.csv").open() as f:
        train_ids = [line.strip() for line in f][1:]
    assert len(train_ids) == 9000 and "video9770" not in train_ids
    # two captions per train video, interleaved, plus captions of test videos that must be ignored
    sentences = [{"video_id": v, "caption": f"{v} caption {k}", "sen_id": 0} for k in range(2) for v in train_ids]
    sentences += [{"video_id": "video9770", "caption": "a test video", "sen_id": 0}]
    (tmp_path / "MSRVTT_data.json").write_text(json.dumps({"sentences": sentences}))
    train = read_msrvtt(tmp_path, "train")
    assert train.num_videos == 9000 and train.num_captions == 18000
    assert train.video_ids == tuple(train_ids)
    assert all(caption.startswith(f"{video} ") for video, caption in pairs(train))
    carved = read_msrvtt(tmp_path, "val", val_fraction_videos=500)
    assert carved.num_videos == carved.num_captions == 500
    assert read_msrvtt(tmp_path, "train", val_fraction_videos=500).num_captions == 2 * 8500
