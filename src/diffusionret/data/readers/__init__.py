"""Registry of annotation readers: benchmark layout name -> function returning `SplitAnnotations`.

To add a benchmark, write `readers/<name>.py` with `read_<name>(root, split, **options)` and add it to READERS.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from diffusionret.data.readers.msrvtt import read_msrvtt
from diffusionret.data.records import SplitAnnotations

READERS: dict[str, Callable[..., SplitAnnotations]] = {
    "msrvtt": read_msrvtt,  # MSRVTT and the synthetic benchmarks (same file layout)
}


def read_split(reader: str, root: Path, split: str, **options) -> SplitAnnotations:
    """Read one split with the named reader; `options` go to the reader unchanged."""
    if reader not in READERS:
        raise KeyError(f"unknown annotation reader {reader!r}; known readers: {sorted(READERS)}")
    return READERS[reader](Path(root), split, **options)
