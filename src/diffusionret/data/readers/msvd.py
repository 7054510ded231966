"""MSVD annotations (official loader's layout) -> `SplitAnnotations`, every caption one sample (multi-caption test).

Files under `root`:
- `train_list.txt`, `val_list.txt`, `test_list.txt`: one video id per line (e.g. `-4wsuPCjDBc_5_15`); the
  standard split has 1200 / 100 / 670 videos.
- captions, in either of two forms (the first one found wins):
  - `raw-captions.pkl` (CLIP4Clip's msvd_data.zip): a pickle dict id -> list of captions, each a list of word
    tokens, joined by single spaces here. It is read with an unpickler that accepts only plain containers and
    strings, so a tampered file cannot run code.
  - `captions_msvd.json` (X-Pool): a JSON dict id -> list of caption strings.
The standard files hold 1970 videos and 80,827 captions; 48,774 / 4,290 / 27,763 of them are train / val / test.
"""

from __future__ import annotations

import pickle
from collections import Counter
from pathlib import Path

from diffusionret.data.readers.files import AnnotationError, caption, read_json, read_text
from diffusionret.data.records import SplitAnnotations

SPLIT_FILES = {"train": "train_list.txt", "val": "val_list.txt", "test": "test_list.txt"}
DEFAULT_SPLITS = {"train": "train", "val": "val", "test": "test"}
CAPTION_FILES = ("raw-captions.pkl", "captions_msvd.json")


class UnreadablePickle(AnnotationError, pickle.UnpicklingError):
    """raw-captions.pkl is damaged or holds more than plain containers and strings (named in the message)."""


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles only dicts, lists, tuples and strings: any class or function reference is refused."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: raw-captions.pkl must hold only a dict of "
                                     "lists of word lists")


def read_video_list(path: Path) -> list[str]:
    """Ids of a `<split>_list.txt`, one per line (blank lines ignored); duplicates are an error."""
    if not path.is_file():
        raise FileNotFoundError(f"MSVD split list {path} is missing; run the download stage or put the file there")
    ids = [line.strip() for line in read_text(path).splitlines() if line.strip()]
    if len(set(ids)) != len(ids):
        repeated = [video_id for video_id, count in Counter(ids).items() if count > 1]
        raise ValueError(f"{path}: duplicate video ids {repeated[:5]}")
    return ids


def _caption_text(value, where: str) -> str:
    """A caption as one string: a list of tokens is joined by spaces, a string is kept (whitespace normalised)."""
    if isinstance(value, (list, tuple)) and all(isinstance(t, str) for t in value):
        value = " ".join(value)
    elif not isinstance(value, str):
        raise AnnotationError(f"{where}: a caption must be a string or a list of word strings, got "
                              f"{type(value).__name__} {value!r:.80}; fix that entry")
    return caption(" ".join(value.split()), where)


def load_captions(root: Path) -> tuple[dict[str, list[str]], Path]:
    """Captions per video id from raw-captions.pkl or captions_msvd.json, and the file they came from."""
    for name in CAPTION_FILES:
        path = Path(root) / name
        if not path.is_file():
            continue
        if name.endswith(".pkl"):
            with path.open("rb") as f:
                try:
                    data = _PlainUnpickler(f).load()
                except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError) as error:
                    raise UnreadablePickle(f"{path}: not a readable caption pickle ({type(error).__name__}: "
                                          f"{error}); restore the original file") from None
        else:
            data = read_json(path)
        if not isinstance(data, dict):
            raise AnnotationError(f"{path}: expected a dict video id -> list of captions, got {type(data).__name__}")
        captions = {}
        for video_id, items in data.items():
            if not isinstance(items, (list, tuple)):
                raise AnnotationError(f"{path}: captions of {video_id!r} must be a list, got {type(items).__name__}")
            captions[str(video_id)] = [_caption_text(c, f"{path}, video {video_id!r}, caption {i}")
                                       for i, c in enumerate(items)]
        return captions, path
    raise FileNotFoundError(f"no MSVD caption file under {root}: expected one of {', '.join(CAPTION_FILES)}; run the "
                            "download stage or put one there")


def read_msvd(root: Path, split: str, *, benchmark: str = "msvd", source_split: str | None = None) -> SplitAnnotations:
    """Read one split (`source_split`: train, val or test; default = `split`) with all captions of every video."""
    root = Path(root)
    name = source_split or DEFAULT_SPLITS.get(split, split)
    if name not in SPLIT_FILES:
        raise ValueError(f"unknown MSVD split {name!r}; choose one of {', '.join(SPLIT_FILES)}")
    video_ids = read_video_list(root / SPLIT_FILES[name])
    captions_of, path = load_captions(root)
    uncaptioned = [v for v in video_ids if not captions_of.get(v)]
    if uncaptioned:
        raise ValueError(f"{path}: {len(uncaptioned)} videos of {SPLIT_FILES[name]} have no caption "
                         f"(first: {uncaptioned[:5]}); the caption file and the split list do not belong together")
    captions, caption_video = [], []
    for row, video_id in enumerate(video_ids):
        for text in captions_of[video_id]:
            captions.append(text)
            caption_video.append(row)
    return SplitAnnotations(benchmark, split, tuple(video_ids), tuple(captions), tuple(caption_video))
