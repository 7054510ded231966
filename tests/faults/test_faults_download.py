"""Download faults through the real `download` stage entry point against a local server: a login page served as
the archive, a lock holding an unverified digest, a hand-placed fake file, damaged archives, two downloads at
once, a body cut short without a length, a full disk or read-only folder, and an edited raw file."""

import errno
import hashlib
import json
import pathlib
import threading
from pathlib import Path

import pytest
import yaml
from faultlib import (CAPTIONS, REPO, TEST_LIST, first_line, run_stage_in_process, tar_bytes, tiny_source,
                      zip_bytes)

from diffusionret.data import sources
from diffusionret.data.download import download_file

pytestmark = pytest.mark.faults

LOGIN_PAGE = b"<html><body>Please sign in to continue</body></html>\n"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def lock_of(raw: Path) -> dict:
    return json.loads((raw / "checksums.lock.json").read_text())["files"]


def test_login_page_as_archive_does_not_poison_the_lock(tiny_msvd, server, fault, monkeypatch, capsys):
    raw = tiny_msvd
    archive = server.files["/videos.zip"]
    server.files["/videos.zip"] = LOGIN_PAGE  # a login page with status 200
    code, err = run_stage_in_process("download", "msvd", monkeypatch, capsys)
    assert code == 2 and "videos.zip" in err
    assert "downloads/videos.zip" not in lock_of(raw), "an archive that did not extract must not be locked"
    (raw / "downloads" / "videos.zip").unlink()  # as the message says
    server.files["/videos.zip"] = archive  # the server works again
    before = lock_of(raw)
    fault.watch(raw, grows=("checksums.lock.json",))
    code, err = run_stage_in_process("download", "msvd", monkeypatch, capsys)
    lost = fault.record("login page served as the video archive, then the real one",
                        "exit 0 on the second run; the real archive is accepted and locked",
                        f"exit {code}: {first_line(err) or 'ok'}")
    assert code == 0, err
    assert lock_of(raw)["downloads/videos.zip"]["sha256"] == sha(archive)
    assert {k: v for k, v in lock_of(raw).items() if k in before} == before, "earlier entries are unchanged"
    assert sorted(p.name for p in (raw / "videos").iterdir()) == ["a.mp4", "b.mp4"]
    assert lost == []


def test_unverified_locked_digest_never_deletes_a_fresh_download(tiny_msvd, server, fault, monkeypatch, capsys):
    raw = tiny_msvd
    assert run_stage_in_process("download", "msvd", monkeypatch, capsys)[0] == 0
    recorded = lock_of(raw)["test_list.txt"]["sha256"]
    (raw / "test_list.txt").unlink()  # the user removes the file; the server now has other content
    server.files["/test_list.txt"] = b"a\nb\nc\n"
    fault.watch(raw)
    code, err = run_stage_in_process("download", "msvd", monkeypatch, capsys)
    lost = fault.record("fresh download differs from an unverified digest in the lock",
                        "exit 2; both digests named; the new file kept aside as .new",
                        f"exit {code}: {first_line(err)}")
    assert code == 2
    assert "test_list.txt" in err and recorded in err and sha(b"a\nb\nc\n") in err
    assert (raw / "test_list.txt.new").read_bytes() == b"a\nb\nc\n"
    assert "delete the entry `test_list.txt`" in err
    assert lost == []


def test_hand_placed_file_is_checked_against_the_verified_digest(repo, server, fault, monkeypatch, capsys):
    edit = {"benchmarks.msvd.splits": {"train": "test", "val": "test", "test": "test"}}
    from faultlib import edit_params
    edit_params(repo, **edit)
    raw = repo / "data" / "raw" / "msvd"
    (raw / "videos").mkdir(parents=True)
    for name in ("a.mp4", "b.mp4"):
        (raw / "videos" / name).write_bytes(b"x")
    (raw / "captions_msvd.json").write_bytes(CAPTIONS)
    (raw / "test_list.txt").write_bytes(b"a\n")  # a one-line fake of a file whose digest is verified
    monkeypatch.setitem(sources.SOURCES, "msvd", tiny_source(server.url, list_digest=sha(TEST_LIST), verified=True))
    fault.watch(raw)
    code, err = run_stage_in_process("download", "msvd", monkeypatch, capsys)
    lost = fault.record("hand-placed file differs from the registry's verified digest",
                        "exit 2 naming the file, both digests and where to get the right one",
                        f"exit {code}: {first_line(err)}")
    assert code == 2 and str(raw / "test_list.txt") in err and sha(TEST_LIST) in err and sha(b"a\n") in err
    assert server.url in err
    assert lost == []


@pytest.mark.parametrize("kind", ["truncated tar", "corrupt zip"])
def test_damaged_archive_is_a_message_and_keeps_the_download(tiny_msvd, server, fault, monkeypatch, capsys, kind):
    raw = tiny_msvd
    videos = {"clips/a.mp4": bytes(range(256)) * 40, "clips/b.mp4": bytes(range(255, -1, -1)) * 40}
    if kind == "truncated tar":
        data = tar_bytes(videos)
        data = data[: len(data) // 2]
        monkeypatch.setitem(sources.SOURCES, "msvd", tiny_source(server.url, videos="videos.tar", unpack="tar"))
        name = "videos.tar"
    else:
        data = bytearray(zip_bytes(videos))
        data[60:90] = b"\xff" * 30  # inside the first member's data: a CRC error when it is read
        data = bytes(data)
        name = "videos.zip"
    server.files[f"/{name}"] = data
    code, err = run_stage_in_process("download", "msvd", monkeypatch, capsys)
    archive = raw / "downloads" / name
    fault.watch(raw)
    code_again, err_again = run_stage_in_process("download", "msvd", monkeypatch, capsys)
    lost = fault.record(f"{kind} as the video archive", "exit 2 naming the archive; archive kept; no .part left; "
                        "lock saved for the verified files", f"exit {code}: {first_line(err)}")
    for status, text in ((code, err), (code_again, err_again)):
        assert status == 2 and str(archive) in text and "damaged" in text and "delete it and run again" in text
    assert archive.read_bytes() == data, "the downloaded archive is kept"
    assert not [p for p in raw.rglob("*.part")], "no partial member is left behind"
    locked = lock_of(raw)
    assert set(locked) == {"test_list.txt", "captions_msvd.json"}, "the archive is not locked, the rest is"
    assert lost == []


def test_two_downloads_of_one_file_at_once(server, tmp_path, fault):
    payload = bytes(range(256)) * 1200  # 307,200 bytes, sent slowly in 8 pieces
    server.files["/big.bin"] = payload
    server.modes["/big.bin"] = "slow"
    dest = tmp_path / "big.bin"
    fault.watch(tmp_path)
    results, errors = [], []

    def fetch():
        try:
            results.append(download_file(f"{server.url}/big.bin", dest, progress=False, retries=0))
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=fetch) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    lost = fault.record("two downloads of one file at once", "one transfer; both calls get the same complete file",
                        f"{len(server.log)} transfer(s), {dest.stat().st_size if dest.exists() else 0} bytes, "
                        f"errors {errors}")
    assert errors == [] and dest.read_bytes() == payload
    assert results == [sha(payload)] * 2 and len(server.log) == 1
    assert not (tmp_path / "big.bin.lock").exists() and not (tmp_path / "big.bin.part").exists()
    assert lost == []


def test_body_cut_short_without_length_or_digest_is_refused(tiny_msvd, server, fault, monkeypatch, capsys):
    raw = tiny_msvd
    server.modes["/captions_msvd.json"] = "nolength"
    fault.watch(raw)
    code, err = run_stage_in_process("download", "msvd", monkeypatch, capsys)
    lost = fault.record("body cut short, no Content-Length, no known digest", "exit 2; nothing accepted",
                        f"exit {code}: {first_line(err)}")
    assert code == 2 and "captions_msvd.json" in err and "without announcing a length" in err
    assert not (raw / "captions_msvd.json").exists(), "a body that may be cut short is never accepted"
    assert "captions_msvd.json" not in lock_of(raw)
    assert lost == []


@pytest.mark.parametrize("code_name,at", [("ENOSPC", "write"), ("EDQUOT", "write"), ("EACCES", "open"),
                                          ("EROFS", "open")])
def test_permanent_os_errors_are_not_retried(tiny_msvd, server, fault, monkeypatch, capsys, code_name, at):
    raw = tiny_msvd
    raw.mkdir(parents=True)
    (raw / "captions_msvd.json.part").write_bytes(CAPTIONS[:10])  # an earlier interrupted transfer
    number = getattr(errno, code_name)
    real_open = pathlib.Path.open

    class FailingWrites:
        def __init__(self, handle):
            self.handle = handle

        def write(self, data):
            raise OSError(number, "injected")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    def failing_open(self, mode="r", *args, **kwargs):
        if self.name.endswith(".part") and "captions" in self.name and mode in ("wb", "ab"):
            if at == "open":
                raise OSError(number, "injected", str(self))
            return FailingWrites(real_open(self, mode, *args, **kwargs))
        return real_open(self, mode, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "open", failing_open)
    fault.watch(raw)
    code, err = run_stage_in_process("download", "msvd", monkeypatch, capsys)
    requests = server.log.count("/captions_msvd.json")
    lost = fault.record(f"{code_name} while downloading", "exit 2 at once (no retries), file and fix named",
                        f"exit {code} after {requests} request(s): {first_line(err)}")
    assert code == 2 and requests == 1
    assert "captions_msvd.json.part" in err and ("free space" in err or "writable" in err)
    assert lost == []


def test_edited_raw_file_is_rechecked_and_an_unchanged_manifest_is_stable(tiny_msvd, fault, monkeypatch, capsys):
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["download"]["do"]
    manifest = tiny_msvd.parents[1] / "manifests" / "msvd.json"
    assert run_stage_in_process("download", "msvd", monkeypatch, capsys)[0] == 0
    first = manifest.read_bytes()
    assert run_stage_in_process("download", "msvd", monkeypatch, capsys)[0] == 0
    assert manifest.read_bytes() == first, "same files, same manifest bytes: later stages stay cached"
    (tiny_msvd / "test_list.txt").write_text("a\n")  # an edit by hand
    fault.watch(tiny_msvd, manifest.parent)
    code, err = run_stage_in_process("download", "msvd", monkeypatch, capsys)
    lost = fault.record("raw csv edited after download", "download re-runs every repro (always_changed); exit 2 "
                        "naming the file", f"always_changed={stage.get('always_changed')}, exit {code}: "
                        f"{first_line(err)}")
    assert stage.get("always_changed") is True, "dvc must re-run the check of the raw files on every repro"
    assert code == 2 and str(tiny_msvd / "test_list.txt") in err and "changed since it was recorded" in err
    assert lost == []
