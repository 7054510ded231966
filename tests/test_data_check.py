"""Validation before heavy work: carving, id -> file matching, missing videos, and `diffusionret data check`."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from diffusionret.cli import main
from diffusionret.data.check import (AmbiguousVideos, MissingVideos, carve_validation, check_benchmark,
                                     enforce_complete, match_videos)
from diffusionret.data.records import SplitAnnotations
from diffusionret.data.synthetic import write_mp4
from diffusionret.data.videos import index_video_files

REPO = Path(__file__).resolve().parents[1]


def tiny_mp4(path: Path, frames: int = 4) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_mp4(path, np.full((frames, 16, 16, 3), 90, np.uint8), fps=4)
    return path


def test_carve_takes_evenly_spaced_videos_with_their_first_caption():
    ids = tuple(f"v{i}" for i in range(10))
    captions = tuple(f"{v}-{k}" for k in range(2) for v in ids)  # every video twice, interleaved
    train = SplitAnnotations("b", "train", ids, captions, tuple(list(range(10)) * 2), {"v0": (0.0, 3.0)})
    rest, val = carve_validation(train, 4)
    positions = [round(i * 9 / 3) for i in range(4)]  # 0, 3, 6, 9
    assert val.video_ids == tuple(f"v{p}" for p in positions) and val.split == "val"
    assert val.captions == tuple(f"v{p}-0" for p in positions) and val.caption_video == (0, 1, 2, 3)
    assert val.spans == {"v0": (0.0, 3.0)} and rest.spans == {}
    assert rest.video_ids == tuple(f"v{i}" for i in range(10) if i not in positions)
    assert [(rest.video_ids[r], c) for c, r in zip(rest.captions, rest.caption_video)] == \
        [(c.split("-")[0], c) for c in captions if int(c[1]) not in positions]
    with pytest.raises(ValueError, match="between 1 and 9"):
        carve_validation(train, 10)


def test_matching_rules_extension_ids_prefixes_and_ambiguity(tmp_path):
    for name in ("a.m4v.mp4", "b.avi", "QOlSCBRmfWY.mp4", "v_x.mkv", "c.mov.mp4", "c.mov", "d.mp4"):
        (tmp_path / "videos" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "videos" / name).write_bytes(b"")
    index = index_video_files(tmp_path)
    files, missing = match_videos(["a.m4v", "b.avi", "v_QOlSCBRmfWY", "v_x", "d", "zz", "a."], index, id_prefix="v_")
    assert files == {"a.m4v": tmp_path / "videos/a.m4v.mp4", "b.avi": tmp_path / "videos/b.avi",
                     "v_QOlSCBRmfWY": tmp_path / "videos/QOlSCBRmfWY.mp4", "v_x": tmp_path / "videos/v_x.mkv",
                     "d": tmp_path / "videos/d.mp4"}
    assert missing == ["zz", "a."]
    assert match_videos(["v_QOlSCBRmfWY"], index)[1] == ["v_QOlSCBRmfWY"]  # no prefix rule without id_prefix
    with pytest.raises(AmbiguousVideos) as error:
        match_videos(["c.mov"], index)
    assert f"(c.mov: {tmp_path / 'videos/c.mov.mp4'}, {tmp_path / 'videos/c.mov'})" in str(error.value)


@pytest.fixture()
def msvd_like(tmp_path):
    """A 3-video MSVD-format benchmark: train 2 videos (2 captions each), test 1 video (3 captions)."""
    root = tmp_path / "msvd"
    root.mkdir()
    (root / "train_list.txt").write_text("a_1_2\nb_3_4\n")
    (root / "val_list.txt").write_text("b_3_4\n")
    (root / "test_list.txt").write_text("c_5_6\n")
    (root / "captions_msvd.json").write_text(json.dumps({"a_1_2": ["a one", "a two"], "b_3_4": ["b one", "b two"],
                                                         "c_5_6": ["c one", "c two", "c three"]}))
    for video in ("a_1_2", "b_3_4", "c_5_6"):
        (root / "videos" / f"{video}.avi").parent.mkdir(exist_ok=True)
        (root / "videos" / f"{video}.avi").write_bytes(b"")
    return root


SPLITS = {"train": "train", "val": "val", "test": "test"}


def test_missing_video_is_an_error_listing_it_unless_allowed(msvd_like, tmp_path):
    (msvd_like / "videos" / "a_1_2.avi").unlink()
    check = check_benchmark(msvd_like, benchmark="msvd", reader="msvd", splits=SPLITS)
    assert check.missing == {"train": ["a_1_2"], "val": [], "test": []}
    assert check.counts()["train"] == {"videos": 2, "captions": 4, "missing_videos": 1, "missing_captions": 2}
    listing = tmp_path / "out" / "missing_videos.txt"
    with pytest.raises(MissingVideos) as error:
        enforce_complete(check, allow_missing=False, missing_file=listing, where=str(msvd_like))
    message = str(error.value)
    assert "1 of 3 annotated videos have no file" in message and "a_1_2" in message and str(listing) in message
    assert "data.allow_missing" in message
    assert listing.read_text() == "train\ta_1_2\n"
    kept = enforce_complete(check, allow_missing=True, missing_file=None, where="x")
    assert kept["train"].video_ids == ("b_3_4",) and kept["train"].captions == ("b one", "b two")
    assert kept["test"] == check.splits["test"]
    (msvd_like / "videos" / "c_5_6.avi").unlink()
    check = check_benchmark(msvd_like, benchmark="msvd", reader="msvd", splits=SPLITS)
    with pytest.raises(MissingVideos, match="every video of the test split"):
        enforce_complete(check, allow_missing=True, missing_file=None, where="x")


def run_cli(capsys, *args):
    code = main(["data", "check", "--params", str(REPO / "params.yaml"), *args])
    return code, capsys.readouterr()


def test_cli_counts_on_real_msvd_annotations_with_two_real_named_videos(shared_root, tmp_path, capsys):
    real = shared_root / "real-annotations" / "msvd"
    root = tmp_path / "msvd"
    shutil.copytree(real, root, ignore=shutil.ignore_patterns("*.md"))
    present = {"train": "-4wsuPCjDBc_5_15", "test": (root / "test_list.txt").read_text().split()[0]}
    for video in present.values():
        tiny_mp4(root / "videos" / f"{video}.avi")
    code, out = run_cli(capsys, "--benchmark", "msvd", "--root", str(root), "--json")
    result = json.loads(out.out)
    captions = json.loads((real / "captions_msvd.json").read_text())
    assert code == 1 and not result["complete"] and result["video_files"] == 2
    for split, total in (("train", 1200), ("val", 100), ("test", 670)):
        ids = (real / f"{split}_list.txt").read_text().split()
        found = [v for v in ids if v in present.values()]
        assert result["splits"][split] == {
            "videos": total, "captions": sum(len(captions[v]) for v in ids), "missing_videos": total - len(found),
            "missing_captions": sum(len(captions[v]) for v in ids if v not in found)}
    assert result["missing_videos"] == 1970 - 2 and present["test"] not in result["missing"]
    code, out = run_cli(capsys, "--benchmark", "msvd", "--root", str(root))
    assert code == 1 and "1,200" in out.out and "INCOMPLETE" in out.out


def test_cli_reports_unreadable_splits_and_a_complete_folder(shared_root, msvd_like, capsys):
    code, out = run_cli(capsys, "--benchmark", "didemo", "--root", str(shared_root / "real-annotations" / "didemo"),
                        "--json")
    result = json.loads(out.out)
    assert code == 1 and result["splits"]["test"]["videos"] == 1037 and result["splits"]["test"]["captions"] == 1037
    assert "train_data.json is missing" in result["splits"]["train"]["error"]
    code, out = run_cli(capsys, "--benchmark", "msvd", "--root", str(msvd_like))
    assert code == 0 and out.out.strip().endswith("complete")
    code, out = run_cli(capsys, "--benchmark", "nonexistent")
    assert code == 2 and "nonexistent" in out.err


def test_real_benchmark_settings_in_params_and_their_validation():
    import copy

    import yaml

    from diffusionret.config import ConfigError, params_from_dict

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    params = params_from_dict(copy.deepcopy(raw))
    expected = {"msrvtt": (32, 12), "lsmdc": (32, 12), "msvd": (32, 12), "activitynet": (64, 64), "didemo": (64, 64)}
    for name, (words, frames) in expected.items():
        bench = params.benchmarks[name]
        assert (bench.source, bench.reader, bench.max_words, bench.max_frames, bench.fps) == (name, name, words,
                                                                                              frames, 1.0)
        assert name not in params.train.benchmarks and name not in params.eval.benchmarks
    assert params.benchmarks["didemo"].clip_span_s == (0.0, 31.0)
    bad = [
        ("msvd", "splits", {"train": "train", "val": "dev", "test": "test"}, "benchmarks.msvd.splits.val", "dev",
         "one of train, val, test, "),
        ("msvd", "splits", {"train": "train", "test": "test"}, "benchmarks.msvd.splits", "train", "exactly the keys"),
        ("activitynet", "val_videos_from_train", 0, "benchmarks.activitynet.val_videos_from_train", "0",
         "carved from train"),
        ("msvd", "clip_span", "annotation", "benchmarks.msvd.clip_span", "annotation", "only activitynet, didemo"),
        ("didemo", "clip_span_s", [31.0, 0.0], "benchmarks.didemo.clip_span_s", "[31.0, 0.0]", "0 <= start < end"),
        ("msvd", "reader", "msrvtt", "benchmarks.msvd.reader", "msrvtt", "`msvd`"),
        ("lsmdc", "synthetic", {"seed": 0}, "benchmarks.lsmdc.synthetic", "...", "null for a real benchmark"),
    ]
    for name, key, value, path, shown, allowed in bad:
        mutated = copy.deepcopy(raw)
        mutated["benchmarks"][name][key] = value
        with pytest.raises(ConfigError) as error:
            params_from_dict(mutated)
        message = str(error.value)
        assert f"`{path}`" in message and shown in message and allowed in message, message
