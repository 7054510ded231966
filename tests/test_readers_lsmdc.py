"""LSMDC reader on small files in the documented tab-separated format (the real ones need MPII's permission)."""

import pytest

from diffusionret.data.readers.lsmdc import BROKEN_CLIPS, read_lsmdc

TRAIN_ROWS = [  # clip_id, start_aligned, end_aligned, start_extracted, end_extracted, sentence
    ("0001_American_Beauty_00.00.51.926-00.00.54.129", "00.00.51.926", "00.00.54.129", "00.00.51.000",
     "00.00.55.000", "SOMEONE looks at the alarm clock."),
    ("0001_American_Beauty_00.00.56.000-00.00.58.000", "00.00.56.000", "00.00.58.000", "00.00.56.000",
     "00.00.58.000", "He turns it off."),
    ("0017_Pianist_00.23.28.872-00.23.34.843", "a", "b", "c", "d", "A broken clip."),
    ("0001_American_Beauty_00.00.51.926-00.00.54.129", "a", "b", "c", "d", "A second sentence\tafter a tab."),
]


def write(path, rows):
    path.write_text("".join("\t".join(row) + "\n" for row in rows) + "\n")


def test_training_rows_grouped_by_clip_broken_clips_skipped(tmp_path):
    write(tmp_path / "LSMDC16_annos_training.csv", TRAIN_ROWS)
    train = read_lsmdc(tmp_path, "train")
    assert train.video_ids == ("0001_American_Beauty_00.00.51.926-00.00.54.129",
                               "0001_American_Beauty_00.00.56.000-00.00.58.000")
    assert train.captions == ("SOMEONE looks at the alarm clock.", "He turns it off.",
                              "A second sentence after a tab.")
    assert train.caption_video == (0, 1, 0)
    kept = read_lsmdc(tmp_path, "train", skip_broken=False)
    assert "0017_Pianist_00.23.28.872-00.23.34.843" in kept.video_ids and kept.num_captions == 4
    assert len(BROKEN_CLIPS) == 6


def test_test_file_has_the_real_name_and_one_caption_per_clip(tmp_path):
    rows = [(f"1004_Juno_00.00.{i:02d}.000-00.00.{i + 1:02d}.000", "a", "b", "c", "d", f"caption {i}")
            for i in range(5)]
    write(tmp_path / "LSMDC16_challenge_1000_publictect.csv", rows)
    test = read_lsmdc(tmp_path, "test")
    assert test.video_ids == tuple(r[0] for r in rows) and test.captions == tuple(r[5] for r in rows)
    assert read_lsmdc(tmp_path, "val", source_split="test_1000").split == "val"


def test_malformed_line_names_file_and_line(tmp_path):
    (tmp_path / "LSMDC16_annos_val.csv").write_text("a\tb\tc\td\te\tok\nclip_only\tx\n")
    with pytest.raises(ValueError, match=r"LSMDC16_annos_val.csv:2: expected 6 tab-separated fields"):
        read_lsmdc(tmp_path, "val")
    with pytest.raises(FileNotFoundError, match="MPII"):
        read_lsmdc(tmp_path, "train")
    with pytest.raises(ValueError, match="choose one of training, val, test_1000"):
        read_lsmdc(tmp_path, "test", source_split="public_test")
