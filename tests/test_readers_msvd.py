"""MSVD reader on the real split lists and captions_msvd.json (../shared/real-annotations/msvd) and on a
raw-captions.pkl made from them."""

import json
import pickle
import shutil

import pytest

from diffusionret.data.readers import read_split
from diffusionret.data.readers.msvd import load_captions, read_msvd


@pytest.fixture(scope="module")
def msvd(shared_root):
    return shared_root / "real-annotations" / "msvd"


def lines(path):
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def test_real_files_give_the_standard_split(msvd):
    captions = json.loads((msvd / "captions_msvd.json").read_text())
    assert len(captions) == 1970 and sum(len(v) for v in captions.values()) == 80827
    sizes = {}
    for split in ("train", "val", "test"):
        annotations = read_msvd(msvd, split)
        ids = lines(msvd / f"{split}_list.txt")
        assert annotations.video_ids == tuple(ids) and annotations.split == split
        expected = [(video, " ".join(c.split())) for video in ids for c in captions[video]]
        got = [(annotations.video_ids[r], c) for c, r in zip(annotations.captions, annotations.caption_video)]
        assert got == expected
        sizes[split] = annotations.num_videos
    assert sizes == {"train": 1200, "val": 100, "test": 670}


def test_raw_captions_pickle_gives_the_same_captions(msvd, tmp_path):
    captions = json.loads((msvd / "captions_msvd.json").read_text())
    for name in ("train_list.txt", "val_list.txt", "test_list.txt"):
        shutil.copy(msvd / name, tmp_path / name)
    test_ids = lines(msvd / "test_list.txt")  # the test videos only, to keep the test fast
    with (tmp_path / "raw-captions.pkl").open("wb") as f:
        pickle.dump({video: [c.split() for c in captions[video]] for video in test_ids}, f, protocol=2)
    from_pickle, from_json = read_msvd(tmp_path, "test"), read_msvd(msvd, "test")
    assert from_pickle.captions == from_json.captions and from_pickle.caption_video == from_json.caption_video
    assert load_captions(tmp_path)[1].name == "raw-captions.pkl"


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickle_with_code_is_refused(tmp_path):
    (tmp_path / "test_list.txt").write_text("a\n")
    (tmp_path / "raw-captions.pkl").write_bytes(pickle.dumps({"a": [Evil()]}))
    with pytest.raises(pickle.UnpicklingError, match="refusing to load builtins.print"):
        read_msvd(tmp_path, "test")


def test_uncaptioned_or_duplicated_ids_and_bad_split(tmp_path):
    (tmp_path / "captions_msvd.json").write_text(json.dumps({"a": ["x y"], "b": ["z"]}))
    (tmp_path / "test_list.txt").write_text("a\nc\n")
    with pytest.raises(ValueError, match=r"1 videos of test_list.txt have no caption .*'c'"):
        read_msvd(tmp_path, "test")
    (tmp_path / "test_list.txt").write_text("a\nb\na\n")
    with pytest.raises(ValueError, match="duplicate video ids"):
        read_msvd(tmp_path, "test")
    with pytest.raises(ValueError, match="unknown MSVD split 'dev'"):
        read_split("msvd", tmp_path, "val", source_split="dev")
    with pytest.raises(FileNotFoundError, match="val_list.txt"):
        read_msvd(tmp_path, "val")
