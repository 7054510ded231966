"""HTTP range requests of the search server (the page's video player seeks with them)."""

import threading
import urllib.error
import urllib.request
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from diffusionret.search.server import byte_range, send_file

CONTENT = bytes(range(256)) * 40  # 10240 bytes, every offset distinguishable modulo 256


@pytest.mark.parametrize("header, expected", [
    (None, None), ("bytes=0-99", (0, 99)), ("bytes=100-", (100, 10239)), ("bytes=-500", (9740, 10239)),
    ("bytes=10000-20000", (10000, 10239)), ("bytes=0-0", (0, 0)), ("bytes=-20000", (0, 10239)),
    ("bytes=0-1,5-9", None), ("items=0-5", None), ("bytes=-", None),
])
def test_byte_range_reads_the_header_forms(header, expected):
    assert byte_range(header, len(CONTENT)) == expected


@pytest.mark.parametrize("header", ["bytes=10240-", "bytes=20000-20010", "bytes=9-3", "bytes=-0"])
def test_byte_range_outside_the_file_is_an_error(header):
    with pytest.raises(ValueError):
        byte_range(header, len(CONTENT))


@contextmanager
def file_server(path):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            send_file(self, path, "video/mp4")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def get(url, headers=None):
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def test_range_requests_answer_206_with_the_slice(tmp_path):
    path = tmp_path / "clip.mp4"
    path.write_bytes(CONTENT)
    with file_server(path) as url:
        status, headers, body = get(url)
        assert status == 200 and body == CONTENT and headers["Accept-Ranges"] == "bytes"
        status, headers, body = get(url, {"Range": "bytes=1000-1999"})
        assert status == 206 and body == CONTENT[1000:2000]
        assert headers["Content-Range"] == f"bytes 1000-1999/{len(CONTENT)}" and headers["Content-Length"] == "1000"
        status, headers, body = get(url, {"Range": "bytes=-16"})
        assert status == 206 and body == CONTENT[-16:]
        assert headers["Content-Range"] == f"bytes {len(CONTENT) - 16}-{len(CONTENT) - 1}/{len(CONTENT)}"
        status, headers, body = get(url, {"Range": "bytes=5000-"})
        assert status == 206 and body == CONTENT[5000:]
        status, headers, _ = get(url, {"Range": "bytes=99999-"})
        assert status == 416 and headers["Content-Range"] == f"bytes */{len(CONTENT)}"
