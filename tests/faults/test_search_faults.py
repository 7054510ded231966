"""Fault injection for `diffusionret index` and `diffusionret serve`: each case ends in a clear refusal and no
file the user owns, or the index already holds, is deleted or changed."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from diffusionret.cli import main as cli
from diffusionret.data.synthetic import render_video, write_mp4

pytestmark = pytest.mark.faults

DATA = {"max_words": 16, "max_frames": 4, "fps": 2.0, "image_size": 32}


def tree_hashes(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under `root` (computed here, independently of the code under test)."""
    return {path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(Path(root).rglob("*")) if path.is_file()}


def files_lost(before: dict[str, str], after: dict[str, str]) -> int:
    """Files of `before` that are gone or hold other bytes in `after`."""
    return sum(1 for name, digest in before.items() if after.get(name) != digest)


def write_model(directory: Path) -> Path:
    """A tiny untrained model directory (disc/ + gen/) as train_disc / train_gen write it."""
    from diffusionret.model.checkpoint import save_extractor, save_module
    from diffusionret.model.denoiser import Generator
    from diffusionret.model.extractor import build_feature_extractor
    from diffusionret.model.tokenizer import train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer(["a red circle moves left", "the blue square is moving up"],
                                    directory / "disc" / "tokenizer", 300)
    torch.manual_seed(0)
    extractor = build_feature_extractor("tiny", temporal_layers=1, vocab_size=len(tokenizer),
                                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                        pad_token_id=tokenizer.pad_token_id)
    save_extractor(extractor, directory / "disc", {
        "stage": "disc", "model": {"backbone": "tiny", "temporal": "seqTransf", "temporal_layers": 1, "head": "wti"},
        "data": DATA})
    save_module(Generator(64, seed=0).state_dict(), directory / "gen", {
        "stage": "gen", "width": 64, "frame_temperature": 1.0, "diffusion": {"steps": 10, "schedule": "cosine"}})
    return directory


def write_clip(path: Path, meaning: tuple[str, str, str], seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_mp4(path, render_video(meaning, [seed], textured=False, image_size=64, fps=8), 8)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("search-faults")
    model = write_model(root / "model")
    videos = root / "videos"
    write_clip(videos / "red.mp4", ("red", "circle", "left"), 1)
    write_clip(videos / "blue.mp4", ("blue", "square", "up"), 2)
    return {"root": root, "model": model, "videos": videos}


def run_index(world, out: Path, videos: Path | None = None) -> int:
    return cli(["index", "--videos", str(videos or world["videos"]), "--model", str(world["model"]),
                "--out", str(out), "--workers", "1", "--no-progress"])


# ---------------------------------------------------------------- item 1: index --out -------------------------

def test_index_refuses_a_user_folder_and_changes_nothing(world, tmp_path, capsys, record_property):
    out = tmp_path / "my-project"
    (out / "work").mkdir(parents=True)
    (out / "work" / "draft.tex").write_text("two months of writing")
    (out / "thumbs").mkdir()
    (out / "thumbs" / "figure1.png").write_bytes(b"\x89PNG my figure")
    (out / "gen-000003").mkdir()
    (out / "gen-000003" / "features.npy").write_bytes(b"my own features")
    (out / "notes.txt").write_text("notes")
    before = tree_hashes(out)

    status = run_index(world, out)
    message = capsys.readouterr().err
    after = tree_hashes(out)
    record_property("case", "index --out into a non-empty folder it did not make")
    record_property("expected", "exit 2, folder named, nothing touched")
    record_property("observed", f"exit {status}: {message.strip()[:160]}")
    record_property("files_lost", files_lost(before, after))
    assert status == 2
    assert str(out) in message and "new or empty folder" in message
    assert after == before  # nothing deleted, changed or added


def test_index_update_deletes_only_files_the_index_lists(world, tmp_path, record_property):
    videos = tmp_path / "videos"
    write_clip(videos / "red.mp4", ("red", "circle", "left"), 1)
    out = tmp_path / "index"
    assert run_index(world, out, videos) == 0
    ours = {"thumbs/keep-me.png": b"\x89PNG a user's picture", "gen-000001/README.txt": b"my notes on gen 1",
            "work/mine.txt": b"scratch", "notes.txt": b"index notes"}
    for name, data in ours.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)
    user_before = {name: hashlib.sha256(data).hexdigest() for name, data in ours.items()}
    (videos / "red.mp4").unlink()  # the update drops red's thumbnail and generation 1
    write_clip(videos / "blue.mp4", ("blue", "square", "up"), 2)

    status = run_index(world, out, videos)
    after = tree_hashes(out)
    manifest = json.loads((out / "index.json").read_text())
    lost = files_lost(user_before, after)
    record_property("case", "index update with user files inside the index folder")
    record_property("expected", "exit 0, stale index files removed, user files kept")
    record_property("observed", f"exit {status}, generation {manifest['generation']}, {lost} user files lost")
    record_property("files_lost", lost)
    assert status == 0 and manifest["generation"] == 2
    assert lost == 0, sorted(set(user_before) - set(after))
    assert not (out / "gen-000001" / "features.npy").exists()  # the index's own stale files do go
    assert [entry["path"] for entry in manifest["videos"]] == ["blue.mp4"]
    assert sorted(p.stem for p in (out / "thumbs").glob("*.png")) == sorted(
        [manifest["videos"][0]["sha256"], "keep-me"])


# ---------------------------------------------------------------- item 3: disk full while writing ---------------

def test_full_disk_while_writing_the_features_is_a_clear_error(world, tmp_path, capsys, monkeypatch,
                                                               record_property):
    videos = tmp_path / "videos"
    videos.mkdir()
    for path in world["videos"].glob("*.mp4"):
        os.link(path, videos / path.name)
    out = tmp_path / "index"
    assert run_index(world, out, videos) == 0
    write_clip(videos / "green.mp4", ("green", "cross", "right"), 3)
    before = tree_hashes(out)

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full)
    status = run_index(world, out, videos)
    message = capsys.readouterr().err
    after = tree_hashes(out)
    record_property("case", "disk full while writing the search index's features")
    record_property("expected", "exit 2, file and free space named, index unchanged")
    record_property("observed", f"exit {status}: {message.strip()[:160]}")
    record_property("files_lost", files_lost(before, after))
    assert status == 2
    assert "features.npy" in message and "No space left on device" in message and "free space" in message
    assert files_lost(before, after) == 0  # the committed index is untouched
    assert not (out / "gen-000002").exists()  # no half-written generation left behind
    assert any(name.startswith("work/shards/") for name in after)  # the encoded batch waits in work/
    monkeypatch.undo()
    assert run_index(world, out, videos) == 0  # with room again the same command finishes from work/
    assert len(json.loads((out / "index.json").read_text())["videos"]) == 3


def test_full_disk_while_saving_a_batch_names_the_folder_and_keeps_the_index(world, tmp_path, capsys, monkeypatch,
                                                                             record_property):
    import numpy as np

    videos = tmp_path / "videos"
    videos.mkdir()
    os.link(world["videos"] / "red.mp4", videos / "red.mp4")
    out = tmp_path / "index"
    assert run_index(world, out, videos) == 0
    os.link(world["videos"] / "blue.mp4", videos / "blue.mp4")
    before = tree_hashes(out)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as write() reports it: no file name

    monkeypatch.setattr(np, "savez", full)
    status = run_index(world, out, videos)
    message = capsys.readouterr().err
    after = tree_hashes(out)
    record_property("case", "disk full while saving an encoded batch of the search index")
    record_property("expected", "exit 2, folder named, index unchanged")
    record_property("observed", f"exit {status}: {message.strip()[:160]}")
    record_property("files_lost", files_lost(before, after))
    assert status == 2
    assert str(out / "work") in message and "No space left on device" in message and "run the same command" in message
    assert files_lost(before, after) == 0


# ---------------------------------------------------------------- item 11: the server ----------------------------

@pytest.fixture(scope="module")
def searcher(world):
    from diffusionret.search.index import build_index
    from diffusionret.search.query import Searcher

    out = world["root"] / "served-index"
    build_index(world["videos"], world["model"], out, workers=1, progress=False)
    return Searcher(out)


@contextmanager
def running_server(searcher, timeout: float = 30.0):
    from diffusionret.search import server as server_module

    original = server_module.SearchHandler.timeout
    server_module.SearchHandler.timeout = timeout
    server = server_module.make_server(searcher, "127.0.0.1", 0, quiet=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
        server_module.SearchHandler.timeout = original


def raw_request(port: int, data: bytes, wait: float = 5.0) -> bytes:
    """Send raw bytes, return everything the server answers until it closes (b'' if it answered nothing)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as connection:
        connection.sendall(data)
        chunks = []
        try:
            while chunk := connection.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            chunks.append(b"<client gave up waiting>")
        return b"".join(chunks)


def status_of(answer: bytes) -> int | None:
    first = answer.split(b"\r\n", 1)[0].split()
    return int(first[1]) if len(first) >= 2 and first[0].startswith(b"HTTP/") else None


def request(port: int, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1"] + [f"{key}: {value}" for key, value in headers.items()]
    return raw_request(port, ("\r\n".join(lines) + "\r\n\r\n").encode() + body)


SEARCH = json.dumps({"queries": ["a red circle moves left"], "rerank": False}).encode()


def record(record_property, case: str, expected: str, answer: bytes) -> None:
    record_property("case", case)
    record_property("expected", expected)
    record_property("observed", answer.split(b"\r\n", 1)[0].decode(errors="replace") or "connection dropped")
    record_property("files_lost", 0)


def test_server_refuses_a_dns_rebinding_host(searcher, record_property):
    with running_server(searcher) as port:
        answer = request(port, "GET", "/api/info", {"Host": f"attacker.example:{port}", "Connection": "close"})
        local = request(port, "GET", "/api/info", {"Host": f"localhost:{port}", "Connection": "close"})
        loop = request(port, "GET", "/api/info", {"Host": f"127.0.0.1:{port}", "Connection": "close"})
    record(record_property, "server: Host header of another name (DNS rebinding)", "403", answer)
    assert status_of(answer) == 403 and b"127.0.0.1" in answer
    assert status_of(local) == 200 and status_of(loop) == 200


def test_server_refuses_a_cross_origin_text_plain_post(searcher, record_property):
    with running_server(searcher) as port:
        headers = {"Host": f"127.0.0.1:{port}", "Content-Type": "text/plain", "Content-Length": str(len(SEARCH)),
                   "Connection": "close"}
        plain = request(port, "POST", "/api/search", headers, SEARCH)
        foreign = request(port, "POST", "/api/search", {**headers, "Content-Type": "application/json",
                                                        "Origin": "http://attacker.example"}, SEARCH)
        fine = request(port, "POST", "/api/search", {**headers, "Content-Type": "application/json"}, SEARCH)
        image_tag = request(port, "GET", "/api/search?q=red", {"Host": f"127.0.0.1:{port}", "Connection": "close",
                                                                "Sec-Fetch-Site": "cross-site"})
    record(record_property, "server: cross-origin text/plain POST", "415", plain)
    assert status_of(plain) == 415 and b"application/json" in plain
    assert status_of(foreign) == 403
    assert status_of(fine) == 200 and b"red.mp4" in fine
    assert status_of(image_tag) == 403  # another site's <img src=...> cannot make the server search


def test_server_answers_a_malformed_content_length_with_400(searcher, record_property):
    with running_server(searcher) as port:
        answer = request(port, "POST", "/api/search", {"Host": f"127.0.0.1:{port}", "Content-Type": "application/json",
                                                       "Content-Length": "abc", "Connection": "close"}, SEARCH)
    record(record_property, "server: Content-Length: abc", "400", answer)
    assert status_of(answer) == 400 and b"Content-Length" in answer


def test_server_bounds_the_query_count_and_the_body(searcher, record_property):
    many = json.dumps({"queries": ["a red circle"] * 10_000, "rerank": False}).encode()
    with running_server(searcher) as port:
        headers = {"Host": f"127.0.0.1:{port}", "Content-Type": "application/json", "Connection": "close"}
        answer = request(port, "POST", "/api/search", {**headers, "Content-Length": str(len(many))}, many)
        huge = request(port, "POST", "/api/search", {**headers, "Content-Length": str(1 << 30)}, b"{}")
    record(record_property, "server: 10,000 queries in one request", "400", answer)
    assert status_of(answer) == 400 and b"at most" in answer
    assert status_of(huge) == 413


def test_server_does_not_block_on_a_short_body_or_an_idle_socket(searcher, record_property):
    with running_server(searcher, timeout=0.5) as port:
        started = time.perf_counter()
        short = request(port, "POST", "/api/search", {"Host": f"127.0.0.1:{port}", "Content-Type": "application/json",
                                                      "Content-Length": "100"}, SEARCH[:10])
        idle = raw_request(port, b"")
        seconds = time.perf_counter() - started
        after = request(port, "GET", "/api/info", {"Host": f"127.0.0.1:{port}", "Connection": "close"})
    record(record_property, "server: body shorter than Content-Length, idle socket", "408 / closed", short)
    assert status_of(short) == 408
    assert idle == b""  # closed by the server, not by the client giving up
    assert seconds < 4
    assert status_of(after) == 200


def test_server_info_shows_relative_paths(searcher, monkeypatch, record_property):
    monkeypatch.chdir(searcher.index_dir.parent)
    with running_server(searcher) as port:
        answer = request(port, "GET", "/api/info", {"Host": f"127.0.0.1:{port}", "Connection": "close"})
    info = json.loads(answer.split(b"\r\n\r\n", 1)[1])

    def strings(value):
        if isinstance(value, dict):
            for item in value.values():
                yield from strings(item)
        elif isinstance(value, list):
            for item in value:
                yield from strings(item)
        elif isinstance(value, str):
            yield value

    absolute = [text for text in strings(info) if text.startswith("/") or str(Path.home()) in text]
    record(record_property, "server: absolute paths in /api/info", "relative paths only", answer)
    assert status_of(answer) == 200 and not absolute, absolute
    assert info["index"] == "served-index" and info["videos_root"] == "videos" and info["model"]["dir"] == "model"
