"""The one in-memory form every annotation reader produces and every later step consumes.

A split is a gallery of unique videos plus a list of captions, each pointing at its video by index.
Grouping of captions into videos is therefore explicit (never derived from running offsets), which is
what multi-caption evaluation (MSVD) and the "same video" test of hard-negative mining rely on.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SplitAnnotations:
    """Annotations of one split of one benchmark.

    video_ids: unique ids of the split's videos, in a stable order (the gallery order of evaluation).
    captions: every caption of the split (one training sample or one test query each).
    caption_video: for every caption, the index into `video_ids` of the video it describes.
    spans: optional (start_s, end_s) per video id, for benchmarks that read a time window
        (ActivityNet, DiDeMo); videos absent from the dict are read whole.
    """

    benchmark: str
    split: str
    video_ids: tuple[str, ...]
    captions: tuple[str, ...]
    caption_video: tuple[int, ...]
    spans: dict[str, tuple[float, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.captions) != len(self.caption_video):
            raise ValueError(
                f"{self.benchmark}/{self.split}: {len(self.captions)} captions but "
                f"{len(self.caption_video)} caption->video indices"
            )
        if len(set(self.video_ids)) != len(self.video_ids):
            raise ValueError(f"{self.benchmark}/{self.split}: duplicate video ids in the gallery")
        bad = [i for i in self.caption_video if not 0 <= i < len(self.video_ids)]
        if bad:
            raise ValueError(f"{self.benchmark}/{self.split}: caption->video index out of range: {bad[:5]}")
        # the readers check each caption where they read it (naming the file); this guards every other producer
        empty = [i for i, c in enumerate(self.captions) if not isinstance(c, str) or not c.strip()]
        if empty:
            raise ValueError(f"{self.benchmark}/{self.split}: captions {empty[:5]} are not non-empty strings "
                             f"(e.g. {self.captions[empty[0]]!r}); every caption must be text")

    @property
    def num_videos(self) -> int:
        return len(self.video_ids)

    @property
    def num_captions(self) -> int:
        return len(self.captions)


def save_annotations(annotations: SplitAnnotations, path) -> None:
    """Write one split as JSON (what preprocess hands to every later stage)."""
    import json
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": annotations.benchmark,
        "split": annotations.split,
        "video_ids": list(annotations.video_ids),
        "captions": list(annotations.captions),
        "caption_video": list(annotations.caption_video),
        "spans": {key: list(value) for key, value in annotations.spans.items()},
    }
    path.write_text(json.dumps(payload, ensure_ascii=False) + "\n")


def load_annotations(path) -> SplitAnnotations:
    """Read a split written by `save_annotations`, with a clear error when it is missing."""
    import json
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run the preprocess stage of this benchmark "
                                f"(`dvc repro`) first")
    payload = json.loads(path.read_text())
    return SplitAnnotations(
        benchmark=payload["benchmark"],
        split=payload["split"],
        video_ids=tuple(payload["video_ids"]),
        captions=tuple(payload["captions"]),
        caption_video=tuple(payload["caption_video"]),
        spans={key: (float(value[0]), float(value[1])) for key, value in payload["spans"].items()},
    )
