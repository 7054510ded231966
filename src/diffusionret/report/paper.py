"""The seed paper's numbers as copied by later papers (DREAM 2024 Tables 1-3, DITS NeurIPS 2024 Tables 1-2) and
by the paperswithcode listing of the paper's results.

None = not given in those copies (not retrievable, or cut off); the report prints it as n/a. Keys are
benchmark `source` names of params.yaml, metric names as in metrics.json (`t2v/R1`, ...).
"""

from __future__ import annotations

COLUMNS = ("R1", "R5", "R10", "MdR", "MnR")


def _row(t2v: tuple, v2t: tuple | None = None) -> dict[str, float | None]:
    """Flat metrics of one paper row from the paper's column order (R@1, R@5, R@10, MdR, MnR)."""
    v2t = v2t or (None,) * len(COLUMNS)
    return {**{f"t2v/{name}": value for name, value in zip(COLUMNS, t2v)},
            **{f"v2t/{name}": value for name, value in zip(COLUMNS, v2t)}}


# in-domain, ViT-B/32, without QB-Norm (MSRVTT: DREAM Table 1; LSMDC: DITS Table 1; MSVD: DREAM Table 2;
# ActivityNet: DREAM Table 3 for t2v, paperswithcode for v2t; DiDeMo: DITS Table 2)
PAPER = {
    "msrvtt": _row((49.0, 75.2, 82.7, 2.0, 12.1), (47.7, 73.8, 84.5, 2.0, 8.8)),  # MSRVTT-1kA
    "lsmdc": _row((24.4, 43.1, 54.3, 8.0, 40.7)),
    "msvd": _row((46.6, 75.9, 84.1, 2.0, 15.7)),
    "activitynet": _row((45.8, 75.6, 86.3, 2.0, 6.5), (43.8, None, 86.7, 2.0, 6.3)),  # v2t R@5 cut off
    "didemo": _row((46.7, 74.7, 82.7, 2.0, 14.3)),
}

# with QB-Norm (paperswithcode "Results from the paper"); only ActivityNet could be verified
PAPER_QBNORM = {
    "activitynet": _row((48.1, None, 85.7, 2.0, 6.8), (47.4, 76.3, 86.7, 2.0, None)),  # v2t MnR cut off
}

PAPER_SOURCE_NOTE = ("Paper rows: DiffusionRet (ICCV 2023), ViT-B/32, as reported by the paper and copied by "
                     "later papers (DREAM 2024, DITS 2024) and leaderboards; n/a = not available there.")


def paper_rows(source: str) -> list[tuple[str, dict[str, float | None]]]:
    """(label, flat metrics) of the paper rows for a real benchmark; empty for the synthetic one."""
    if source not in PAPER:
        return []
    empty = _row((None,) * len(COLUMNS))
    return [("DiffusionRet, paper", PAPER[source]),
            ("DiffusionRet + QB-Norm, paper", PAPER_QBNORM.get(source, empty))]
