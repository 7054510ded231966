"""`download` stage: make a benchmark's files available and describe them in a small manifest (the DVC output).

The raw files are not a DVC output: a real benchmark is tens to hundreds of GB, often a copy the user already has
(`data.raw_root` may point anywhere; nothing is copied), and DVC would cache it and delete it before every re-run.
Instead the stage writes `data.manifests_root/<benchmark>.json`: the annotation files with their sha256 and every
video file with its size. `preprocess` depends on that manifest, so it re-runs exactly when the files it reads
change. The stage is `always_changed` in dvc.yaml: it re-checks the folder on every `dvc repro` (seconds), and an
unchanged manifest leaves everything downstream cached.

- synthetic: generated into `raw_root/<benchmark>/` (skipped when the folder already holds the same settings).
- real: `raw_root/<source>/` (so variants of one source, e.g. a 7k-split MSRVTT, share one copy). Files that
  are missing and have a public URL are downloaded (data/download.py: resume, retries, checksums); whatever is
  still missing stops the stage with one message listing every file, where to obtain it and where to put it.
  The checksum lock (`checksums.lock.json` in the benchmark folder, or under data.partial_root/locks/ when that
  folder is read-only) records every annotation file on first sight, and every archive once it extracted without
  error, and verifies them on every run; registry digests marked verified are checked too, hand-placed files
  included. A fresh download that differs from a digest the lock recorded (never verified: the first download
  may have been a login page) is not deleted: it is kept as `<file>.new` and the error names both digests.
  The lock is saved even when the stage fails, for every file verified so far.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from diffusionret.config import BenchmarkParams, Params
from diffusionret.data.download import (ChecksumLock, ChecksumMismatch, DownloadError, download_file,
                                        extract_members, extract_videos, sha256_of)
from diffusionret.data.sources import SOURCES, BenchmarkSource, Download, Requirement, needed, source_of
from diffusionret.data.synthetic import generate_synthetic
from diffusionret.data.videos import VIDEO_EXTENSIONS, index_video_files
from diffusionret.pipeline.paths import Paths
from diffusionret.storage import StorageError

MANIFEST_FORMAT = 1
LOCK_NAME = "checksums.lock.json"
SYNTHETIC_STAMP = "synthetic-settings.json"


class ManualStepRequired(RuntimeError):
    """Files of a real benchmark are missing and cannot be downloaded automatically."""


def benchmark_raw_dir(paths: Paths, name: str, settings: BenchmarkParams) -> Path:
    """Folder of a benchmark's raw files: raw_root/<name> (synthetic) or raw_root/<source> (real)."""
    return paths.raw(name if settings.source == "synthetic" else settings.source)


def manifest_path(paths: Paths, name: str) -> Path:
    """`data.manifests_root/<name>.json`, anchored at the repository root (dvc.yaml declares the same path)."""
    root = Path(paths.data.manifests_root)
    return (root if root.is_absolute() else paths.root / root) / f"{name}.json"


def lock_path(paths: Paths, name: str, raw_dir: Path) -> Path:
    """The checksum lock: in the benchmark folder, or under partial_root/locks/ when that folder is read-only."""
    if os.access(raw_dir, os.W_OK):
        return raw_dir / LOCK_NAME
    return paths.partial("locks", f"{name}.{LOCK_NAME}")


# ---------------------------------------------------------------- synthetic ------------------------------------

def generate_synthetic_once(settings: BenchmarkParams, raw_dir: Path, *, workers: int = 1,
                            progress: bool = True) -> dict:
    """Generate the synthetic benchmark into raw_dir, unless a finished run with the same settings is there."""
    synthetic = settings.synthetic
    wanted = json.loads(json.dumps(dataclasses.asdict(synthetic)))  # tuples as lists, as read back from the stamp
    stamp = raw_dir / SYNTHETIC_STAMP
    expected_videos = synthetic.num_train + synthetic.num_val + synthetic.num_test
    if stamp.is_file() and json.loads(stamp.read_text()).get("settings") == wanted and (raw_dir / "videos").is_dir():
        if len(index_video_files(raw_dir / "videos")) == expected_videos:
            return {**json.loads(stamp.read_text())["counts"], "generated": False}
    stamp.unlink(missing_ok=True)
    shutil.rmtree(raw_dir / "videos", ignore_errors=True)  # generated content only: stale videos must not linger
    counts = generate_synthetic(
        raw_dir, seed=synthetic.seed, num_train=synthetic.num_train, num_val=synthetic.num_val,
        num_test=synthetic.num_test, captions_per_train_video=synthetic.captions_per_train_video,
        captions_per_eval_video=synthetic.captions_per_eval_video,
        shift=synthetic.shift, image_size=synthetic.image_size, fps=synthetic.fps,
        amplitude=tuple(synthetic.amplitude), shape_size=tuple(synthetic.shape_size) or None, workers=workers,
        progress=progress,
    )
    counts = {k: v for k, v in counts.items() if k != "seconds"}
    stamp.write_text(json.dumps({"settings": wanted, "counts": counts}, indent=1, sort_keys=True) + "\n")
    return {**counts, "generated": True}


# ---------------------------------------------------------------- real benchmarks ------------------------------

def _present(raw_dir: Path, requirement: Requirement) -> Path | None:
    return next((raw_dir / p for p in requirement.paths if (raw_dir / p).is_file()), None)


def _verified(download: Download | None, file: Path) -> dict:
    """The registry's verified digest of `file` as keyword arguments of `ChecksumLock.verify_or_record`."""
    if download is None or not download.verified or download.sha256 is None or download.file != file.name:
        return {}
    return {"verified_sha256": download.sha256, "verified_size": download.size, "origin": download.url}


def _fetch(download: Download, dest: Path, lock: ChecksumLock, downloader: Callable, progress: bool) -> str:
    """Make `dest` available and return its digest, without recording it (the caller does, once it is usable).

    A file already there is checked against the registry's verified digest and the lock. A download is checked
    by the downloader against the registry digest; one that differs from the digest the lock recorded earlier is
    moved aside to `<dest>.new` (the recorded digest was never verified, so neither copy is deleted)."""
    if dest.is_file():
        return lock.verify_or_record(dest, record=False, **_verified(download, dest))
    recorded = lock.entries.get(lock.key(dest))
    digest = downloader(download.url, dest, sha256=download.sha256, size=download.size, progress=progress)
    if recorded is not None and recorded["sha256"] != digest:
        aside = dest.with_name(dest.name + ".new")
        os.replace(dest, aside)
        raise ChecksumMismatch(
            f"the new download of {dest.name} ({download.url}) has sha256 {digest} ({aside.stat().st_size} bytes), "
            f"but {lock.path} recorded {recorded['sha256']} ({recorded['size']} bytes) for `{lock.key(dest)}` on an "
            f"earlier run. The recorded digest was never verified (an earlier download may have been an error or "
            f"login page). The new file is kept as {aside}. If it is right, delete the entry `{lock.key(dest)}` "
            f"from {lock.path} and rename it to {dest}; if not, delete it and get {dest.name} by hand")
    return digest


def _obtain(requirement: Requirement, raw_dir: Path, lock: ChecksumLock, downloader: Callable,
            progress: bool) -> None:
    """Download (and unpack) one annotation file; an archive is recorded in the lock once it extracted."""
    download = requirement.download
    if download.unpack == "none":
        dest = raw_dir / download.file
        lock.verify_or_record(dest, _fetch(download, dest, lock, downloader, progress))
        return
    archive = raw_dir / "downloads" / download.file
    digest = _fetch(download, archive, lock, downloader, progress)
    extract_members(archive, [requirement.member], raw_dir)
    lock.verify_or_record(archive, digest)


def _problem(number: int, title: str, what: str, obtain: str, where: str, reason: str | None) -> str:
    lines = [f"  {number}. {title}: {what}"]
    if reason:
        lines.append(f"     automatic download failed: {reason}")
    lines += [f"     get it: {obtain}", f"     put it: {where}"]
    return "\n".join(lines)


def fetch_real_benchmark(name: str, source: BenchmarkSource, raw_dir: Path, split_names: set[str],
                         lock: ChecksumLock, *, downloader: Callable = download_file,
                         progress: bool = True) -> dict[str, dict]:
    """Make every needed file of a real benchmark available; returns {annotation file: {sha256, size}}.

    Raises `ManualStepRequired` listing every file that is still missing (with where to get it and where to put
    it); `ChecksumMismatch` when a file differs from its recorded or verified digest; `StorageError` when the
    disk is full or not writable. The lock is saved in every case, with every file verified so far.
    """
    try:
        annotations = _fetch_all(name, source, raw_dir, split_names, lock, downloader=downloader, progress=progress)
    except BaseException:
        if lock.entries:
            with contextlib.suppress(StorageError):  # a full disk must not hide the error that stopped the stage
                lock.save()
        raise
    if lock.entries:
        lock.save()
    return annotations


def _fetch_all(name: str, source: BenchmarkSource, raw_dir: Path, split_names: set[str], lock: ChecksumLock, *,
               downloader: Callable, progress: bool) -> dict[str, dict]:
    problems: list[tuple[str, str, str, str, str | None]] = []
    annotations: dict[str, dict] = {}
    failed: dict[str, str] = {}  # url -> why it failed: an archive serving several files is tried once
    for requirement in source.requirements:
        if not needed(requirement, split_names):
            continue
        reason = None
        if _present(raw_dir, requirement) is None and requirement.download is not None:
            reason = failed.get(requirement.download.url)
            if reason is None:
                try:
                    _obtain(requirement, raw_dir, lock, downloader, progress)
                except (DownloadError, ValueError, OSError) as error:
                    reason = failed[requirement.download.url] = str(error)
        present = _present(raw_dir, requirement)
        if present is None:
            where = " or ".join(str(raw_dir / p) for p in requirement.paths)
            problems.append((" or ".join(requirement.paths), requirement.what, requirement.obtain, where, reason))
            continue
        digest = lock.verify_or_record(present, **_verified(requirement.download, present))
        annotations[present.relative_to(raw_dir).as_posix()] = {"sha256": digest, "size": present.stat().st_size}
    videos = source.videos
    has_videos = raw_dir.is_dir() and bool(index_video_files(raw_dir, videos.extensions))
    reason = None
    if videos.download is not None:
        archive = raw_dir / "downloads" / videos.download.file
        done = archive.with_name(archive.name + ".extracted")  # written once every video member is out
        if not has_videos or (archive.is_file() and not done.is_file()):  # never fetched, or extraction cut short
            try:
                digest = _fetch(videos.download, archive, lock, downloader, progress)
                count = extract_videos(archive, raw_dir / "videos", videos.extensions, progress=progress)
                lock.verify_or_record(archive, digest)
                done.write_text(f"{count}\n")
                has_videos = bool(index_video_files(raw_dir, videos.extensions))
            except (DownloadError, ValueError, OSError) as error:
                reason = str(error)
    if not has_videos:
        problems.append(("videos", videos.what, videos.obtain,
                         f"under {raw_dir / 'videos'}/ (sub-folders are fine), named {videos.naming}; a video's id "
                         "is its file name minus the last extension", reason))
    if problems:
        listed = "\n".join(_problem(i + 1, *p) for i, p in enumerate(problems))
        raise ManualStepRequired(
            f"benchmark `{name}` is not complete: {len(problems)} item(s) missing under {raw_dir}\n{listed}\n"
            f"Licence: {source.licence}\n"
            f"Already have a copy elsewhere? Point data.raw_root at the folder that contains `{source.name}/` "
            f"(nothing is copied), or replace the empty folder by a link: rmdir {raw_dir} && ln -s /your/copy "
            f"{raw_dir}. Then run `dvc repro` again; "
            f"`diffusionret data check --benchmark {name}` checks a copy without running the pipeline."
        )
    return annotations


# ---------------------------------------------------------------- manifest -------------------------------------

def _relative_to_repo(path: Path, repo_root: Path) -> str:
    try:
        return path.resolve().relative_to(repo_root.resolve()).as_posix()
    except ValueError:
        return str(path.resolve())


def build_manifest(name: str, settings: BenchmarkParams, raw_dir: Path, repo_root: Path,
                   annotations: dict[str, dict], extensions=VIDEO_EXTENSIONS) -> dict:
    """What preprocess reads: the raw folder, the annotation files' digests and every video file with its size."""
    index = index_video_files(raw_dir, extensions)
    return {
        "format": MANIFEST_FORMAT, "benchmark": name, "source": settings.source, "reader": settings.reader,
        "raw_dir": _relative_to_repo(raw_dir, repo_root),
        "annotations": dict(sorted(annotations.items())),
        "videos": {video_id: [path.relative_to(raw_dir).as_posix(), path.stat().st_size]
                   for video_id, path in sorted(index.items())},
    }


def write_manifest(manifest: dict, path: Path) -> None:
    """Write the manifest atomically; identical content gives identical bytes (DVC then skips what follows)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_manifest(path: Path, repo_root: Path) -> tuple[dict, Path, dict[str, Path]]:
    """(manifest, raw folder, video id -> file) of a manifest written by the download stage."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run the download stage of this benchmark "
                                f"(`dvc repro download@{path.stem}`) first")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{path} has format {manifest.get('format')}, expected {MANIFEST_FORMAT}; re-run download")
    raw_dir = Path(manifest["raw_dir"])
    raw_dir = raw_dir if raw_dir.is_absolute() else repo_root / raw_dir
    return manifest, raw_dir, {video_id: raw_dir / rel for video_id, (rel, _) in manifest["videos"].items()}


def _synthetic_annotations(raw_dir: Path, settings: BenchmarkParams) -> dict[str, dict]:
    """Digests of the MSRVTT-layout files the synthetic generator wrote (those its splits use)."""
    split_names = set(settings.splits.values()) - {""}
    files = {}
    for requirement in SOURCES["msrvtt"].requirements:
        present = _present(raw_dir, requirement)
        if needed(requirement, split_names) and present is not None:
            files[present.name] = {"sha256": sha256_of(present), "size": present.stat().st_size}
    return files


def download_benchmark(name: str, settings: BenchmarkParams, out_dir: Path, *, workers: int = 1,
                       lock_file: Path | None = None, downloader: Callable = download_file,
                       progress: bool = True) -> dict:
    """Generate the synthetic benchmark or fetch/check a real one in `out_dir`; returns the annotation digests
    (real) or the generated counts (synthetic)."""
    out_dir = Path(out_dir)
    if settings.source == "synthetic":
        return generate_synthetic_once(settings, out_dir, workers=workers, progress=progress)
    source = source_of(settings.source)
    out_dir.mkdir(parents=True, exist_ok=True)
    lock = ChecksumLock(lock_file or out_dir / LOCK_NAME, out_dir)
    return fetch_real_benchmark(name, source, out_dir, set(settings.splits.values()) - {""}, lock,
                                downloader=downloader, progress=progress)


def run_download(name: str, params: Params, paths: Paths, *, workers: int | None = None,
                 downloader: Callable = download_file, progress: bool = True) -> dict:
    """The stage: make benchmark `name` available, then write its manifest; returns a short summary."""
    settings = params.benchmark(name)
    raw_dir = benchmark_raw_dir(paths, name, settings)
    workers = workers or min(2, os.cpu_count() or 1)
    if settings.source == "synthetic":
        counts = download_benchmark(name, settings, raw_dir, workers=workers, progress=progress)
        annotations, extensions = _synthetic_annotations(raw_dir, settings), VIDEO_EXTENSIONS
    else:
        raw_dir.mkdir(parents=True, exist_ok=True)
        annotations = download_benchmark(name, settings, raw_dir, lock_file=lock_path(paths, name, raw_dir),
                                         downloader=downloader, progress=progress)
        counts, extensions = {}, source_of(settings.source).videos.extensions
    manifest = build_manifest(name, settings, raw_dir, paths.root, annotations, extensions)
    write_manifest(manifest, manifest_path(paths, name))
    return {"raw_dir": str(raw_dir), "annotation_files": len(manifest["annotations"]),
            "video_files": len(manifest["videos"]), **counts}
