"""Captions the text tower cuts at `max_words`: how many, and by how many tokens, per split.

A caption is framed as [bos] + tokens + [eos] and cut to `max_words` ids (model/tokenizer.py `tokenize`), so a
caption of n tokens loses max(0, n + 2 - max_words) tokens: its tail (often the motion words) never reaches the
model. Two counts exist:

- exact: token lengths from the tokenizer the model uses (trained at stage 1 for the from-scratch backbone, the
  checkpoint's own for CLIP). `extract` and `evaluate` report this one, and `data check` does when the stage-1
  tokenizer of a trained benchmark exists.
- lower bound, before any tokenizer exists (`preprocess`, `data check` on a fresh clone): the number of
  pre-tokenizer pieces of the lower-cased caption (GPT-2's split into runs of letters, runs of digits, runs of
  punctuation, each with its leading space). Every BPE used here splits at least there (the byte-level BPE
  trained at stage 1 uses exactly this split; CLIP's splits digits further) and never merges across pieces, so
  each piece is at least one token: a caption cut under this count is cut under any of them. Unseen words split
  into several tokens, so the exact count can be much higher (a tokenizer trained on other words).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

FRAMING = 2  # [bos] and [eos] take two of the max_words positions
LOWER_BOUND = "word_pieces"  # name of the lower-bound count, as the reports say it


def word_piece_lengths(captions: Sequence[str]) -> np.ndarray:
    """(N,) pieces per caption under the byte-level pre-tokenizer (lower-cased, whitespace collapsed)."""
    from tokenizers import pre_tokenizers

    split = pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)
    return np.array([len(split.pre_tokenize_str(" ".join(str(c).lower().split()))) for c in captions],
                    dtype=np.int64)


def truncation_summary(token_lengths: Sequence[int] | np.ndarray, max_words: int) -> dict[str, float]:
    """captions, truncated (how many are cut), max/mean excess tokens over the cut ones (0 when none), longest
    (the longest framed length, bos and eos included: the smallest max_words that cuts nothing)."""
    lengths = np.asarray(token_lengths, dtype=np.int64)
    excess = np.maximum(lengths + FRAMING - max_words, 0)  # (N,) tokens cut off each caption
    cut = excess[excess > 0]
    return {"captions": int(lengths.size), "truncated": int(cut.size),
            "max_excess": int(cut.max()) if cut.size else 0,
            "mean_excess": float(cut.mean()) if cut.size else 0.0,
            "longest": int(lengths.max()) + FRAMING if lengths.size else 0, "max_words": int(max_words)}


def split_truncation(captions_of: dict[str, Sequence[str]], max_words: int,
                     lengths: Callable[[Sequence[str]], np.ndarray] = word_piece_lengths) -> dict[str, dict]:
    """`truncation_summary` per split, with `lengths` (default: the lower bound) giving the token counts."""
    return {split: truncation_summary(lengths(list(captions)), max_words) for split, captions in captions_of.items()
            if len(captions)}


def flat_truncation(per_split: dict[str, dict], prefix: str) -> dict[str, float]:
    """{"<prefix>/<split>/<key>": value} of every numeric entry (for MLflow and metrics.json)."""
    return {f"{prefix}/{split}/{key}": float(value) for split, summary in per_split.items()
            for key, value in summary.items()}
