"""A small local web server over a Searcher: the page (page.py), thumbnails and a JSON API.

    GET  /                      the search page
    GET  /api/info              index and checkpoint description
    GET  /api/search?q=...      one or more `q`; optional top, rerank (0/1), rerank_k, seed, approximate, candidates
    POST /api/search            the same as JSON: {"queries": [...], "top": 10, "rerank": true, ...}
    GET  /thumbs/<sha256>.png   the strip of sampled frames of a video
    GET  /videos/<sha256>       the indexed video file itself, with HTTP range requests (the player seeks)

/api/search answers exactly what `diffusionret search --json` prints. Standard library only
(http.server.ThreadingHTTPServer); it listens on 127.0.0.1 unless told otherwise, and its Content-Security-Policy
lets the page load nothing but its own files.

What a web page in the user's browser could try is refused: a `Host` that is a name other than `localhost` (a DNS
rebinding attack points a name it owns at 127.0.0.1; bound to a non-loopback address, the server also accepts that
address's IP literals, never a name), a POST whose body is not `application/json` (a cross-origin form or
`text/plain` fetch needs no CORS preflight) or whose `Origin` is another site. Bodies, query counts and socket
waits are bounded (a short body or an idle connection is dropped after REQUEST_TIMEOUT_S), and /api/info shows
paths relative to the folder the server runs in.
"""

from __future__ import annotations

import ipaddress
import json
import mimetypes
import re
from http import HTTPStatus
from pathlib import Path
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from diffusionret.search.page import ASSETS
from diffusionret.search.query import DEFAULT_CANDIDATES, DEFAULT_RERANK_K, DEFAULT_TOP, Searcher, results_json
from diffusionret.search.store import SHA256_PATTERN, thumb_path

MAX_TOP = 1000
MAX_BODY = 1 << 20
MAX_QUERIES = 256  # queries per request (each is encoded and, by default, re-ranked by DDIM)
REQUEST_TIMEOUT_S = 30.0  # a socket that sends nothing for this long is closed (idle, or a body cut short)
CSP = "default-src 'self'; img-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'"
TRUE, FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
CHUNK = 1 << 20


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive (first, last) byte of a `Range: bytes=a-b` header (also `a-` and the suffix `-n`) within
    a file of `size` bytes; None for no header or a form this server does not serve (several ranges), which
    is answered with the whole file. Raises ValueError for a range outside the file (answered with 416)."""
    match = RANGE.match(header.strip()) if header else None
    if match is None or match.group(1) == match.group(2) == "":
        return None
    first, last = match.groups()
    if first == "":  # the last n bytes
        length = int(last)
        if length == 0 or size == 0:
            raise ValueError(f"empty suffix range of a {size}-byte file")
        return max(size - length, 0), size - 1
    start = int(first)
    end = size - 1 if last == "" else min(int(last), size - 1)
    if start >= size or end < start:
        raise ValueError(f"bytes {first}-{last} are outside a {size}-byte file")
    return start, end


def send_file(handler: BaseHTTPRequestHandler, path: Path, content_type: str) -> None:
    """Send a file, honouring a single `Range` (206 + Content-Range; 416 outside the file), streamed in chunks."""
    size = path.stat().st_size
    try:
        wanted = byte_range(handler.headers.get("Range"), size)
    except ValueError:
        handler.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
        handler.send_header("Content-Range", f"bytes */{size}")
        handler.send_header("Content-Length", "0")
        handler.end_headers()
        return
    first, last = wanted if wanted is not None else (0, size - 1)
    handler.send_response(HTTPStatus.PARTIAL_CONTENT if wanted is not None else HTTPStatus.OK)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Accept-Ranges", "bytes")
    handler.send_header("Content-Length", str(max(last - first + 1, 0)))
    if wanted is not None:
        handler.send_header("Content-Range", f"bytes {first}-{last}/{size}")
    handler.send_header("X-Content-Type-Options", "nosniff")
    handler.end_headers()
    with path.open("rb") as handle:
        handle.seek(first)
        remaining = last - first + 1
        while remaining > 0:
            block = handle.read(min(CHUNK, remaining))
            if not block:
                break
            handler.wfile.write(block)
            remaining -= len(block)


class BadRequest(ValueError):
    """A request parameter is missing or malformed."""


def parse_settings(raw: dict) -> dict:
    """Search keyword arguments from request parameters (strings or JSON values), validated."""
    def integer(name: str, default: int, low: int = 1, high: int | None = None) -> int:
        value = raw.get(name, default)
        try:
            value = int(value)
        except (TypeError, ValueError):
            raise BadRequest(f"`{name}` must be an integer, got {value!r}") from None
        if value < low or (high is not None and value > high):
            raise BadRequest(f"`{name}` must be in [{low}, {high if high is not None else 'inf'}], got {value}")
        return value

    def boolean(name: str, default: bool) -> bool:
        value = raw.get(name, default)
        if isinstance(value, bool):
            return value
        if str(value).lower() in TRUE | FALSE:
            return str(value).lower() in TRUE
        raise BadRequest(f"`{name}` must be 0/1 or true/false, got {value!r}")

    return {"top": integer("top", DEFAULT_TOP, high=MAX_TOP), "rerank": boolean("rerank", True),
            "rerank_k": integer("rerank_k", DEFAULT_RERANK_K), "seed": integer("seed", 0, low=0),
            "approximate": boolean("approximate", False), "candidates": integer("candidates", DEFAULT_CANDIDATES)}


def split_host(value: str) -> str:
    """The host part of a Host header value (`[::1]:8765` -> `::1`, `localhost:8765` -> `localhost`)."""
    value = value.strip()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def host_allowed(host: str, bound_to_loopback: bool) -> bool:
    """`localhost` or a loopback IP literal; any IP literal when the server listens beyond this machine."""
    host = host.lower().rstrip(".")
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False  # a name: what DNS rebinding needs
    return address.is_loopback or not bound_to_loopback


class SearchHandler(BaseHTTPRequestHandler):
    server: "SearchServer"
    timeout = REQUEST_TIMEOUT_S  # socket timeout of every read and write (StreamRequestHandler applies it)

    def _refused(self) -> bool:
        """Answer and return True when the Host header names something other than this machine's loopback."""
        host = self.headers.get("Host")
        if host is None:
            self._json(HTTPStatus.BAD_REQUEST, {"error": "the request has no Host header"})
            return True
        if not host_allowed(split_host(host), self.server.loopback):
            port = self.server.server_address[1]
            self._json(HTTPStatus.FORBIDDEN, {
                "error": f"Host {host!r} is refused: this server answers only to http://127.0.0.1:{port}/ or "
                         f"http://localhost:{port}/ (other names are how DNS-rebinding pages reach local servers)"})
            return True
        if self.headers.get("Sec-Fetch-Site") == "cross-site" and urlsplit(self.path).path.startswith("/api/"):
            self._json(HTTPStatus.FORBIDDEN, {"error": "the API answers only its own page (Sec-Fetch-Site: cross-site)"})
            return True
        return False

    def do_GET(self) -> None:
        if self._refused():
            return
        url = urlsplit(self.path)
        if url.path in ASSETS:
            content_type, body = ASSETS[url.path]
            self._send(HTTPStatus.OK, content_type, body.encode())
        elif url.path == "/api/info":
            self._json(HTTPStatus.OK, self.server.searcher.info())
        elif url.path == "/api/search":
            params = parse_qs(url.query)
            raw = {key: values[-1] for key, values in params.items() if key != "q"}
            self._search(params.get("q", []), raw)
        elif url.path.startswith("/thumbs/"):
            self._thumb(url.path.removeprefix("/thumbs/"))
        elif url.path.startswith("/videos/"):
            self._video(url.path.removeprefix("/videos/"))
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no such page: {url.path}"})

    def do_POST(self) -> None:
        if self._refused():
            return
        if urlsplit(self.path).path != "/api/search":
            self._json(HTTPStatus.NOT_FOUND, {"error": f"POST is only for /api/search, not {self.path}"})
            return
        origin = self.headers.get("Origin")
        if origin is not None and urlsplit(origin).netloc.lower() != self.headers.get("Host", "").lower():
            self._json(HTTPStatus.FORBIDDEN, {"error": f"cross-origin POST from {origin} refused"})
            return
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if content_type != "application/json":
            self._json(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, {
                "error": f"POST /api/search takes Content-Type: application/json, got {content_type or 'none'!r}"})
            return
        declared = self.headers.get("Content-Length")
        if declared is None:
            self._json(HTTPStatus.LENGTH_REQUIRED, {"error": "POST /api/search needs a Content-Length header"})
            return
        if not declared.strip().isdigit():
            self._json(HTTPStatus.BAD_REQUEST, {"error": f"Content-Length must be a byte count, got {declared!r}"})
            return
        length = int(declared)
        if length > MAX_BODY:
            self._json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": f"request body over {MAX_BODY} bytes"})
            return
        try:
            data = self.rfile.read(length)
        except TimeoutError:
            data = b""
        if len(data) < length:  # the client stopped sending (timeout) or closed its side
            self._json(HTTPStatus.REQUEST_TIMEOUT, {"error": f"the body ended after {len(data)} of the {length} "
                                                             f"bytes Content-Length announced"})
            return
        try:
            body = json.loads(data or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            self._json(HTTPStatus.BAD_REQUEST, {"error": f"the body is not JSON: {error}"})
            return
        if not isinstance(body, dict) or not isinstance(body.get("queries", []), list):
            self._json(HTTPStatus.BAD_REQUEST, {"error": 'expected {"queries": ["text", ...], ...}'})
            return
        self._search(body.get("queries", []), {key: value for key, value in body.items() if key != "queries"})

    def _search(self, queries: list, raw: dict) -> None:
        try:
            if not queries or not all(isinstance(query, str) and query.strip() for query in queries):
                raise BadRequest("give at least one non-empty query (`q=...` or {\"queries\": [...]})")
            if len(queries) > MAX_QUERIES:
                raise BadRequest(f"{len(queries)} queries in one request; at most {MAX_QUERIES} (send several)")
            settings = parse_settings(raw)
            results = self.server.searcher.search(queries, **settings)
        except (ValueError, RuntimeError) as error:  # bad parameters, or e.g. faiss missing for approximate
            self._json(HTTPStatus.BAD_REQUEST, {"error": str(error)})
            return
        self._json(HTTPStatus.OK, results_json(self.server.searcher, results, settings))

    def _thumb(self, name: str) -> None:
        sha = name.removesuffix(".png")
        path = thumb_path(self.server.searcher.index.directory, sha)
        if not name.endswith(".png") or not SHA256_PATTERN.match(sha) or not path.is_file():
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no thumbnail {name}"})
            return
        self._send(HTTPStatus.OK, "image/png", path.read_bytes(), cache=True)

    def _video(self, sha: str) -> None:
        """An indexed video by content hash (only files the index lists are served)."""
        index = self.server.searcher.index
        entry = next((entry for entry in index.entries if entry["sha256"] == sha), None) \
            if SHA256_PATTERN.match(sha) else None
        path = Path(index.manifest["videos_root"]) / entry["path"] if entry else None
        if path is None or not path.is_file():
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no indexed video {sha}"})
            return
        send_file(self, path, mimetypes.guess_type(path.name)[0] or "application/octet-stream")

    def _json(self, status: HTTPStatus, value) -> None:
        self._send(status, "application/json", json.dumps(value).encode())

    def _send(self, status: HTTPStatus, content_type: str, body: bytes, cache: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cache-Control", "max-age=86400" if cache else "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:
        if not self.server.quiet:
            super().log_message(format, *args)


class SearchServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer that holds the Searcher its handlers use."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], searcher: Searcher, quiet: bool = False):
        super().__init__(address, SearchHandler)
        self.searcher, self.quiet = searcher, quiet
        self.loopback = address[0] == "localhost" or _is_loopback(address[0])


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def make_server(searcher: Searcher, host: str = "127.0.0.1", port: int = 8765, quiet: bool = False) -> SearchServer:
    """A server bound to (host, port); port 0 picks a free one (read it from server.server_address)."""
    return SearchServer((host, port), searcher, quiet)
