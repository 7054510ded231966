"""MSRVTT annotations (official loader's layout) -> `SplitAnnotations`. The synthetic benchmarks use the same layout.

Files under `root`:
- `MSRVTT_train.9k.csv` (column `video_id`): the training videos.
- `MSRVTT_data.json`: {"sentences": [{video_id, caption, ...}, ...]}; every caption of a training video is one
  training sample.
- `MSRVTT_JSFUSION_test.csv` (columns key, vid_key, video_id, sentence): one test query per row.
- `MSRVTT_JSFUSION_val.csv` (same columns), optional. The official code evaluates "val" on the test csv; we
  never select checkpoints on test: without a val csv, `val_fraction_videos` training videos are carved out
  (evenly spaced over the train csv, no randomness) and "train" excludes them. A carved val split uses the
  first caption (in json order) of each carved video, mirroring the one-caption-per-video test csv. When the
  val csv exists it wins and `val_fraction_videos` is ignored.
- `MSRVTT_train.7k.csv` (column `video_id`), optional: the 7k training split of CLIP4Clip's msrvtt_data.zip.

Split names (`source_split`, set per role in params.yaml `splits`): `9k` and `7k` (a train csv + the json
captions), `jsfusion_val` (MSRVTT_JSFUSION_val.csv: written by the synthetic generator, absent from the real
MSRVTT) and `1k-A` (MSRVTT_JSFUSION_test.csv, the 1000 test pairs). Without `source_split` the reader keeps its
role-based behaviour above.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from diffusionret.data.readers.files import AnnotationError, caption, csv_rows, expect, read_json
from diffusionret.data.records import SplitAnnotations

TEST_CSV = "MSRVTT_JSFUSION_test.csv"
VAL_CSV = "MSRVTT_JSFUSION_val.csv"
DATA_JSON = "MSRVTT_data.json"
TRAIN_CSVS = {"9k": "MSRVTT_train.9k.csv", "7k": "MSRVTT_train.7k.csv"}
SPLIT_FILES = {**TRAIN_CSVS, "jsfusion_val": VAL_CSV, "1k-A": TEST_CSV}
DEFAULT_SPLITS = {"train": "9k", "val": "", "test": "1k-A"}


def _read_csv_column(path: Path, columns: tuple[str, ...]) -> list[dict[str, str]]:
    """Rows of a csv as dicts, after checking that the needed columns exist; a `sentence` must be a caption."""
    if not path.is_file():
        raise FileNotFoundError(f"MSRVTT annotation file {path} is missing; run the download stage")
    rows = []
    for line, row in csv_rows(path, columns):
        if "sentence" in row:
            caption(row["sentence"], f"{path}, line {line}, field `sentence`")
        if not row["video_id"].strip():
            raise AnnotationError(f"{path}, line {line}, field `video_id`: empty video id; fix that line")
        rows.append(row)
    return rows


def _read_sentences(path: Path) -> list[dict]:
    """The `sentences` list of MSRVTT_data.json (each with a string `video_id` and a caption)."""
    if not path.is_file():
        raise FileNotFoundError(f"MSRVTT annotation file {path} is missing; run the download stage")
    data = read_json(path)
    if not isinstance(data, dict) or "sentences" not in data:
        raise AnnotationError(f"{path}: expected a JSON object with a 'sentences' key")
    expect(data["sentences"], list, f"{path}, key `sentences`", "a list of {video_id, caption} objects")
    for i, item in enumerate(data["sentences"]):
        if not isinstance(item, dict) or "video_id" not in item or "caption" not in item:
            raise AnnotationError(f"{path}: sentences[{i}] lacks 'video_id' or 'caption': {item!r:.200}")
        expect(item["video_id"], str, f"{path}, sentences[{i}], field `video_id`", "a string video id")
        caption(item["caption"], f"{path}, sentences[{i}], field `caption`")
    return data["sentences"]


def _carve(train_ids: list[str], count: int) -> list[str]:
    """`count` evenly spaced ids of the train csv (deterministic, order kept)."""
    if not 0 < count < len(train_ids):
        raise ValueError(f"val_fraction_videos={count} must be between 1 and {len(train_ids) - 1}")
    positions = np.unique(np.linspace(0, len(train_ids) - 1, count).round().astype(int))
    return [train_ids[p] for p in positions]


def _from_csv(path: Path, benchmark: str, split: str) -> SplitAnnotations:
    """One caption per csv row; videos in order of first appearance."""
    rows = _read_csv_column(path, ("video_id", "sentence"))
    row_of: dict[str, int] = {}
    for row in rows:
        row_of.setdefault(row["video_id"], len(row_of))
    return SplitAnnotations(benchmark, split, tuple(row_of), tuple(r["sentence"] for r in rows),
                            tuple(row_of[r["video_id"]] for r in rows))


def _from_json(root: Path, video_ids: list[str], benchmark: str, split: str, first_only: bool) -> SplitAnnotations:
    """Captions of `video_ids` from MSRVTT_data.json (all of them, or the first of each video)."""
    path = root / DATA_JSON
    row_of = {v: i for i, v in enumerate(video_ids)}
    captions, caption_video, captioned = [], [], set()
    for item in _read_sentences(path):
        row = row_of.get(item["video_id"])
        if row is None or (first_only and row in captioned):
            continue
        captions.append(item["caption"])
        caption_video.append(row)
        captioned.add(row)
    uncaptioned = [v for v, row in row_of.items() if row not in captioned]
    if uncaptioned:
        raise ValueError(f"{path}: {len(uncaptioned)} {split} videos have no caption (e.g. {uncaptioned[:5]}); "
                         "the json and the train csv do not belong together")
    return SplitAnnotations(benchmark, split, tuple(video_ids), tuple(captions), tuple(caption_video))


def _train_ids(path: Path) -> list[str]:
    """The video ids of a train csv (no duplicates allowed)."""
    train_ids = [r["video_id"] for r in _read_csv_column(path, ("video_id",))]
    if len(set(train_ids)) != len(train_ids):
        raise ValueError(f"{path}: duplicate video ids")
    return train_ids


def read_msrvtt(root: Path, split: str, *, benchmark: str = "msrvtt", train_csv: str = "MSRVTT_train.9k.csv",
                val_fraction_videos: int = 0, source_split: str | None = None) -> SplitAnnotations:
    """Read the "train", "val" or "test" split of an MSRVTT-layout annotation folder.

    With `source_split` (9k, 7k, jsfusion_val, 1k-A) the named file is read whatever the role `split` is, and
    nothing is carved (data/check.py carves a validation split in the common form).
    """
    root = Path(root)
    if source_split is not None:
        if source_split not in SPLIT_FILES:
            raise ValueError(f"unknown MSRVTT split {source_split!r}; choose one of {', '.join(SPLIT_FILES)}")
        if source_split in TRAIN_CSVS:
            return _from_json(root, _train_ids(root / TRAIN_CSVS[source_split]), benchmark, split, first_only=False)
        return _from_csv(root / SPLIT_FILES[source_split], benchmark, split)
    if split == "test":
        return _from_csv(root / TEST_CSV, benchmark, split)
    has_val_csv = (root / VAL_CSV).is_file()
    if split == "val" and has_val_csv:
        return _from_csv(root / VAL_CSV, benchmark, split)
    if split == "val" and val_fraction_videos <= 0:
        raise FileNotFoundError(f"{root}: no {VAL_CSV} and val_fraction_videos=0; set val_fraction_videos to carve "
                                f"a validation split out of {train_csv}")
    if split not in ("train", "val"):
        raise ValueError(f"unknown split {split!r} for {benchmark}; choose train, val or test")
    train_ids = _train_ids(root / train_csv)
    carved = _carve(train_ids, val_fraction_videos) if (val_fraction_videos > 0 and not has_val_csv) else []
    if split == "val":
        return _from_json(root, carved, benchmark, split, first_only=True)
    kept = set(carved)
    return _from_json(root, [v for v in train_ids if v not in kept], benchmark, split, first_only=False)
