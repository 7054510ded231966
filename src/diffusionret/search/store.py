"""The on-disk search index.

    INDEX_DIR/
      index.json              manifest, written last and atomically: format, model fingerprint, frame settings,
                              videos root, the current generation, one entry per video in row order
                              {path, size, mtime_ns, duration_s, sha256, frames} and the undecodable files
      gen-000003/features.npy frame features after the temporal module, float32 (V, T, D)
      gen-000003/mask.npy     valid-frame mask, bool (V, T)
      thumbs/<sha256>.png     a strip of the sampled frames of each video (what the model saw), for the page
      work/                   only while an update runs or after one was interrupted: encoded batches (shards),
                              decoded frames (data/frames.py partial files), failures so far

An update writes a NEW generation folder and then swaps the manifest, so a reader never sees half an index and
a killed update leaves the previous index intact (its finished batches stay in work/ for the next run).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMAT = 1
MANIFEST = "index.json"
THUMBS = "thumbs"
WORK = "work"
THUMB_MAX_PX = 96  # thumbnails are the model's frames, scaled down to at most this many pixels a side
SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")


class SearchIndexError(ValueError):
    """An index folder is missing, damaged or incompatible with the request."""


# ---------------------------------------------------------------- manifest --------------------------------------

def write_json_atomic(path: Path, value) -> None:
    """Write JSON to a temporary name, fsync, then rename over `path`."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as handle:
        json.dump(value, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def read_manifest(index_dir: Path) -> dict | None:
    """The manifest of `index_dir`, or None when no index was ever completed there."""
    path = Path(index_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise SearchIndexError(f"{path} is not valid JSON ({error}); delete {index_dir} and run "
                               "`diffusionret index` again") from error
    if manifest.get("format") != FORMAT:
        raise SearchIndexError(f"{path} has index format {manifest.get('format')!r}; this version reads format "
                               f"{FORMAT}. Rebuild it: `diffusionret index ... --out {index_dir} --rebuild`")
    return manifest


def generation_dir(index_dir: Path, generation: int) -> Path:
    return Path(index_dir) / f"gen-{generation:06d}"


def thumb_path(index_dir: Path, sha256: str) -> Path:
    return Path(index_dir) / THUMBS / f"{sha256}.png"


def remove_stale(index_dir: Path, manifest: dict) -> None:
    """Delete generation folders and thumbnails the manifest no longer references."""
    index_dir = Path(index_dir)
    current = generation_dir(index_dir, manifest["generation"]).name
    for folder in index_dir.glob("gen-*"):
        if folder.is_dir() and folder.name != current:
            shutil.rmtree(folder, ignore_errors=True)
    referenced = {entry["sha256"] for entry in manifest["videos"]}
    for thumb in (index_dir / THUMBS).glob("*.png"):
        if thumb.stem not in referenced:
            thumb.unlink(missing_ok=True)


# ---------------------------------------------------------------- loaded index ----------------------------------

@dataclass
class VideoIndex:
    """An index opened for search: entries in row order, frame features (V, T, D) float32 and mask (V, T) bool."""

    directory: Path
    manifest: dict
    features: np.ndarray
    mask: np.ndarray

    @property
    def entries(self) -> list[dict]:
        return self.manifest["videos"]

    def __len__(self) -> int:
        return len(self.manifest["videos"])


def load_index(index_dir: Path) -> VideoIndex:
    """Open a completed index (features read into memory)."""
    index_dir = Path(index_dir)
    manifest = read_manifest(index_dir)
    if manifest is None:
        hint = (" An update was interrupted before its first commit: run the same `diffusionret index` command "
                "again to finish it.") if (index_dir / WORK).is_dir() else ""
        raise SearchIndexError(f"{index_dir} is not a search index (no {MANIFEST}); build one with "
                               f"`diffusionret index --videos DIR --model models/<benchmark> --out {index_dir}`.{hint}")
    folder = generation_dir(index_dir, manifest["generation"])
    try:
        features = np.load(folder / "features.npy")
        mask = np.load(folder / "mask.npy")
    except FileNotFoundError as error:
        raise SearchIndexError(f"{index_dir}: {error.filename} is missing though {MANIFEST} refers to it; the index "
                               "is damaged: rebuild it with `diffusionret index ... --rebuild`") from error
    count = len(manifest["videos"])
    if features.shape[0] != count or mask.shape != features.shape[:2]:
        raise SearchIndexError(f"{index_dir}: {count} videos in {MANIFEST} but features {features.shape} and mask "
                               f"{mask.shape} in {folder.name}; rebuild it with `diffusionret index ... --rebuild`")
    return VideoIndex(index_dir, manifest, features, mask)


# ---------------------------------------------------------------- work in progress ------------------------------

class WorkDir:
    """Finished batches of an update in progress, so an interrupted update resumes where it stopped.

    Bound to the extractor and frame settings that produced them (`work.json`): shards of another model are
    discarded. A shard holds, per video content hash: features (b, T, D), mask (b, T), duration, frame count.
    """

    def __init__(self, index_dir: Path, owner: dict):
        self.path = Path(index_dir) / WORK
        self.shards = self.path / "shards"
        self.failures_file = self.path / "failures.json"
        stamp = self.path / "work.json"
        if self.path.is_dir() and (not stamp.is_file() or json.loads(stamp.read_text()) != owner):
            shutil.rmtree(self.path)  # left by another model or settings: not reusable
        self.shards.mkdir(parents=True, exist_ok=True)
        if not stamp.is_file():
            write_json_atomic(stamp, owner)

    @property
    def decoded(self) -> Path:
        return self.path / "decoded"  # data/frames.py partial files (decoded, not yet encoded)

    @property
    def batch(self) -> Path:
        return self.path / "batch"  # data/frames.py output of the batch being encoded

    def load_shards(self) -> dict[str, dict]:
        """sha256 -> {features (T, D), mask (T,), duration_s, frames} of every finished batch."""
        done = {}
        for shard in sorted(self.shards.glob("*.npz")):
            with np.load(shard) as data:
                for row, sha in enumerate(data["sha256"]):
                    done[str(sha)] = {"features": data["features"][row], "mask": data["mask"][row],
                                      "duration_s": float(data["duration_s"][row]),
                                      "frames": int(data["mask"][row].sum())}
        return done

    def save_shard(self, sha256: list[str], features: np.ndarray, mask: np.ndarray, durations: list[float]) -> None:
        """Store one encoded batch atomically."""
        number = len(list(self.shards.glob("*.npz")))
        target = self.shards / f"{number:06d}.npz"
        tmp = self.shards / f"{number:06d}.tmp.npz"
        np.savez(tmp, sha256=np.asarray(sha256, dtype="<U64"), features=features.astype(np.float32),
                 mask=mask.astype(bool), duration_s=np.asarray(durations, dtype=np.float64))
        os.replace(tmp, target)

    def load_failures(self) -> dict[str, str]:
        """sha256 -> error of the videos that failed to decode earlier in this update."""
        return json.loads(self.failures_file.read_text()) if self.failures_file.is_file() else {}

    def save_failures(self, failures: dict[str, str]) -> None:
        write_json_atomic(self.failures_file, failures)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def write_strip(frames: np.ndarray, path: Path, max_px: int = THUMB_MAX_PX) -> None:
    """Save valid frames uint8 (t, S, S, 3) side by side as one PNG, scaled down to at most `max_px` high."""
    from PIL import Image

    strip = np.concatenate(list(frames), axis=1)  # (S, t * S, 3)
    image = Image.fromarray(strip)
    size = frames.shape[1]
    if size > max_px:
        image = image.resize((round(strip.shape[1] * max_px / size), max_px), Image.Resampling.BILINEAR)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)
