"""Bad annotation files through the real `preprocess` stage, non-finite parameters, and splits that share videos
(`diffusionret data check`): every case ends in a message naming the file (row, field, key) and the fix."""

import json
from pathlib import Path

import pytest
from faultlib import edit_params, first_line, run_stage_in_process

from diffusionret.cli import main as cli

pytestmark = pytest.mark.faults

TRAIN = ["video1", "video2", "video3"]
TEST_HEADER = "key,vid_key,video_id,sentence\n"


def write_msrvtt(raw: Path, *, test_csv: bytes | None = None, sentences=None) -> None:
    """A 3+1-video MSRVTT-layout folder (annotations only: every case fails before any video is read)."""
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "MSRVTT_train.9k.csv").write_text("video_id\n" + "".join(f"{v}\n" for v in TRAIN))
    if sentences is None:
        sentences = [{"video_id": v, "caption": f"caption of {v}"} for v in TRAIN]
    (raw / "MSRVTT_data.json").write_text(json.dumps({"sentences": sentences}))
    (raw / "MSRVTT_JSFUSION_test.csv").write_bytes(
        test_csv if test_csv is not None else (TEST_HEADER + "ret0,msr9,video9,a man sings\n").encode())


BAD_FILES = {
    "test csv not UTF-8": (dict(test_csv=(TEST_HEADER + "ret0,msr9,video9,un caf\xe9\n").encode("latin-1")),
                           "MSRVTT_JSFUSION_test.csv", ("UTF-8", "line 2")),
    "`sentences` is a number": (dict(sentences=5), "MSRVTT_data.json", ("sentences", "a list")),
    "caption over 128 KiB in a csv": (dict(test_csv=(TEST_HEADER + "ret0,msr9,video9," + "a" * (129 << 10)
                                                     + "\n").encode()),
                                      "MSRVTT_JSFUSION_test.csv", ("line 2", "at most")),
    "caption over the limit in json": (dict(sentences=[{"video_id": v, "caption": "word " * 5000} for v in TRAIN]),
                                       "MSRVTT_data.json", ("sentences[0]", "field `caption`", "at most")),
    "null caption": (dict(sentences=[{"video_id": v, "caption": None} for v in TRAIN]),
                     "MSRVTT_data.json", ("sentences[0]", "field `caption`", "must be a string")),
    "integer caption": (dict(sentences=[{"video_id": v, "caption": 7} for v in TRAIN]),
                        "MSRVTT_data.json", ("sentences[0]", "field `caption`", "must be a string")),
    "empty caption in a csv": (dict(test_csv=(TEST_HEADER + "ret0,msr9,video9,  \n").encode()),
                               "MSRVTT_JSFUSION_test.csv", ("line 2", "field `sentence`", "empty caption")),
    "video id is a number": (dict(sentences=[{"video_id": 3, "caption": "x"}]),
                             "MSRVTT_data.json", ("sentences[0]", "field `video_id`")),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_annotations_name_the_file_row_and_field(repo, fault, monkeypatch, capsys, case):
    files, bad_file, phrases = BAD_FILES[case]
    edit_params(repo, **{"benchmarks.msrvtt.val_videos_from_train": 1})
    raw = repo / "data" / "raw" / "msrvtt"
    write_msrvtt(raw, **files)
    fault.watch(raw)
    code, err = run_stage_in_process("preprocess", "msrvtt", monkeypatch, capsys)
    lost = fault.record(f"annotations: {case}", "exit 2 naming the file, row and field",
                        f"exit {code}: {first_line(err)}")
    assert code == 2, err
    assert str(raw / bad_file) in err, err
    for phrase in phrases:
        assert phrase in err, (phrase, err)
    assert "Traceback" not in err
    assert not (repo / "data" / "frames" / "msrvtt" / "annotations").exists()
    assert lost == []


@pytest.mark.parametrize("key,value", [("benchmarks.synthetic.fps", float("inf")), ("train.grad_clip", float("inf")),
                                       ("eval.rerank_temperature", float("nan")), ("train.lr", "-inf"),
                                       ("train_gen.loss_temperature_inv", float("inf"))])
def test_non_finite_float_params_are_rejected_naming_the_key(repo, fault, capsys, key, value):
    edit_params(repo, **{key: value})
    fault.watch(repo)
    code = cli(["data", "check", "--benchmark", "synthetic", "--params", str(repo / "params.yaml")])
    err = capsys.readouterr().err
    lost = fault.record(f"params: {key} = {value}", "exit 2 naming the key", f"exit {code}: {err.strip()}")
    assert code == 2 and f"`{key}`" in err and "finite" in err
    assert lost == []


def msvd_lists(root: Path, train: str, val: str, test: str) -> None:
    root.mkdir(parents=True)
    for name, ids in (("train", train), ("val", val), ("test", test)):
        (root / f"{name}_list.txt").write_text(ids.replace(" ", "\n") + "\n")
    (root / "captions_msvd.json").write_text(json.dumps({v: [f"caption of {v}"] for v in "abcd"}))
    (root / "videos").mkdir()
    for video in "abcd":
        (root / "videos" / f"{video}.avi").write_bytes(b"")


@pytest.mark.parametrize("lists,pair,exit_code", [(("a b", "c", "b d"), "train-test", 1),
                                                  (("a b", "b", "c d"), "train-val", 0),
                                                  (("a b", "c", "c d"), "val-test", 0)])
def test_videos_shared_between_splits_are_reported(tmp_path, fault, capsys, lists, pair, exit_code):
    from faultlib import REPO

    root = tmp_path / "msvd"
    msvd_lists(root, *lists)
    fault.watch(root)
    code = cli(["data", "check", "--benchmark", "msvd", "--root", str(root), "--params", str(REPO / "params.yaml")])
    out = capsys.readouterr().out
    first, second = pair.split("-")
    shared = sorted(set(lists[("train", "val", "test").index(first)].split())
                    & set(lists[("train", "val", "test").index(second)].split()))
    lost = fault.record(f"data check: a video in both {first} and {second}",
                        f"exit {exit_code}, the shared videos listed", f"exit {code}: {out.strip().splitlines()[-2]}")
    assert code == exit_code
    assert f"{len(shared)} videos are in both {first} and {second}" in out and ", ".join(shared) in out
    assert lost == []
