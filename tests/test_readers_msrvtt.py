"""MSRVTT reader on the real 1k-A test csv and 9k train csv (captions json generated for the real ids), 7k option."""

import csv
import json
import shutil

import pytest

from diffusionret.data.readers import DEFAULT_SPLITS, SPLIT_NAMES, read_split
from diffusionret.data.readers.msrvtt import read_msrvtt


@pytest.fixture(scope="module")
def msrvtt(shared_root, tmp_path_factory):
    """The two real csvs plus a generated MSRVTT_data.json: 2 captions per video id of the train csv + 1 other."""
    root = tmp_path_factory.mktemp("msrvtt")
    real = shared_root / "real-annotations" / "msrvtt"
    for name in ("MSRVTT_JSFUSION_test.csv", "MSRVTT_train.9k.csv"):
        shutil.copy(real / name, root / name)
    with (real / "MSRVTT_train.9k.csv").open() as f:
        train_ids = [row["video_id"] for row in csv.DictReader(f)]
    sentences = [{"video_id": v, "caption": f"caption {k} of {v}", "sen_id": 0} for k in range(2) for v in train_ids]
    sentences.append({"video_id": "video7020", "caption": "a 1k-A test video's caption", "sen_id": 0})
    (root / "MSRVTT_data.json").write_text(json.dumps({"sentences": sentences}))
    return root, train_ids


def test_real_1k_a_test_csv_has_1000_pairs(msrvtt):
    root, _ = msrvtt
    with (root / "MSRVTT_JSFUSION_test.csv").open() as f:
        rows = list(csv.DictReader(f))
    test = read_split("msrvtt", root, "test", source_split="1k-A")
    assert test.num_videos == test.num_captions == 1000
    assert list(zip(test.video_ids, test.captions)) == [(r["video_id"], r["sentence"]) for r in rows]


def test_real_9k_train_csv_has_9000_videos_with_every_caption(msrvtt):
    root, train_ids = msrvtt
    train = read_msrvtt(root, "train", source_split="9k")
    assert len(train_ids) == 9000 and train.video_ids == tuple(train_ids)
    assert train.num_captions == 18000 and "video7020" not in train.video_ids  # its caption is left out
    assert train.captions[0] == f"caption 0 of {train_ids[0]}" and train.caption_video[9000] == 0


def test_7k_split_reads_its_own_csv(msrvtt, tmp_path):
    root, train_ids = msrvtt
    for name in ("MSRVTT_data.json", "MSRVTT_JSFUSION_test.csv"):
        shutil.copy(root / name, tmp_path / name)
    (tmp_path / "MSRVTT_train.7k.csv").write_text("video_id\n" + "".join(f"{v}\n" for v in train_ids[:7]))
    train = read_msrvtt(tmp_path, "train", source_split="7k")
    assert train.video_ids == tuple(train_ids[:7]) and train.num_captions == 14
    with pytest.raises(FileNotFoundError, match="MSRVTT_train.9k.csv"):
        read_msrvtt(tmp_path, "train", source_split="9k")
    with pytest.raises(ValueError, match="unknown MSRVTT split 'full'"):
        read_msrvtt(tmp_path, "test", source_split="full")


def test_registry_tables_name_every_reader():
    assert set(SPLIT_NAMES) == set(DEFAULT_SPLITS) == {"msrvtt", "msvd", "lsmdc", "activitynet", "didemo"}
    for reader, defaults in DEFAULT_SPLITS.items():
        assert set(defaults) == {"train", "val", "test"}
        assert all(name in SPLIT_NAMES[reader] for name in defaults.values() if name)
