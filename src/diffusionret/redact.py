"""Credentials out of every URI the project writes to an output or a log.

A tracking server or a download mirror is often given with its login inside the URI
(`https://user:token@host/...`, `...?access_token=...`, pre-signed `X-Amz-Signature=...`). Outputs such as
`models/<b>/disc/mlflow_run.json` are pushed with `dvc push` and logs are pasted into issues, so whatever writes a
URI writes `redact_uri(uri)` (or `redact_text(message)` for free text holding URIs): the user-info part becomes
`***@` and the value of every query parameter whose name looks like a secret becomes `***`. The rest of the URI is
kept byte for byte, so it still says which server was meant.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

HIDDEN = "***"
_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/?#@\s]*)@")
_SECRET_NAME = re.compile(r"token|key|secret|passw|pwd|auth|sig|credential|session|cookie", re.IGNORECASE)
_QUERY_PAIR = re.compile(r"(?P<lead>[?&;])(?P<name>[^=&;#]*)=(?P<value>[^&;#]*)")
_URI_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>()\[\]{}]+")


def redact_uri(uri: str) -> str:
    """`uri` with its user-info and secret-looking query values replaced by `***` (other text unchanged)."""
    if not isinstance(uri, str):
        return uri
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{HIDDEN}@", uri, count=1)
    start = text.find("?")
    if start < 0:
        return text
    end = text.find("#", start)
    end = len(text) if end < 0 else end

    def hide(match: re.Match) -> str:
        if _SECRET_NAME.search(unquote(match["name"])) and match["value"]:
            return f"{match['lead']}{match['name']}={HIDDEN}"
        return match.group(0)

    return text[:start] + _QUERY_PAIR.sub(hide, text[start:end]) + text[end:]


def redact_text(text: str) -> str:
    """Free text (a message, a log line) with every URI in it passed through `redact_uri`."""
    if not isinstance(text, str):
        return text
    def hide(match: re.Match) -> str:
        uri = match.group(0)
        kept = uri.rstrip(".,;:!?")  # sentence punctuation after a URI is not part of it
        return redact_uri(kept) + uri[len(kept):]

    return _URI_IN_TEXT.sub(hide, text)
