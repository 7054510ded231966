"""What the fault-injection tests share: a throw-away repository, a local HTTP server that misbehaves on request,
a tiny benchmark source, the real stage entry points (exit status + message), and the before/after tree hash.

Every fault test records one row with pytest's `record_property`: `case`, `expected`, `observed`, `files_lost`
(benchmarks/faults.py reads them back from the junit XML). `files_lost` counts files that existed before the
fault and were deleted or changed by it.
"""

from __future__ import annotations

import hashlib
import http.server
import importlib.util
import io
import re
import shutil
import sys
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- tree hash -------------------------------------

def snapshot(*roots: Path) -> dict[str, str]:
    """sha256 of every regular file under `roots` (path -> digest)."""
    files = {}
    for root in roots:
        for path in sorted(Path(root).rglob("*")):
            if path.is_file() and not path.is_symlink():
                files[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files


class Fault:
    """One fault case: `watch` the trees before the fault, `record` the outcome (and the files lost) after it."""

    def __init__(self, record_property):
        self._record, self.roots, self.before = record_property, (), {}

    def watch(self, *roots: Path, grows: tuple[str, ...] = ()) -> None:
        """Hash every file under `roots`; files named in `grows` (a lock that gains entries) are checked by the
        test itself and left out here."""
        self.roots, self.grows = roots, grows
        self.before = {p: d for p, d in snapshot(*roots).items() if Path(p).name not in grows}

    def record(self, case: str, expected: str, observed: str) -> list[str]:
        after = snapshot(*self.roots)
        lost = sorted(path for path, digest in self.before.items() if after.get(path) != digest)
        self._record("case", case)
        self._record("expected", expected)
        short = re.sub(r"\S*/pytest-\d+/[^/\s]+/", "", " ".join(observed.split()))  # paths relative to the test
        short = re.sub(r"http://127\.0\.0\.1:\d+/", "", short)
        self._record("observed", short[:240])
        self._record("files_lost", len(lost))
        return lost


@pytest.fixture()
def fault(record_property) -> Fault:
    return Fault(record_property)


# ---------------------------------------------------------------- a throw-away repository -----------------------

@pytest.fixture()
def repo(tmp_path, monkeypatch) -> Path:
    """A folder with the project's params.yaml (data paths relative to it), as the current directory."""
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    monkeypatch.chdir(root)
    return root


def edit_params(root: Path, **changes) -> None:
    """Set dotted keys of root/params.yaml (`benchmarks.msvd.fps=...` as `**{"benchmarks.msvd.fps": ...}`)."""
    data = yaml.safe_load((root / "params.yaml").read_text())
    for dotted, value in changes.items():
        node = data
        *parents, last = dotted.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    (root / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


def load_stage(name: str):
    """The module of stages/<name>.py (its `body` and docstring), as `dvc repro` runs it."""
    spec = importlib.util.spec_from_file_location(f"stage_{name}", REPO / "stages" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_stage_in_process(name: str, benchmark: str, monkeypatch, capsys) -> tuple[int, str]:
    """Run stages/<name>.py --benchmark B in this process (so the registry can be patched): (exit status, stderr)."""
    from diffusionret.pipeline.stage import run_stage

    module = load_stage(name)
    monkeypatch.setattr(sys, "argv", [f"{name}.py", "--benchmark", benchmark])
    capsys.readouterr()
    try:
        run_stage(module.__doc__, ["benchmark"], module.body)
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.err + captured.out


# ---------------------------------------------------------------- a misbehaving HTTP server ----------------------

class Handler(http.server.BaseHTTPRequestHandler):
    """Serves `server.files[path]`. `server.modes[path]`: `nolength` (no Content-Length, close-delimited body),
    `cut` (announce the full length, send 60%), `slow` (the body in 8 pieces, 50 ms apart)."""

    protocol_version = "HTTP/1.0"

    def log_message(self, *args):
        pass

    def do_GET(self):
        server = self.server
        server.log.append(self.path)
        if self.path not in server.files:
            self.send_error(404)
            return
        data, mode = server.files[self.path], server.modes.get(self.path, "ok")
        start = 0
        header = self.headers.get("Range")
        if header is not None and mode == "ok":
            start = int(header.split("=")[1].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        if mode != "nolength":
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if mode == "nolength":
            self.wfile.write(body[: len(body) * 3 // 5])  # cut short: nothing tells the client
        elif mode == "cut":
            self.wfile.write(body[: len(body) * 3 // 5])
        elif mode == "slow":
            step = max(1, len(body) // 8)
            for i in range(0, len(body), step):
                self.wfile.write(body[i:i + step])
                self.wfile.flush()
                time.sleep(0.05)
        else:
            self.wfile.write(body)


@pytest.fixture()
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.files, httpd.modes, httpd.log = {}, {}, []
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def tar_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


TEST_LIST = b"a\nb\n"
CAPTIONS = b'{"a": ["a person cooks"], "b": ["a dog runs"]}'


def tiny_source(url: str, *, list_digest: str | None = None, verified: bool = False, videos: str = "videos.zip",
                unpack: str = "zip"):
    """An MSVD-layout source served by the local server: test_list.txt, captions_msvd.json, a video archive."""
    from diffusionret.data.sources import BenchmarkSource, Download, Requirement, VideoSource

    return BenchmarkSource(
        name="msvd", reader="msvd", licence="test data",
        requirements=(
            Requirement(("test_list.txt",), "test ids", "by hand",
                        Download(f"{url}/test_list.txt", "test_list.txt", list_digest,
                                 len(TEST_LIST) if verified else None, verified=verified), splits=("test",)),
            Requirement(("captions_msvd.json",), "captions", "by hand",
                        Download(f"{url}/captions_msvd.json", "captions_msvd.json", None, None)),
        ),
        videos=VideoSource("two clips", "<id>.mp4", "by hand",
                           Download(f"{url}/{videos}", videos, None, None, unpack=unpack)))


@pytest.fixture()
def tiny_msvd(repo, server, monkeypatch):
    """Benchmark `msvd` of the throw-away repository, test split only, fetched from the local server."""
    from diffusionret.data import sources

    edit_params(repo, **{"benchmarks.msvd.splits": {"train": "test", "val": "test", "test": "test"}})
    server.files["/test_list.txt"] = TEST_LIST
    server.files["/captions_msvd.json"] = CAPTIONS
    server.files["/videos.zip"] = zip_bytes({"clips/a.mp4": b"aa", "clips/b.mp4": b"bb"})
    monkeypatch.setitem(sources.SOURCES, "msvd", tiny_source(server.url))
    return repo / "data" / "raw" / "msvd"


def first_line(text: str) -> str:
    """The `error:` line of a stage's stderr (what a user reads first)."""
    for line in text.splitlines():
        if line.startswith("error:"):
            return line
    return text.strip().splitlines()[-1] if text.strip() else ""
