"""What every annotation reader reads through: text, JSON and csv files, and captions, with errors that name the
file, the row and the field and say how to fix it (never a bare UnicodeDecodeError, csv.Error or TypeError).

A caption must be a non-empty string of at most `MAX_CAPTION_CHARS` characters: a null, a number, an empty
string or a whole file pasted into one field would otherwise reach the tokenizer (or train as an empty text).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path

MAX_CAPTION_CHARS = 16_384  # far above any real caption or ActivityNet paragraph (a few thousand characters)


class AnnotationError(ValueError):
    """An annotation file cannot be read: the message names the file, the row and the field."""


def read_text(path: Path) -> str:
    """The file as UTF-8 text (a byte-order mark is dropped); other encodings are an error naming the byte."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise AnnotationError(f"{path}: not UTF-8 text (byte {error.start}, line {line}: "
                              f"{data[error.start:error.start + 4]!r}); convert it, e.g. `iconv -f latin1 -t utf-8 "
                              f"{Path(path).name}`, or restore the original file") from None


def read_json(path: Path):
    """The parsed JSON of a file, with the line and column of a syntax error."""
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise AnnotationError(f"{path}: not valid JSON at line {error.lineno}, column {error.colno}: {error.msg}; "
                              "the file is damaged or cut short: restore the original") from None


def csv_rows(path: Path, columns: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, {column: value}) of every row of a csv with a header holding `columns`."""
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
    end = 0  # last line of the previous complete row: a bad row starts right after it
    try:
        header = reader.fieldnames or []
        absent = [c for c in columns if c not in header]
        if absent:
            raise AnnotationError(f"{path}: missing column(s) {absent}; found header {header}")
        end = reader.line_num
        for row in reader:
            missing = [c for c in columns if row.get(c) is None]
            if missing:
                raise AnnotationError(f"{path}, line {end + 1}: row has no value for {missing} (too few fields); "
                                      "fix or remove that line")
            yield end + 1, {c: row[c] for c in columns}
            end = reader.line_num
    except csv.Error as error:
        why = (f"; a field that long is not a caption (at most {MAX_CAPTION_CHARS} characters)"
               if "field limit" in str(error) else " (csv syntax)")
        raise AnnotationError(f"{path}, line {end + 1}: {error}{why}: fix or remove that line") from None


def caption(value, where: str) -> str:
    """`value` as a caption: a non-empty string of at most MAX_CAPTION_CHARS characters (returned unchanged)."""
    if not isinstance(value, str):
        raise AnnotationError(f"{where}: a caption must be a string, got {type(value).__name__} {value!r:.80}; "
                              "fix that entry")
    if not value.strip():
        raise AnnotationError(f"{where}: empty caption; write the caption or remove the entry")
    if len(value) > MAX_CAPTION_CHARS:
        raise AnnotationError(f"{where}: a caption of {len(value):,} characters (at most {MAX_CAPTION_CHARS:,}); "
                              "the file is probably damaged (a whole document in one field): fix that entry")
    return value


def expect(value, kind: type | tuple[type, ...], where: str, what: str):
    """`value` if it is of `kind` (never a bool), else an error naming where it is and what was expected."""
    if isinstance(value, bool) or not isinstance(value, kind):
        raise AnnotationError(f"{where}: expected {what}, got {type(value).__name__} {value!r:.80}; fix that entry")
    return value
