"""Read a benchmark's splits and check them against the video files, before any heavy work.

Used by the `preprocess` stage and by `diffusionret data check`. Rules:
- every annotated video id must map to exactly one file: the file whose name minus its last extension is the id
  (data/videos.py), or, for ids that carry their own extension (DiDeMo), the file named exactly as the id, or,
  for benchmarks whose ids have an optional prefix (ActivityNet `v_`), the file named without it. Two candidate
  files for one id are an error (the annotations could not say which one is meant).
- a missing video is an error that says how many are missing, names the first ones and writes the full list to
  a file, unless missing videos are allowed: then they are dropped together with their captions, and counted.
- a split given as "" for `val` is carved from train (`carve_validation`), never from test.
- videos shared between splits are reported (`BenchmarkCheck.shared`); a video in both train and test is an
  error (`SplitOverlap`): the test numbers would measure memorisation.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from diffusionret.data.readers import read_split
from diffusionret.data.records import SplitAnnotations
from diffusionret.data.videos import VIDEO_EXTENSIONS, index_video_files

ROLES = ("train", "val", "test")
SHOWN = 10  # missing ids named in an error message


class MissingVideos(FileNotFoundError):
    """Annotated videos without a file."""


class AmbiguousVideos(ValueError):
    """Annotated videos with more than one candidate file."""


class SplitOverlap(ValueError):
    """A video is in both the training and the test split."""


def shared_videos(splits: dict[str, SplitAnnotations]) -> dict[str, list[str]]:
    """Videos found in two splits: {"train-val": ids, "train-test": ids, "val-test": ids} (sorted; pairs with
    no shared video are left out)."""
    shared = {}
    for i, first in enumerate(ROLES):
        for second in ROLES[i + 1:]:
            if first in splits and second in splits:
                common = sorted(set(splits[first].video_ids) & set(splits[second].video_ids))
                if common:
                    shared[f"{first}-{second}"] = common
    return shared


def carve_validation(train: SplitAnnotations, count: int) -> tuple[SplitAnnotations, SplitAnnotations]:
    """Split `count` evenly spaced training videos off as a validation split (first caption of each); no randomness.

    Returns (train without them, val). The rule is the one of the MSRVTT reader: positions
    round(linspace(0, V - 1, count)) of the train gallery.
    """
    ids = train.video_ids
    if not 0 < count < len(ids):
        raise ValueError(f"{train.benchmark}: cannot carve {count} validation videos out of {len(ids)} training "
                         f"videos; set val_videos_from_train between 1 and {len(ids) - 1}")
    carved = {int(p) for p in np.unique(np.linspace(0, len(ids) - 1, count).round().astype(int))}
    val_ids = [v for i, v in enumerate(ids) if i in carved]
    first: dict[int, str] = {}
    for caption, row in zip(train.captions, train.caption_video):
        if row in carved:
            first.setdefault(row, caption)
    val = SplitAnnotations(train.benchmark, "val", tuple(val_ids), tuple(first[i] for i in sorted(carved)),
                           tuple(range(len(val_ids))), {v: s for v, s in train.spans.items() if v in set(val_ids)})
    return drop_videos(train, set(val_ids)), val


def drop_videos(annotations: SplitAnnotations, video_ids: set[str]) -> SplitAnnotations:
    """The split without the given videos and their captions (gallery order kept)."""
    if not video_ids & set(annotations.video_ids):
        return annotations
    kept = [v for v in annotations.video_ids if v not in video_ids]
    new_row = {v: i for i, v in enumerate(kept)}
    old_ids = annotations.video_ids
    pairs = [(c, new_row[old_ids[r]]) for c, r in zip(annotations.captions, annotations.caption_video)
             if old_ids[r] in new_row]
    return replace(annotations, video_ids=tuple(kept), captions=tuple(c for c, _ in pairs),
                   caption_video=tuple(r for _, r in pairs),
                   spans={v: s for v, s in annotations.spans.items() if v in new_row})


def read_benchmark_splits(reader: str, root: Path, *, benchmark: str, splits: dict[str, str],
                          val_videos_from_train: int = 0,
                          errors: dict[str, str] | None = None) -> dict[str, SplitAnnotations]:
    """Every split (train, val, test) in the common form; `splits` maps each role to the benchmark's split name.

    `splits["val"] == ""` carves `val_videos_from_train` videos from train; with 0 nothing is carved and there is
    no val split (paper mode: selection on test, training on the whole train split). A split without videos is left out
    (the shifted synthetic set has no train split); test is required. With `errors` (a dict), a split whose
    files cannot be read is recorded there instead of raising (for `data check`).
    """
    result: dict[str, SplitAnnotations] = {}
    for role in ROLES:
        name = splits.get(role, "")
        try:
            if role == "val" and not name and val_videos_from_train == 0:
                continue  # paper mode: the whole train split trains, nothing is carved
            if role == "val" and not name:
                if "train" not in result:
                    raise ValueError("the validation split is carved from train, which could not be read"
                                     if errors is not None and "train" in errors else
                                     "the validation split is carved from train, which has no videos")
                result["train"], annotations = carve_validation(result["train"], val_videos_from_train)
            else:
                if not name:
                    raise ValueError(f"no split name given for `{role}`")
                annotations = read_split(reader, root, role, benchmark=benchmark, source_split=name)
        except (FileNotFoundError, ValueError) as error:
            if errors is None:
                raise
            errors[role] = str(error)
            continue
        if annotations.num_videos:
            result[role] = annotations
    if "test" not in result and not (errors and "test" in errors):
        raise ValueError(f"benchmark `{benchmark}` under {root} has no test videos")
    return result


def match_videos(video_ids: Sequence[str], index: dict[str, Path], *,
                 id_prefix: str = "") -> tuple[dict[str, Path], list[str]]:
    """(id -> its one file, ids without a file); raises `AmbiguousVideos` when an id has two candidate files."""
    files: dict[str, Path] = {}
    missing: list[str] = []
    ambiguous: dict[str, list[Path]] = {}
    for video_id in video_ids:
        candidates = []
        if video_id in index:
            candidates.append(index[video_id])
        stem, ext = os.path.splitext(video_id)
        if ext and stem in index and index[stem].name == video_id:  # the file is named exactly as the id
            candidates.append(index[stem])
        if id_prefix and video_id.startswith(id_prefix) and video_id[len(id_prefix):] in index:
            candidates.append(index[video_id[len(id_prefix):]])
        candidates = list(dict.fromkeys(candidates))
        if len(candidates) == 1:
            files[video_id] = candidates[0]
        elif candidates:
            ambiguous[video_id] = candidates
        else:
            missing.append(video_id)
    if ambiguous:
        listed = "; ".join(f"{v}: {', '.join(map(str, paths))}" for v, paths in list(ambiguous.items())[:SHOWN])
        raise AmbiguousVideos(f"{len(ambiguous)} annotated videos match more than one file ({listed}); remove or "
                              "rename the extra files so that every video id has exactly one")
    return files, missing


@dataclass
class BenchmarkCheck:
    """The splits of a benchmark and how they match the video files."""

    splits: dict[str, SplitAnnotations]
    files: dict[str, Path]  # video id -> its file, for every video found
    missing: dict[str, list[str]]  # split -> ids without a file, in gallery order
    errors: dict[str, str] = field(default_factory=dict)  # split -> why it could not be read (data check only)

    @property
    def shared(self) -> dict[str, list[str]]:
        """Videos shared between splits, per pair of roles (see `shared_videos`)."""
        return shared_videos(self.splits)

    @property
    def missing_ids(self) -> list[str]:
        """Every missing id once, sorted."""
        return sorted({v for ids in self.missing.values() for v in ids})

    def counts(self) -> dict[str, dict]:
        """Per split: videos, captions, missing videos and the captions those carry (or the read error)."""
        result: dict[str, dict] = {}
        for role in ROLES:
            if role in self.errors:
                result[role] = {"error": self.errors[role]}
            elif role in self.splits:
                split, gone = self.splits[role], set(self.missing.get(role, ()))
                lost = sum(1 for r in split.caption_video if split.video_ids[r] in gone)
                result[role] = {"videos": split.num_videos, "captions": split.num_captions,
                                "missing_videos": len(gone), "missing_captions": lost}
        return result


def check_benchmark(root: Path, *, benchmark: str, reader: str, splits: dict[str, str],
                    val_videos_from_train: int = 0, index: dict[str, Path] | None = None, id_prefix: str = "",
                    extensions: Sequence[str] = VIDEO_EXTENSIONS, keep_going: bool = False) -> BenchmarkCheck:
    """Read the splits under `root` and match their videos to files (`index`, default: a walk of `root`).

    `keep_going`: a split that cannot be read is recorded in `errors` (for `data check`) instead of raising.
    """
    errors: dict[str, str] = {}
    annotations = read_benchmark_splits(reader, root, benchmark=benchmark, splits=splits,
                                        val_videos_from_train=val_videos_from_train,
                                        errors=errors if keep_going else None)
    if index is None:
        index = index_video_files(root, extensions) if Path(root).is_dir() else {}
    all_ids = list(dict.fromkeys(v for a in annotations.values() for v in a.video_ids))
    files, missing = match_videos(all_ids, index, id_prefix=id_prefix)
    gone = set(missing)
    per_split = {role: [v for v in a.video_ids if v in gone] for role, a in annotations.items()}
    return BenchmarkCheck(annotations, files, per_split, errors)


def write_missing_list(check: BenchmarkCheck, path: Path) -> None:
    """One line per missing video: `<split>\\t<video id>` (a video in two splits appears twice)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{role}\t{v}" for role in ROLES for v in check.missing.get(role, ())]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def enforce_complete(check: BenchmarkCheck, *, allow_missing: bool, missing_file: Path | None,
                     where: str) -> dict[str, SplitAnnotations]:
    """The splits to process: unchanged when nothing is missing; without the missing videos when allowed;
    otherwise `MissingVideos`, after writing the full list to `missing_file`. A train-test overlap is always an
    error (`SplitOverlap`)."""
    leak = check.shared.get("train-test")
    if leak:
        raise SplitOverlap(overlap_message(check, where))
    if not check.missing_ids:
        return dict(check.splits)
    if missing_file is not None:
        write_missing_list(check, missing_file)
    total = len({v for a in check.splits.values() for v in a.video_ids})
    if not allow_missing:
        ids = check.missing_ids
        per_split = ", ".join(f"{role} {len(v)}" for role, v in check.missing.items() if v)
        listed = f" Full list: {missing_file}." if missing_file is not None else ""
        raise MissingVideos(
            f"{len(ids)} of {total} annotated videos have no file under {where} ({per_split}); first "
            f"{min(SHOWN, len(ids))}: {', '.join(ids[:SHOWN])}.{listed} A video's file name minus its last "
            f"extension must equal its id. Add the files and run again, or set data.allow_missing: true to skip "
            f"them (the count is logged to MLflow)."
        )
    gone = set(check.missing_ids)
    kept = {role: drop_videos(a, gone) for role, a in check.splits.items()}
    empty = [role for role, a in kept.items() if not a.num_videos]
    if empty:
        raise MissingVideos(f"every video of the {', '.join(empty)} split(s) is missing under {where}; "
                            "data.allow_missing cannot help here: add the videos")
    return kept


def overlap_message(check: BenchmarkCheck, where: str) -> str:
    """The error for videos in both train and test: how many, the first ones, and the fix."""
    leak = check.shared["train-test"]
    return (f"{len(leak)} videos of {where} are in both the train and the test split (first: "
            f"{', '.join(leak[:SHOWN])}): test results would measure memorisation. Point `splits.train` and "
            "`splits.test` of this benchmark at files that do not share videos (`diffusionret data check` lists "
            "every shared video)")
