"""The on-disk search index.

    INDEX_DIR/
      .diffusionret-index     marker written first: {"format": 1}; an update refuses a non-empty folder without it
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

Deleting is narrow: the index removes only files it names itself (the files of a generation folder, the
thumbnails of entries it dropped, the files of work/), never a folder's whole tree, so a file a user put inside
an index folder survives every update.
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
MARKER = ".diffusionret-index"
MANIFEST = "index.json"
THUMBS = "thumbs"
WORK = "work"
THUMB_MAX_PX = 96  # thumbnails are the model's frames, scaled down to at most this many pixels a side
SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
GENERATION_PATTERN = re.compile(r"^gen-(\d{6})$")
GENERATION_FILES = ("features.npy", "mask.npy", "prefilter-hnsw.faiss")  # all a generation folder ever holds
WORK_FILES = re.compile(r"^(work\.json|failures\.json|\d{6}(\.tmp)?\.npz|frames\.npy|mask\.npy|videos\.json|"
                        r".+\.npy(\.tmp|\.started)?|.+\.tmp)$")  # work/ and its shards/, batch/, decoded/<settings>/


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


def open_memmap_reserved(path: Path, dtype, shape: tuple[int, ...]) -> np.memmap:
    """A new .npy file mapped for writing, its disk blocks reserved first.

    A plain `open_memmap` makes a sparse file: on a full disk the first write to an unbacked page kills the
    process with SIGBUS and no message. Reserving (posix_fallocate) turns that into an OSError here, before
    anything is written; the file is then removed again.
    """
    array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    size = os.path.getsize(path)
    try:
        with open(path, "r+b") as handle:
            os.posix_fallocate(handle.fileno(), 0, size)
    except OSError as error:
        del array
        Path(path).unlink(missing_ok=True)
        free = shutil.disk_usage(Path(path).parent).free
        raise OSError(error.errno, f"cannot reserve {size:,} bytes for {path} ({free:,} bytes free on that disk: "
                                   f"{error.strerror}); free space there or choose a folder on another disk") from None
    return array


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


def claim_index_dir(index_dir: Path) -> None:
    """Make `index_dir` an index folder: a new or empty folder gets the marker; one with the marker is ours.

    Any other folder is refused before anything in it is touched: an update deletes stale files of its own, and
    in a folder it did not make those names could be a user's files.
    """
    index_dir = Path(index_dir)
    marker = index_dir / MARKER
    fix = "pass a new or empty folder to --out (the index creates it)"
    if index_dir.exists() and not index_dir.is_dir():
        raise SearchIndexError(f"{index_dir} is a file, not a folder; {fix}")
    if marker.is_file():
        try:
            made = json.loads(marker.read_text())
        except json.JSONDecodeError:
            made = {}
        if not isinstance(made, dict) or made.get("format") != FORMAT:
            found = made.get("format") if isinstance(made, dict) else made
            raise SearchIndexError(f"{marker} says index format {found!r}; this version writes format {FORMAT} and "
                                   f"does not update another. Nothing was changed; {fix}")
        return
    if index_dir.is_dir() and any(index_dir.iterdir()) and not _made_before_markers(index_dir):
        raise SearchIndexError(f"{index_dir} is not empty and is not a search index made by `diffusionret index` "
                               f"(it has no {MARKER}); nothing in it was changed or deleted. {fix[0].upper()}{fix[1:]}")
    index_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(marker, {"format": FORMAT, "made_by": "diffusionret index"})


def _made_before_markers(index_dir: Path) -> bool:
    """True for an index of this format written before the marker existed (a valid manifest of ours)."""
    try:
        manifest = json.loads((index_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return (isinstance(manifest, dict) and manifest.get("format") == FORMAT
            and {"generation", "videos", "videos_root", "model"} <= set(manifest))


def remove_named(folder: Path, names, recursive: bool = False) -> None:
    """Delete the files of `folder` named in `names` (a collection, or a compiled pattern), then the folder if empty.

    With `recursive`, sub-folders are handled the same way. Nothing else is deleted: a file of another name, and
    the folder holding it, stay.
    """
    folder = Path(folder)
    if not folder.is_dir() or folder.is_symlink():
        return
    for path in folder.iterdir():
        if path.is_dir() and not path.is_symlink():
            if recursive:
                remove_named(path, names, recursive=True)
        elif names.match(path.name) if hasattr(names, "match") else path.name in names:
            path.unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:  # holds something not ours
        pass


def generation_dir(index_dir: Path, generation: int) -> Path:
    return Path(index_dir) / f"gen-{generation:06d}"


def thumb_path(index_dir: Path, sha256: str) -> Path:
    return Path(index_dir) / THUMBS / f"{sha256}.png"


def remove_stale(index_dir: Path, manifest: dict, previous: dict | None, written: set[str] = frozenset()) -> None:
    """Delete what the new `manifest` no longer references: earlier generations' files, dropped thumbnails.

    Only names the index gives its own files are deleted: in `gen-<n>` folders numbered below the current
    generation, the files a generation holds; in thumbs/, the thumbnails of the `previous` manifest's entries and
    of the videos `written` (sha256) during this update that the new manifest does not list.
    """
    index_dir = Path(index_dir)
    for folder in index_dir.iterdir():
        number = GENERATION_PATTERN.match(folder.name)
        if number and int(number.group(1)) < manifest["generation"]:
            remove_named(folder, GENERATION_FILES)
    referenced = {entry["sha256"] for entry in manifest["videos"]}
    listed = {entry["sha256"] for entry in previous["videos"]} if previous else set()
    for sha in (listed | set(written)) - referenced:
        if SHA256_PATTERN.match(sha):
            thumb_path(index_dir, sha).unlink(missing_ok=True)


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
            self.remove()  # left by another model or settings: not reusable
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

    def written(self) -> set[str]:
        """sha256 of the videos encoded in work/ (their thumbnails were written with them)."""
        return set(self.load_shards())

    def remove(self) -> None:
        """Delete work/'s own files (shards, failures, stamp, decoded and batch frames); a foreign file stays."""
        remove_named(self.path, WORK_FILES, recursive=True)


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
