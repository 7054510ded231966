"""Exact ties between different captions' features: two captions with different text that the model cannot tell
apart (identical stage-1 score rows, identical sentence vectors). A cut caption is the usual cause (the words that
differ never reach the model); a tied group ranks its videos identically, so v2t rankings between the group's
captions fall back to the tie convention.

Keys (`ties/<what>/<name>`, what in score_rows | sentence): `tied_captions` = captions whose row equals the row of
at least one caption with a different text; `groups` = rows shared by two or more different texts; `largest_group`
= the most different texts sharing one row (1 = no tie); `distinct_rows` = distinct rows over all captions.
`ties/distinct_texts` = distinct caption texts (captions with the same text are never counted as tied).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def tie_counts(rows: np.ndarray, texts: Sequence[str]) -> dict[str, float]:
    """Counts of exact ties between rows (N, D) of captions with different `texts` (N,); see the module doc."""
    rows = np.ascontiguousarray(np.asarray(rows))
    if rows.ndim != 2 or rows.shape[0] != len(texts):
        raise ValueError(f"tie_counts needs one row per caption: rows {rows.shape}, {len(texts)} captions")
    _, row_of = np.unique(rows.reshape(len(rows), -1), axis=0, return_inverse=True)  # (N,) group of each caption
    row_of = row_of.reshape(-1)
    _, text_of = np.unique(np.asarray(list(texts), dtype=object).astype(str), return_inverse=True)  # (N,)
    pairs = np.unique(np.stack([row_of, text_of.reshape(-1)], axis=1), axis=0)  # distinct (row, text) pairs
    texts_per_row = np.bincount(pairs[:, 0], minlength=int(row_of.max()) + 1 if len(rows) else 0)
    tied = texts_per_row[row_of] > 1
    return {"tied_captions": int(tied.sum()), "groups": int((texts_per_row > 1).sum()),
            "largest_group": int(texts_per_row.max()) if len(rows) else 0,
            "distinct_rows": int(len(texts_per_row))}


def cell_ties(stage1: np.ndarray, sentence: np.ndarray | None, texts: Sequence[str]) -> dict[str, float]:
    """`ties/...` metrics of one cell: stage-1 score rows (Q, V) and, when given, sentence vectors (Q, D)."""
    found = {f"ties/score_rows/{name}": value for name, value in tie_counts(stage1, texts).items()}
    if sentence is not None:
        found.update({f"ties/sentence/{name}": value for name, value in tie_counts(sentence, texts).items()})
    found["ties/distinct_texts"] = len(set(texts))
    return found
