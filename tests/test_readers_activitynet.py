"""ActivityNet Captions reader on small files in the documented json format (train.json / val_1.json)."""

import json

import pytest

from diffusionret.data.readers.activitynet import read_activitynet

TRAIN = {
    "v_QOlSCBRmfWY": {"duration": 82.73, "timestamps": [[0.83, 19.86], [17.37, 60.81]],
                      "sentences": [" A young woman is seen standing in a room.", "  She then begins dancing.  "]},
    "v_ehGHCYKzyZ8": {"duration": 61.0, "timestamps": [[0, 10]], "sentences": ["Two men play."]},
}


def test_paragraphs_spans_and_prefixed_ids(tmp_path):
    (tmp_path / "train.json").write_text(json.dumps(TRAIN))
    (tmp_path / "val_1.json").write_text(json.dumps({"v_x": {"duration": 10.0, "sentences": ["One."]}}))
    train = read_activitynet(tmp_path, "train")
    assert train.video_ids == ("v_QOlSCBRmfWY", "v_ehGHCYKzyZ8")
    assert train.captions == ("A young woman is seen standing in a room. She then begins dancing.", "Two men play.")
    assert train.caption_video == (0, 1)
    assert train.spans == {"v_QOlSCBRmfWY": (0.0, 83.0), "v_ehGHCYKzyZ8": (0.0, 61.0)}  # [0, ceil(duration)]
    test = read_activitynet(tmp_path, "test")  # the papers' test set is val_1
    assert test.video_ids == ("v_x",) and test.spans == {"v_x": (0.0, 10.0)}


def test_no_validation_file_and_bad_entries(tmp_path):
    with pytest.raises(ValueError, match="carve one from train"):
        read_activitynet(tmp_path, "val")
    (tmp_path / "val_2.json").write_text(json.dumps({"v_y": {"duration": 5.0, "sentences": ["  "]}}))
    with pytest.raises(ValueError, match="'v_y' has no sentence"):
        read_activitynet(tmp_path, "val", source_split="val_2")
    (tmp_path / "val_2.json").write_text(json.dumps({"v_y": {"sentences": ["a"]}}))
    with pytest.raises(ValueError, match="lacks 'sentences' or 'duration'"):
        read_activitynet(tmp_path, "val", source_split="val_2")
    with pytest.raises(FileNotFoundError, match="captions.zip"):
        read_activitynet(tmp_path, "train")
