"""Registry of annotation readers: benchmark layout name -> function returning `SplitAnnotations`.

To add a benchmark, write `readers/<name>.py` with `read_<name>(root, split, *, benchmark, source_split)`, a
`SPLIT_FILES` dict (split name -> file) and `DEFAULT_SPLITS` (role train/val/test -> split name, "" = carve val
from train), and add the module to `MODULES` below.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from diffusionret.data.readers import activitynet, didemo, lsmdc, msrvtt, msvd
from diffusionret.data.records import SplitAnnotations

# layout name -> reader module; the readers, their split names and default splits below all derive from it
MODULES = {"msrvtt": msrvtt,  # MSRVTT and the synthetic benchmarks (same file layout)
           "msvd": msvd, "lsmdc": lsmdc, "activitynet": activitynet, "didemo": didemo}
READERS: dict[str, Callable[..., SplitAnnotations]] = {name: getattr(module, f"read_{name}")
                                                       for name, module in MODULES.items()}
# split names each reader understands (the values of params.yaml `benchmarks.<name>.splits`)
SPLIT_NAMES: dict[str, tuple[str, ...]] = {name: tuple(module.SPLIT_FILES) for name, module in MODULES.items()}
DEFAULT_SPLITS: dict[str, dict[str, str]] = {name: dict(module.DEFAULT_SPLITS) for name, module in MODULES.items()}
SPANNED_READERS = ("activitynet", "didemo")  # annotations carry a time span per video


def read_split(reader: str, root: Path, split: str, **options) -> SplitAnnotations:
    """Read one split with the named reader; `options` go to the reader unchanged."""
    if reader not in READERS:
        raise KeyError(f"unknown annotation reader {reader!r}; known readers: {sorted(READERS)}")
    return READERS[reader](Path(root), split, **options)
