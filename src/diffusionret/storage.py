"""Writing large files so that a full disk, a quota or a read-only folder ends in a clear message, never a crash.

Every stage writes through these helpers where a write can be large (downloads, archive extraction, the frame
cache): `writing(path)` turns an OSError into `StorageError`, whose message names the file, says why, and what
to do; `reserve(file, nbytes)` allocates a file's full size before anything is written into it (so a full disk
is found before the work, not as a SIGBUS half-way through a memory map); `NpyRowWriter` writes a `.npy` array
row by row with plain writes (no memory map) under a temporary name and renames it when complete.

`is_permanent(error)` tells a disk or permission problem (retrying cannot help) from a transient one.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

# errors no retry can fix: the disk or quota is full, the file is too large, the folder is not writable
NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
NO_PERMISSION = {errno.EACCES, errno.EPERM, errno.EROFS}
PERMANENT_ERRNOS = NO_SPACE | NO_PERMISSION


class StorageError(RuntimeError):
    """A file could not be written (disk full, quota, permissions, I/O error); the message says which and how
    to fix it. What was finished before is kept."""


def is_permanent(error: BaseException) -> bool:
    """Whether an OSError is a disk/permission problem that retrying cannot fix."""
    return isinstance(error, OSError) and error.errno in PERMANENT_ERRNOS


def explain(error: OSError, path: Path | str, what: str = "writing") -> str:
    """One message for a failed write: the file, the system's reason, and the fix."""
    reason = f"{os.strerror(error.errno)} (errno {error.errno})" if error.errno else f"short write: {error}"
    folder = Path(path).parent
    if not error.errno:  # numpy and others report a short write without an errno: the disk filled up
        fix = (f"free space on the disk (or quota) that holds {folder} (`df -h {folder}`), or raise a `ulimit -f` "
               "file-size limit")
    elif error.errno == errno.EFBIG:
        fix = (f"the file system of {folder} (or a `ulimit -f` limit) does not allow a file this large: raise the "
               "limit or point the setting that names this folder at another file system")
    elif error.errno in NO_SPACE:
        fix = (f"free space on the disk (or quota) that holds {folder} (`df -h {folder}`), or point the setting "
               "that names this folder at a larger disk")
    elif error.errno in NO_PERMISSION:
        fix = (f"make {folder} writable for this user (it is read-only or owned by someone else), or point the "
               "setting that names this folder elsewhere")
    else:
        fix = f"check the disk that holds {folder} (`dmesg` shows I/O errors)"
    return (f"{what} {path} failed: {reason}. Fix: {fix}; then run again: everything "
            "finished before this file is kept and is not redone")


@contextlib.contextmanager
def writing(path: Path | str, what: str = "writing") -> Iterator[None]:
    """Turn any OSError raised inside the block into a `StorageError` naming `path` and the fix."""
    try:
        yield
    except StorageError:
        raise
    except OSError as error:
        raise StorageError(explain(error, path, what)) from error


def reserve(handle, nbytes: int) -> None:
    """Allocate `nbytes` for an open file so a full disk fails here, at once, before any work is written.

    Linux fallocate(2) only: a file system that cannot pre-allocate (some network file systems) is left alone
    (the plain writes that follow still report ENOSPC); glibc's posix_fallocate is not used because it falls
    back to writing every block, which on such a file system doubles the cost of a large file."""
    if nbytes <= 0 or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    if libc.fallocate(handle.fileno(), 0, 0, nbytes) != 0:
        code = ctypes.get_errno()
        if code in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            return
        raise OSError(code, os.strerror(code), str(getattr(handle, "name", "")))


class NpyRowWriter:
    """Write a `.npy` array of `shape` row by row (axis 0) with plain writes: `rows.write(block)` appends rows.

    The file is `<path>.tmp` while it is written, with its full size reserved first; `close()` checks that every
    row arrived and renames it to `path`. Every OSError becomes a `StorageError` naming the file.
    """

    def __init__(self, path: Path | str, shape: tuple[int, ...], dtype):
        self.path, self.shape, self.dtype = Path(path), tuple(shape), np.dtype(dtype)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self.rows = 0
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": self.shape}
        with writing(self.tmp):
            self.handle = self.tmp.open("wb")
            try:
                np.lib.format.write_array_header_2_0(self.handle, header)
                reserve(self.handle, self.handle.tell() + self.shape[0] * self.row_bytes)
            except BaseException:
                self.handle.close()
                self.tmp.unlink(missing_ok=True)
                raise

    def write(self, block: np.ndarray) -> None:
        """Append rows: `block` has shape (n, *shape[1:])."""
        block = np.ascontiguousarray(block, dtype=self.dtype)
        if block.shape[1:] != self.shape[1:] or self.rows + len(block) > self.shape[0]:
            raise ValueError(f"{self.path}: rows of shape {block.shape} do not fit an array of shape {self.shape} "
                             f"after {self.rows} rows")
        with writing(self.tmp):
            self.handle.write(block.tobytes())
        self.rows += len(block)

    def close(self) -> None:
        """Finish the file: every row must have been written; then rename it to its final name."""
        with writing(self.tmp):
            self.handle.close()
        if self.rows != self.shape[0]:
            self.tmp.unlink(missing_ok=True)
            raise ValueError(f"{self.path}: {self.rows} of {self.shape[0]} rows written")
        with writing(self.path):
            os.replace(self.tmp, self.path)

    def abort(self) -> None:
        """Drop the unfinished temporary file (it holds nothing of value)."""
        with contextlib.suppress(OSError):
            self.handle.close()
        self.tmp.unlink(missing_ok=True)
