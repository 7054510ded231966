"""storage.py: the row-by-row .npy writer gives the file np.save gives; a failed write is a StorageError."""

import errno

import numpy as np
import pytest

from diffusionret.storage import NpyRowWriter, StorageError, explain, is_permanent, writing


def test_rows_written_one_by_one_load_as_the_whole_array(tmp_path):
    array = np.random.default_rng(0).integers(0, 255, (5, 3, 4, 4, 3), dtype=np.uint8)  # (V, T, S, S, 3)
    writer = NpyRowWriter(tmp_path / "frames.npy", array.shape, np.uint8)
    for row in array:
        writer.write(row[None])
    assert not (tmp_path / "frames.npy").exists(), "the final name appears only when every row is written"
    writer.close()
    np.testing.assert_array_equal(np.load(tmp_path / "frames.npy"), array)
    np.testing.assert_array_equal(np.load(tmp_path / "frames.npy", mmap_mode="r"), array)
    assert not (tmp_path / "frames.npy.tmp").exists()


def test_missing_rows_and_empty_arrays(tmp_path):
    writer = NpyRowWriter(tmp_path / "a.npy", (2, 3), np.float32)
    writer.write(np.ones((1, 3)))
    with pytest.raises(ValueError, match="1 of 2 rows"):
        writer.close()
    assert not (tmp_path / "a.npy").exists() and not (tmp_path / "a.npy.tmp").exists()
    empty = NpyRowWriter(tmp_path / "e.npy", (0, 4, 4), np.uint8)
    empty.close()
    assert np.load(tmp_path / "e.npy").shape == (0, 4, 4)


def test_os_errors_become_messages_naming_the_file():
    full = OSError(errno.ENOSPC, "No space left on device")
    assert is_permanent(full) and not is_permanent(OSError(errno.ECONNRESET, "reset"))
    with pytest.raises(StorageError) as error:
        with writing("/data/frames/x.npy"):
            raise full
    assert "/data/frames/x.npy" in str(error.value) and "free space" in str(error.value)
    assert "writable" in explain(OSError(errno.EROFS, "Read-only file system"), "/ro/file")
