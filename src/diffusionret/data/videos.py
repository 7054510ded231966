"""Find video files on disk and match them to the video ids of an annotation split."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".m4v", ".mov")


def index_video_files(root: Path, extensions: Sequence[str] = VIDEO_EXTENSIONS) -> dict[str, Path]:
    """Map video id -> file for every video under `root` (recursive); the id is the name minus its LAST extension.

    Stripping only the last extension is the DiDeMo convention (`abc.m4v.mp4` has id `abc.m4v`). Two files with
    the same id are an error, since the annotations could not say which one is meant.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"video folder {root} does not exist; download or link the videos there first")
    wanted = {e.lower() for e in extensions}
    index: dict[str, Path] = {}
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs.sort()
        for name in sorted(files):
            stem, ext = os.path.splitext(name)
            if ext.lower() not in wanted or not stem:
                continue
            path = Path(folder) / name
            if stem in index:
                raise ValueError(f"two video files have the id {stem!r}: {index[stem]} and {path}; "
                                 "remove or rename one of them")
            index[stem] = path
    return index


def resolve_videos(ids: Sequence[str], index: dict[str, Path], where: str) -> dict[str, Path]:
    """Return id -> file for every id (in the given order), or raise if any id has no file (nothing partial)."""
    missing = [video_id for video_id in ids if video_id not in index]
    if missing:
        shown = ", ".join(missing[:10])
        raise FileNotFoundError(
            f"{where}: {len(missing)} of {len(ids)} videos have no file (first {min(10, len(missing))}: {shown}); "
            f"{len(index)} video files were indexed. Check the video folder or re-run the download stage."
        )
    return {video_id: index[video_id] for video_id in ids}
