"""Downloads against a local HTTP server: success, resume, checksum mismatch, server errors, archives, the lock."""

import hashlib
import http.server
import io
import threading
import zipfile

import pytest

from diffusionret.data.download import (ChecksumLock, ChecksumMismatch, DownloadError, download_file,
                                        extract_members, extract_videos)
from diffusionret.data.sources import BenchmarkSource, Download, Requirement, VideoSource
from diffusionret.pipeline.download import ManualStepRequired, fetch_real_benchmark

PAYLOAD = bytes(range(256)) * 3000  # 768,000 bytes: several 1 MiB-or-less chunks, cut in the middle


class Handler(http.server.BaseHTTPRequestHandler):
    """Serves `server.files[path]`; `server.modes[path]` makes a path misbehave; every request is logged."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        server = self.server
        server.log.append((self.path, self.headers.get("Range")))
        mode = server.modes.get(self.path, "ok")
        count = sum(1 for p, _ in server.log if p == self.path)
        if mode == "error" or (mode == "flaky" and count <= 2):
            self.send_error(500 if mode == "error" else 503)
            return
        if self.path not in server.files:
            self.send_error(404)
            return
        data = server.files[self.path]
        start = 0
        header = self.headers.get("Range")
        honour_range = header is not None and mode != "norange"
        if honour_range:
            start = int(header.split("=")[1].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
        body = data[start:]
        self.send_response(206 if honour_range else 200)
        if honour_range:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if mode in ("cut", "norange") and count == 1:  # first transfer dies after a third of the body
            self.wfile.write(body[: len(body) // 3])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture()
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.files, httpd.modes, httpd.log = {}, {}, []
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def no_sleep(delays):
    return delays.append


def test_success_writes_verified_file(server, tmp_path):
    server.files["/a.bin"] = PAYLOAD
    digest = hashlib.sha256(PAYLOAD).hexdigest()
    dest = tmp_path / "sub" / "a.bin"
    got = download_file(server.url + "/a.bin", dest, sha256=digest, size=len(PAYLOAD), progress=True)
    assert got == digest and dest.read_bytes() == PAYLOAD
    assert not dest.with_name("a.bin.part").exists()
    assert server.log == [("/a.bin", None)]


def test_interrupted_transfer_is_kept_as_part_and_resumed_with_range(server, tmp_path):
    server.files["/a.bin"] = PAYLOAD
    server.modes["/a.bin"] = "cut"
    dest = tmp_path / "a.bin"
    with pytest.raises(DownloadError, match="resume"):
        download_file(server.url + "/a.bin", dest, retries=0, progress=False)
    part = tmp_path / "a.bin.part"
    assert not dest.exists(), "a partial file must never take the final name"
    assert part.read_bytes() == PAYLOAD[: len(PAYLOAD) // 3]
    digest = download_file(server.url + "/a.bin", dest, sha256=hashlib.sha256(PAYLOAD).hexdigest(), retries=0,
                           progress=False)
    assert dest.read_bytes() == PAYLOAD and not part.exists()
    assert server.log[-1] == ("/a.bin", f"bytes={len(PAYLOAD) // 3}-")
    assert digest == hashlib.sha256(PAYLOAD).hexdigest()


def test_retries_resume_within_one_call_and_restart_when_range_is_ignored(server, tmp_path):
    server.files["/r.bin"] = server.files["/n.bin"] = PAYLOAD
    server.modes.update({"/r.bin": "cut", "/n.bin": "norange"})
    for name in ("r.bin", "n.bin"):
        delays = []
        download_file(f"{server.url}/{name}", tmp_path / name, sha256=hashlib.sha256(PAYLOAD).hexdigest(),
                      retries=2, backoff_s=0.5, progress=False, sleep=no_sleep(delays))
        assert (tmp_path / name).read_bytes() == PAYLOAD and delays == [0.5]
    assert [r for p, r in server.log if p == "/r.bin"] == [None, f"bytes={len(PAYLOAD) // 3}-"]


def test_checksum_mismatch_removes_the_part_and_names_both_digests(server, tmp_path):
    server.files["/a.bin"] = PAYLOAD
    wrong = "0" * 64
    with pytest.raises(ChecksumMismatch) as error:
        download_file(server.url + "/a.bin", tmp_path / "a.bin", sha256=wrong, progress=False)
    assert wrong in str(error.value) and hashlib.sha256(PAYLOAD).hexdigest() in str(error.value)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ChecksumMismatch, match=f"{len(PAYLOAD)} bytes but 12 were expected"):
        download_file(server.url + "/a.bin", tmp_path / "a.bin", size=12, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_server_errors_are_retried_with_backoff_then_reported(server, tmp_path):
    server.modes["/e.bin"] = "error"
    delays = []
    with pytest.raises(DownloadError, match="after 3 attempts"):
        download_file(server.url + "/e.bin", tmp_path / "e.bin", retries=2, backoff_s=1.0, progress=False,
                      sleep=no_sleep(delays))
    assert delays == [1.0, 2.0] and len(server.log) == 3 and not (tmp_path / "e.bin").exists()
    server.files["/f.bin"] = PAYLOAD
    server.modes["/f.bin"] = "flaky"  # two 503s, then the file
    download_file(server.url + "/f.bin", tmp_path / "f.bin", retries=2, progress=False, sleep=no_sleep([]))
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD


def test_dead_link_fails_at_once(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_file(server.url + "/missing.bin", tmp_path / "m.bin", retries=3, progress=False,
                      sleep=no_sleep([]))
    assert len(server.log) == 1


def test_lock_records_then_detects_a_changed_file(tmp_path):
    file = tmp_path / "x.json"
    file.write_text("one")
    lock = ChecksumLock(tmp_path / "lock.json", tmp_path)
    first = lock.verify_or_record(file)
    lock.save()
    assert first == hashlib.sha256(b"one").hexdigest()
    file.write_text("two")
    reloaded = ChecksumLock(tmp_path / "lock.json", tmp_path)
    with pytest.raises(ChecksumMismatch) as error:
        reloaded.verify_or_record(file)
    message = str(error.value)
    assert "x.json" in message and first in message and hashlib.sha256(b"two").hexdigest() in message


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_archive_extraction_by_base_name(tmp_path):
    archive = tmp_path / "a.zip"
    archive.write_bytes(zip_bytes({"top/data/ann.json": b"{}", "top/videos/v1.mp4": b"1", "top/other/v2.avi": b"22",
                                   "top/readme.txt": b"r", "__MACOSX/top/videos/._v1.mp4": b"x"}))
    out = tmp_path / "out"
    assert extract_members(archive, ["ann.json"], out) == {"ann.json": out / "ann.json"}
    assert (out / "ann.json").read_bytes() == b"{}"
    assert extract_videos(archive, out / "videos", (".mp4", ".avi"), progress=False) == 2
    assert sorted(p.name for p in (out / "videos").iterdir()) == ["v1.mp4", "v2.avi"]
    with pytest.raises(ValueError, match="exactly one member named 'absent.csv'"):
        extract_members(archive, ["absent.csv"], out)


def tiny_source(url: str, digest: str | None) -> BenchmarkSource:
    archive = Download(f"{url}/ann.zip", "ann.zip", None, None, unpack="zip")
    return BenchmarkSource(
        name="tiny", reader="msvd", licence="test data",
        requirements=(
            Requirement(("test_list.txt",), "ids", "by hand", Download(f"{url}/test_list.txt", "test_list.txt",
                                                                       digest, None), splits=("test",)),
            Requirement(("captions_msvd.json",), "captions", "by hand", archive, member="captions_msvd.json"),
            Requirement(("train_list.txt",), "unused ids", "by hand", splits=("train",)),
        ),
        videos=VideoSource("two clips", "<id>.mp4", "by hand", Download(f"{url}/videos.zip", "videos.zip", None, None,
                                                                        unpack="zip")))


def test_registry_driven_fetch_locks_and_verifies(server, tmp_path):
    server.files["/test_list.txt"] = b"a\nb\n"
    server.files["/ann.zip"] = zip_bytes({"msvd_data/captions_msvd.json": b'{"a": ["x"], "b": ["y"]}'})
    server.files["/videos.zip"] = zip_bytes({"clips/a.mp4": b"aa", "clips/b.mp4": b"bb"})
    source = tiny_source(server.url, hashlib.sha256(b"a\nb\n").hexdigest())
    raw = tmp_path / "tiny"
    lock = ChecksumLock(raw / "checksums.lock.json", raw)
    files = fetch_real_benchmark("tiny", source, raw, {"test"}, lock, progress=False)
    assert set(files) == {"test_list.txt", "captions_msvd.json"}
    assert files["test_list.txt"]["sha256"] == hashlib.sha256(b"a\nb\n").hexdigest()
    assert sorted(p.name for p in (raw / "videos").iterdir()) == ["a.mp4", "b.mp4"]
    assert not (raw / "train_list.txt").exists(), "files of unused splits are not fetched"
    requests = len(server.log)
    again = fetch_real_benchmark("tiny", source, raw, {"test"}, ChecksumLock(raw / "checksums.lock.json", raw),
                                 progress=False)
    assert again == files and len(server.log) == requests, "a complete folder downloads nothing"
    (raw / "videos" / "b.mp4").unlink()  # an extraction cut short: the marker is missing, one video too
    (raw / "downloads" / "videos.zip.extracted").unlink()
    fetch_real_benchmark("tiny", source, raw, {"test"}, ChecksumLock(raw / "checksums.lock.json", raw), progress=False)
    assert (raw / "videos" / "b.mp4").read_bytes() == b"bb" and len(server.log) == requests  # kept archive reused
    (raw / "captions_msvd.json").write_text('{"a": ["changed"]}')
    with pytest.raises(ChecksumMismatch, match="captions_msvd.json"):
        fetch_real_benchmark("tiny", source, raw, {"test"}, ChecksumLock(raw / "checksums.lock.json", raw),
                             progress=False)


def test_failed_and_manual_files_are_all_listed(server, tmp_path):
    source = tiny_source(server.url, None)  # nothing is served: every download answers 404
    raw = tmp_path / "tiny"
    raw.mkdir()
    with pytest.raises(ManualStepRequired) as error:
        fetch_real_benchmark("tiny", source, raw, {"test", "train"}, ChecksumLock(raw / "lock.json", raw),
                             progress=False)
    message = str(error.value)
    assert "4 item(s) missing" in message
    for name in ("test_list.txt", "captions_msvd.json", "train_list.txt", "videos"):
        assert name in message
    assert message.count("automatic download failed") == 3 and str(raw / "train_list.txt") in message
    assert not any(p.suffix == ".part" for p in raw.rglob("*"))


def test_complete_part_left_by_a_killed_run_is_verified_and_renamed(server, tmp_path):
    server.files["/a.bin"] = PAYLOAD
    (tmp_path / "a.bin.part").write_bytes(PAYLOAD)  # killed between the last byte and the rename
    digest = download_file(server.url + "/a.bin", tmp_path / "a.bin", sha256=hashlib.sha256(PAYLOAD).hexdigest(),
                           progress=False)
    assert (tmp_path / "a.bin").read_bytes() == PAYLOAD and digest == hashlib.sha256(PAYLOAD).hexdigest()
    assert server.log == [("/a.bin", f"bytes={len(PAYLOAD)}-")]
    (tmp_path / "b.bin.part").write_bytes(PAYLOAD + b"junk")  # longer than the file: start over
    server.files["/b.bin"] = PAYLOAD
    download_file(server.url + "/b.bin", tmp_path / "b.bin", retries=1, progress=False, sleep=no_sleep([]))
    assert (tmp_path / "b.bin").read_bytes() == PAYLOAD
