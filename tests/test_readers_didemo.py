"""DiDeMo reader on the real test_data.json (LocalizingMoments): ids with extensions, paragraphs, moment spans."""

import json
import shutil

import pytest

from diffusionret.data.readers.didemo import read_didemo


@pytest.fixture(scope="module")
def didemo(shared_root):
    return shared_root / "real-annotations" / "didemo"


def test_real_test_split_paragraphs_and_spans(didemo):
    moments = json.loads((didemo / "test_data.json").read_text())
    assert len(moments) == 4021
    order, texts, chunks = [], {}, {}
    for m in moments:  # the grouping written out independently
        if m["video"] not in texts:
            order.append(m["video"])
            texts[m["video"]] = []
            chunks[m["video"]] = []
        texts[m["video"]].append(m["description"].strip())
        for start, end in m["times"]:
            chunks[m["video"]] += [start, end]
    test = read_didemo(didemo, "test")
    assert test.num_videos == test.num_captions == 1037 == len(order)
    assert test.video_ids == tuple(order)
    assert test.caption_video == tuple(range(1037))
    for video, paragraph in zip(test.video_ids, test.captions):
        assert paragraph == " ".join(" ".join(t.split()) for t in texts[video])
        assert test.spans[video] == (5.0 * min(chunks[video]), 5.0 * (max(chunks[video]) + 1))
    # read by hand in the file: the first video's chunks run 0..5 -> [0, 30] s; the second's 0..4 -> [0, 25] s
    assert test.video_ids[:2] == ("26292851@N04_4253489686_265c3c8051.m4v", "51035693821@N01_7071386095_a7350f43e0.mpg")
    assert [test.spans[v] for v in test.video_ids[:2]] == [(0.0, 30.0), (0.0, 25.0)]
    assert test.captions[1].startswith("person in white is backing up. the black tie is visible")
    assert any(v.endswith(".") for v in test.video_ids)  # ids keep even a bare trailing dot


def test_list_file_filters_and_orders(didemo, tmp_path):
    shutil.copy(didemo / "test_data.json", tmp_path / "test_data.json")
    full = read_didemo(didemo, "test")
    chosen = [full.video_ids[5], full.video_ids[2]]
    (tmp_path / "test_list.txt").write_text("\n".join(chosen) + "\n")
    listed = read_didemo(tmp_path, "test")
    assert listed.video_ids == tuple(chosen)
    assert listed.captions == (full.captions[5], full.captions[2])
    (tmp_path / "test_list.txt").write_text(chosen[0].rsplit(".", 1)[0] + "\n")  # id without its extension
    with pytest.raises(ValueError, match="must include the original extension"):
        read_didemo(tmp_path, "test")


def test_malformed_moments(tmp_path):
    (tmp_path / "val_data.json").write_text(json.dumps([{"video": "a.mov", "description": "x"}]))
    with pytest.raises(ValueError, match="moment 0 lacks"):
        read_didemo(tmp_path, "val")
    with pytest.raises(FileNotFoundError, match="train_data.json"):
        read_didemo(tmp_path, "train")
