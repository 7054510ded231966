"""Find the video files of a folder and describe them (relative path, size, modification time)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from diffusionret.data.videos import VIDEO_EXTENSIONS


@dataclass(frozen=True)
class VideoFile:
    """One video file under the indexed folder; `path` is relative to it, with '/' separators."""

    path: str
    size: int
    mtime_ns: int

    def same_stat(self, entry: dict) -> bool:
        """True when a stored entry has this file's size and modification time (then it is not re-read)."""
        return entry.get("size") == self.size and entry.get("mtime_ns") == self.mtime_ns


def scan_videos(root: Path, extensions=VIDEO_EXTENSIONS) -> list[VideoFile]:
    """Every video file under `root` (recursive, symlinks followed once), sorted by relative path.

    Hidden files and folders (name starting with '.') are skipped: they are editor or OS droppings such as
    macOS `._clip.mp4` resource forks, which look like videos but are not.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"video folder {root} does not exist or is not a folder; pass --videos DIR")
    wanted = {e.lower() for e in extensions}
    seen_dirs: set[str] = set()
    found = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen_dirs:  # a symlink loop or a folder linked twice
            dirs[:] = []
            continue
        seen_dirs.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in wanted:
                continue
            path = Path(folder) / name
            try:
                stat = path.stat()
            except OSError:  # a dangling symlink or a file removed while walking
                continue
            if not path.is_file():
                continue
            found.append(VideoFile(path.relative_to(root).as_posix(), stat.st_size, stat.st_mtime_ns))
    return sorted(found, key=lambda video: video.path)
