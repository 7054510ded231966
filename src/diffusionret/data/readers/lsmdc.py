"""LSMDC annotations (official loader's layout) -> `SplitAnnotations`.
The files need MPII's permission (not redistributable).

Files under `root` (tab-separated, no header, one caption per line, 6 fields:
clip_id, start_aligned, end_aligned, start_extracted, end_extracted, sentence):
- `LSMDC16_annos_training.csv` (split name `training`), `LSMDC16_annos_val.csv` (`val`) and
  `LSMDC16_challenge_1000_publictect.csv` (`test_1000`; "publictect" is the real file name).
A clip id may carry several sentences (training); the 1000 test clips carry one each. Clips are ordered by first
appearance. The six clip ids that the released loader skips (their videos are broken) are skipped here too,
unless `skip_broken=False`. The reader never drops a clip for lack of a video file: that is the validation's job.
"""

from __future__ import annotations

from pathlib import Path

from diffusionret.data.readers.files import AnnotationError, caption, read_text
from diffusionret.data.records import SplitAnnotations

SPLIT_FILES = {"training": "LSMDC16_annos_training.csv", "val": "LSMDC16_annos_val.csv",
               "test_1000": "LSMDC16_challenge_1000_publictect.csv"}
DEFAULT_SPLITS = {"train": "training", "val": "val", "test": "test_1000"}
# jpthu17/DiffusionRet DiffusionRet/dataloaders/dataloader_lsmdc_retrieval.py (same list in EMCL/HBI)
BROKEN_CLIPS = frozenset({
    "0017_Pianist_00.23.28.872-00.23.34.843",
    "0017_Pianist_00.30.36.767-00.30.38.009",
    "3064_SPARKLE_2012_01.41.07.000-01.41.11.793",
    "3087_WE_BOUGHT_A_ZOO_01.37.34.502-01.37.39.361",
    "3044_KNOCKED_UP_00.45.19.000-00.45.23.549",
    "3023_DISTRICT_9_01.12.44.778-01.12.48.729",
})
FIELDS = ("clip_id", "start_aligned", "end_aligned", "start_extracted", "end_extracted", "sentence")


def read_lsmdc_rows(path: Path) -> list[tuple[str, str]]:
    """(clip id, sentence) of every non-blank line of one LSMDC csv, checking the 6-field layout."""
    if not path.is_file():
        raise FileNotFoundError(f"LSMDC annotation file {path} is missing. It needs MPII's permission: request "
                                "access at https://sites.google.com/site/describingmovies/download and put the file "
                                "there")
    rows = []
    for number, line in enumerate(read_text(path).split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        fields = line.split("\t", len(FIELDS) - 1)  # a tab inside the sentence stays in the sentence
        if len(fields) != len(FIELDS):
            raise AnnotationError(f"{path}:{number}: expected {len(FIELDS)} tab-separated fields "
                                  f"({', '.join(FIELDS)}), found {len(fields)}: {line[:120]!r}")
        clip_id, sentence = fields[0].strip(), " ".join(fields[-1].split())
        if not clip_id:
            raise AnnotationError(f"{path}:{number}: empty clip id")
        rows.append((clip_id, caption(sentence, f"{path}:{number}, field `sentence`")))
    return rows


def read_lsmdc(root: Path, split: str, *, benchmark: str = "lsmdc", source_split: str | None = None,
               skip_broken: bool = True) -> SplitAnnotations:
    """Read one split (`source_split`: training, val or test_1000; default from `split`)."""
    name = source_split or DEFAULT_SPLITS.get(split, split)
    if name not in SPLIT_FILES:
        raise ValueError(f"unknown LSMDC split {name!r}; choose one of {', '.join(SPLIT_FILES)}")
    rows = read_lsmdc_rows(Path(root) / SPLIT_FILES[name])
    row_of: dict[str, int] = {}
    captions, caption_video = [], []
    for clip_id, sentence in rows:
        if skip_broken and clip_id in BROKEN_CLIPS:
            continue
        row = row_of.setdefault(clip_id, len(row_of))
        captions.append(sentence)
        caption_video.append(row)
    return SplitAnnotations(benchmark, split, tuple(row_of), tuple(captions), tuple(caption_video))
