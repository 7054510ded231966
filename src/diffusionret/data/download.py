"""Downloads that can be trusted: resume, atomic rename, retries with back-off, checksums, a lock file.

`download_file` streams a URL into `<dest>.part`, resuming an interrupted transfer with an HTTP Range request,
and renames the part to `dest` only after the size and the sha256 match (when known): a file under its final name
is always complete. A body is accepted only when its length is known (the expected size, `Content-Length`, or
the total of `Content-Range`) and was received in full, or when its sha256 is known and matches. One process at a
time downloads a given file (an `fcntl` lock on `<dest>.lock`); a second one waits, then finds the file done.
Transient failures (connection errors, time-outs, HTTP 5xx/429, truncated bodies) are retried with exponential
back-off; a 4xx answer (a dead link) stops at once, and so does a disk or permission problem (`StorageError`:
ENOSPC, EDQUOT, EACCES, EROFS, ...), which no retry can fix.

`ChecksumLock` is the benchmark's lock file: the sha256 and size of every file it has seen, written the first
time a file is downloaded or found (an archive: only once it extracted without error), and checked on every later
run, so a file that changes afterwards (a re-download of a moved target, a hand edit, a truncated copy) is an
error naming the file and both digests. A digest from the source registry that was verified against a byte-exact
copy is checked too, also for a file the user put there by hand.

`extract_members` / `extract_videos` unpack zip and tar archives file by file (temporary name, then rename), by
base name only, so an archive cannot write outside the benchmark folder. A damaged archive (truncated tar, bad
zip) raises `ArchiveError` naming it; the archive is kept and no partial member is left behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import json
import os
import socket
import sys
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from tqdm import tqdm

from diffusionret.storage import StorageError, explain, is_permanent, writing

CHUNK_BYTES = 1 << 20
USER_AGENT = "diffusionret-download/1 (+https://github.com/; research data fetch)"
FULL_HASH_LIMIT = 256 << 20  # files up to this size are re-hashed on every run; larger ones when size/mtime change


class DownloadError(RuntimeError):
    """A file could not be downloaded (dead link, server error, no network)."""


class ChecksumMismatch(DownloadError):
    """A file's sha256 (or size) differs from the expected one."""


class ArchiveError(DownloadError):
    """An archive is damaged (truncated, bad CRC, not an archive at all)."""


# errors a damaged archive raises while it is listed or read
ARCHIVE_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, tarfile.TarError, zlib.error, EOFError)


def sha256_of(path: Path, chunk: int = CHUNK_BYTES) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _retryable(error: BaseException) -> bool:
    if isinstance(error, urllib.error.HTTPError):
        return error.code >= 500 or error.code in (408, 429)
    if is_permanent(error):  # disk full, quota, permissions: retrying only wastes the back-off
        return False
    return isinstance(error, (urllib.error.URLError, http.client.HTTPException, ConnectionError, socket.timeout,
                              TimeoutError, OSError))


@contextlib.contextmanager
def exclusive(target: Path) -> Iterator[None]:
    """Hold an exclusive `fcntl` lock on `<target>.lock` (created, and removed on exit): one writer per file.

    A waiting process re-checks after it gets the lock that the lock file is still the one on disk (the holder
    removes it on exit), so two processes never both believe they hold it."""
    lock_path = target.with_name(target.name + ".lock")
    while True:
        with writing(lock_path, "creating the lock file"):
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                print(f"waiting for another process that downloads {target} ...", file=sys.stderr)
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                current = os.stat(lock_path).st_ino
            except FileNotFoundError:
                current = None
            if current == os.fstat(fd).st_ino:
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # the holder removed the lock file while we waited: lock the new one
    try:
        yield
    finally:
        lock_path.unlink(missing_ok=True)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _content_range_total(header: str | None) -> int | None:
    """The complete length of `Content-Range: bytes a-b/N` or `bytes */N` (None if absent or unknown)."""
    if not header or "/" not in header:
        return None
    total = header.rsplit("/", 1)[1].strip()
    return int(total) if total.isdigit() else None


def _content_range_start(header: str | None) -> int | None:
    """The first byte of `Content-Range: bytes a-b/N` (None if absent)."""
    if not header or not header.startswith("bytes ") or "-" not in header:
        return None
    start = header[len("bytes "):].split("-", 1)[0].strip()
    return int(start) if start.isdigit() else None


def _open(url: str, offset: int, timeout: float):
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _transfer(url: str, part: Path, timeout: float, progress: bool, label: str) -> int | None:
    """One attempt: append the rest of `url` to `part` (resuming with Range when it exists); returns the complete
    length the server announced (Content-Range total or Content-Length), None when it announced none."""
    offset = part.stat().st_size if part.exists() else 0
    try:
        response = _open(url, offset, timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:  # range not satisfiable: complete if the server's length equals ours
            total = _content_range_total(error.headers.get("Content-Range"))
            if total == offset:
                return total
            part.unlink()
            raise ConnectionError(f"the server refused to resume at byte {offset}; starting over") from error
        raise
    with response:
        status = getattr(response, "status", 200)
        if offset and (status != 206 or _content_range_start(response.headers.get("Content-Range")) != offset):
            offset = 0  # the server ignored the range (or answered another one): start again
        length = response.headers.get("Content-Length")
        expected = int(length) if length is not None and length.isdigit() else None
        total = _content_range_total(response.headers.get("Content-Range")) if offset else None
        if total is None and expected is not None:
            total = offset + expected
        received = 0
        mode = "ab" if offset else "wb"
        with part.open(mode) as f, tqdm(total=total, initial=offset, unit="B", unit_scale=True, desc=label,
                                        disable=not progress) as bar:
            while block := response.read(CHUNK_BYTES):
                f.write(block)
                received += len(block)
                bar.update(len(block))
        if expected is not None and received < expected:
            raise http.client.IncompleteRead(b"", expected - received)
    if total is not None and part.stat().st_size != total:  # e.g. a part another program appended to
        part.unlink()
        raise ConnectionError(f"{part} holds {part.stat().st_size if part.exists() else 0} bytes, not the {total} "
                              "the server announced; starting over")
    return total


def download_file(url: str, dest: Path, *, sha256: str | None = None, size: int | None = None, retries: int = 4,
                  timeout: float = 60.0, backoff_s: float = 2.0, progress: bool = True,
                  sleep: Callable[[float], None] = time.sleep) -> str:
    """Fetch `url` to `dest` atomically (resume, retries, checks); returns the file's sha256.

    `sha256`/`size`: the expected digest and byte count, when known. A mismatch deletes the part file (it cannot be
    resumed into a correct one) and raises `ChecksumMismatch`; after `retries` failed attempts `DownloadError` is
    raised and `<dest>.part` is kept, so the next call resumes where this one stopped. A disk or permission
    problem raises `StorageError` at once. Holds `exclusive(dest)` throughout: a concurrent call for the same
    file waits, then returns the file the first one finished.
    """
    dest = Path(dest)
    with writing(dest.parent, "creating the folder"):
        dest.parent.mkdir(parents=True, exist_ok=True)
    with exclusive(dest):
        if dest.is_file():  # finished by another process while this one waited for the lock
            return _check_complete(url, dest, sha256, size)
        return _download_locked(url, dest, sha256=sha256, size=size, retries=retries, timeout=timeout,
                                backoff_s=backoff_s, progress=progress, sleep=sleep)


def _check_complete(url: str, dest: Path, sha256: str | None, size: int | None) -> str:
    """The digest of a file another process downloaded, checked against what is expected (never deleted)."""
    digest = sha256_of(dest)
    if (sha256 is not None and digest != sha256.lower()) or (size is not None and dest.stat().st_size != size):
        raise ChecksumMismatch(f"{dest} (from {url}) was written while this download waited, but its sha256 is "
                               f"{digest} ({dest.stat().st_size} bytes), not {sha256} ({size} bytes) as expected; "
                               "it was left alone: delete it and run again to download it once more")
    return digest


def _download_locked(url: str, dest: Path, *, sha256: str | None, size: int | None, retries: int, timeout: float,
                     backoff_s: float, progress: bool, sleep: Callable[[float], None]) -> str:
    part = dest.with_name(dest.name + ".part")
    label = dest.name if len(dest.name) <= 30 else dest.name[:27] + "..."
    last_error: BaseException | None = None
    total = None
    for attempt in range(retries + 1):
        if attempt:
            sleep(backoff_s * 2 ** (attempt - 1))
        try:
            total = _transfer(url, part, timeout, progress, label)
            last_error = None
            break
        except BaseException as error:  # noqa: BLE001 - classified just below
            if isinstance(error, KeyboardInterrupt) or not _retryable(error):
                if isinstance(error, urllib.error.HTTPError):
                    raise DownloadError(f"{url} answered HTTP {error.code} ({error.reason}): the link is dead or "
                                        f"needs a login; nothing was saved to {dest}") from error
                if is_permanent(error):
                    kept = part.stat().st_size if part.exists() else 0
                    raise StorageError(explain(error, part, f"downloading {url} to") +
                                       f" ({kept} bytes already downloaded are kept and resumed)") from error
                raise
            last_error = error
    if last_error is not None:
        kept = part.stat().st_size if part.exists() else 0
        raise DownloadError(f"could not download {url} to {dest} after {retries + 1} attempts: "
                            f"{type(last_error).__name__}: {last_error}. {kept} bytes are kept in {part}; run the "
                            "stage again to resume") from last_error
    if total is None and size is None and sha256 is None:
        raise DownloadError(f"{url} sent {part.stat().st_size} bytes without announcing a length (no Content-Length "
                            f"or Content-Range), and no size or sha256 of {dest.name} is known, so a body cut short "
                            f"cannot be told from a complete one; it is kept as {part}, unused. Get {dest.name} by "
                            f"hand and put it at {dest}")
    actual_size = part.stat().st_size
    if size is not None and actual_size != size:
        part.unlink()
        raise ChecksumMismatch(f"{url} gave {actual_size} bytes but {size} were expected; the partial file was "
                               f"removed. The file at that address has changed, or the transfer was corrupted: "
                               f"run again, and if it repeats, get {dest.name} by hand")
    digest = sha256_of(part)
    if sha256 is not None and digest != sha256.lower():
        part.unlink()
        raise ChecksumMismatch(f"sha256 of the download of {url} ({dest.name}) is {digest} but {sha256} was "
                               "expected; the file was removed. The file at that address has changed, or the "
                               "transfer was corrupted: run again, and if it repeats, get it by hand")
    os.replace(part, dest)
    return digest


class ChecksumLock:
    """sha256 + size of every file of a benchmark, recorded once and verified on every later run."""

    def __init__(self, path: Path, root: Path):
        self.path, self.root = Path(path), Path(root)
        self.entries: dict[str, dict] = {}
        if self.path.is_file():
            try:
                self.entries = json.loads(self.path.read_text())["files"]
            except (ValueError, KeyError, TypeError) as error:
                raise ValueError(f"checksum lock {self.path} is unreadable ({error}); delete it to record the "
                                 "current files again") from error

    def key(self, file: Path) -> str:
        """The entry name of a file: its path relative to the lock's root."""
        return Path(file).resolve().relative_to(self.root.resolve()).as_posix()

    def verify_or_record(self, file: Path, digest: str | None = None, *, verified_sha256: str | None = None,
                         verified_size: int | None = None, origin: str = "", record: bool = True) -> str:
        """Check `file` against a verified registry digest (when given) and its recorded digest, then record it
        (computing the digest if not given; `record=False` only checks)."""
        file = Path(file)
        key, stat = self.key(file), file.stat()
        entry = self.entries.get(key)
        if entry is not None and entry["size"] == stat.st_size and stat.st_size > FULL_HASH_LIMIT \
                and entry.get("mtime_ns") == stat.st_mtime_ns and digest is None \
                and verified_sha256 in (None, entry["sha256"]):
            return entry["sha256"]  # a big unchanged file: trust size + mtime instead of re-reading it
        digest = digest or sha256_of(file)
        if verified_sha256 is not None and (digest != verified_sha256.lower()
                                            or verified_size not in (None, stat.st_size)):
            raise ChecksumMismatch(
                f"{file} is not the expected file: sha256 {digest} ({stat.st_size} bytes), but the verified "
                f"sha256 of {file.name} is {verified_sha256} ({verified_size} bytes). Replace it with the file "
                f"from {origin or 'its source'}, or move it away and run again to download it")
        if entry is not None and (entry["sha256"] != digest or entry["size"] != stat.st_size):
            raise ChecksumMismatch(
                f"{file} changed since it was recorded in {self.path}: sha256 {digest} ({stat.st_size} bytes) now, "
                f"{entry['sha256']} ({entry['size']} bytes) recorded. Restore the original file, or, if the change "
                f"is intended, delete the entry `{key}` from {self.path} (or the whole lock) and run again")
        if record:
            self.entries[key] = {"sha256": digest, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        return digest

    def save(self) -> None:
        """Write the lock atomically (sorted, so an unchanged lock is byte-identical)."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        with writing(self.path, "saving the checksum lock"):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps({"files": dict(sorted(self.entries.items()))}, indent=1) + "\n")
            os.replace(tmp, self.path)


# ---------------------------------------------------------------- archives ------------------------------------

def _damaged(archive: Path, error: BaseException) -> ArchiveError:
    return ArchiveError(f"{archive} is damaged ({type(error).__name__}: {error}): it was probably cut short or "
                        "corrupted in transfer. It is kept as it is (with whatever was extracted from it); check it "
                        f"with `unzip -t` or `tar tf`, then delete it and run again to download it anew, or put an "
                        "intact copy in its place")


@contextlib.contextmanager
def _archive_files(archive: Path) -> Iterator[list[tuple[str, int, Callable]]]:
    """(member name, size, opener) of every regular file of a zip or tar archive, while it is open.

    Raises `ArchiveError` for a damaged archive, whether found while listing or while reading a member."""
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as handle:
                yield [(info.filename, info.file_size, lambda info=info: handle.open(info))
                       for info in handle.infolist() if not info.is_dir()]
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as handle:
                yield [(info.name, info.size, lambda info=info: handle.extractfile(info))
                       for info in handle.getmembers() if info.isfile()]
        else:
            raise ArchiveError(f"{archive} is neither a zip nor a tar archive (a web page saved under the archive's "
                               "name?); delete it and run again to re-download it")
    except ARCHIVE_ERRORS as error:
        raise _damaged(archive, error) from error


def _copy_atomic(opener: Callable, size: int, dest: Path) -> None:
    """Copy one member to `dest` through `<dest>.part`; a failed copy leaves no part behind."""
    if dest.is_file() and dest.stat().st_size == size:
        return  # extracted by an earlier (interrupted) run
    tmp = dest.with_name(dest.name + ".part")
    try:
        with opener() as source, writing(tmp, "extracting to"), tmp.open("wb") as out:
            while block := source.read(CHUNK_BYTES):
                out.write(block)
        if tmp.stat().st_size != size:
            raise EOFError(f"member {dest.name} gave {tmp.stat().st_size} bytes, the archive lists {size}")
        with writing(dest, "extracting to"):
            os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def extract_members(archive: Path, wanted: Iterable[str], out_dir: Path) -> dict[str, Path]:
    """Extract the members whose base names are in `wanted` to out_dir/<base name>; each must occur exactly once."""
    extracted = {}
    with _archive_files(Path(archive)) as files:
        by_name: dict[str, list] = {}
        for name, size, opener in files:
            by_name.setdefault(Path(name).name, []).append((name, size, opener))
        for base in wanted:
            matches = by_name.get(base, [])
            if len(matches) != 1:
                shown = ", ".join(name for name, _, _ in files[:15])
                raise ValueError(f"{archive}: expected exactly one member named {base!r}, found {len(matches)} "
                                 f"({[m[0] for m in matches]}); the archive holds: {shown}")
            _, size, opener = matches[0]
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            _copy_atomic(opener, size, Path(out_dir) / base)
            extracted[base] = Path(out_dir) / base
    return extracted


def extract_videos(archive: Path, out_dir: Path, extensions: Iterable[str], *, progress: bool = True) -> int:
    """Extract every member with a video extension to out_dir/<base name> (resumable); returns their number."""
    wanted = {e.lower() for e in extensions}
    with _archive_files(Path(archive)) as files:
        videos = [(name, size, opener) for name, size, opener in files
                  if os.path.splitext(name)[1].lower() in wanted and not Path(name).name.startswith("._")]
        seen: dict[str, str] = {}
        for name, _, _ in videos:
            base = Path(name).name
            if base in seen:
                raise ValueError(f"{archive}: two video members share the file name {base!r} ({seen[base]} and "
                                 f"{name}); extract the archive by hand and keep one of them")
            seen[base] = name
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        for name, size, opener in tqdm(videos, desc=f"extracting {Path(archive).name}", unit="file",
                                       disable=not progress):
            _copy_atomic(opener, size, Path(out_dir) / Path(name).name)
    return len(videos)
