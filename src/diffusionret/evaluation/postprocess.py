"""Score post-processing on a similarity matrix: QB-Norm (Bogolin et al., CVPR 2022, official
ioanacroi/qb-norm dynamic inverted softmax) and DSL (CAMoE's dual softmax).

Pure functions: inputs are never modified; outputs are new float64 arrays (Q, G) whose ROWS are the
queries. Only the order within a row is meaningful afterwards (QB-Norm mixes normalised and raw rows),
so rank along rows only: for v2t, post-process the (V, Q) video-rows matrix with its own bank and
evaluate it with `metrics.v2t_metrics(..., orientation="video_rows")`.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

DEFAULT_CHUNK_SIZE = 1024


def _as_float64(x: Any, name: str) -> np.ndarray:
    """A float64 2-D numpy copy of an array-like or torch tensor, rejecting NaN and infinite scores."""
    if hasattr(x, "detach"):  # torch tensor, without importing torch
        x = x.detach().cpu().double().numpy()
    out = np.array(x, dtype=np.float64)  # always a copy: callers' arrays are never touched
    if out.ndim != 2 or 0 in out.shape:
        raise ValueError(f"{name} must be a non-empty 2-D (queries, gallery) matrix, got shape {out.shape}")
    bad_rows = np.flatnonzero(~np.isfinite(out).all(axis=1))
    if bad_rows.size:
        raise ValueError(f"{name}: row {int(bad_rows[0])} has a NaN or infinite score ({bad_rows.size} such rows)")
    return out


def activation_set(bank_scores: Any, *, k: int = 1, min_count: int = 1,
                   chunk_size: int = DEFAULT_CHUNK_SIZE) -> np.ndarray:
    """(G,) bool: gallery items in the top-k of at least `min_count` bank queries (ties: lower index first)."""
    return _activation_of_bank(_as_float64(bank_scores, "bank_scores"), k, min_count, chunk_size)


def _activation_of_bank(bank: np.ndarray, k: int, min_count: int, chunk_size: int) -> np.ndarray:
    """activation_set on an already validated float64 bank (Nb, G)."""
    num_gallery = bank.shape[1]
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if not 1 <= k <= num_gallery:
        raise ValueError(f"qbnorm k={k} must be in [1, gallery size {num_gallery}]")
    if min_count < 1:
        raise ValueError(f"qbnorm min_count={min_count} must be >= 1")
    counts = np.zeros(num_gallery, dtype=np.int64)  # (G,) how often each item is a bank query's top-k
    for row0 in range(0, len(bank), chunk_size):
        top_k = np.argsort(-bank[row0:row0 + chunk_size], axis=1, kind="stable")[:, :k]  # (c, k)
        counts += np.bincount(top_k.ravel(), minlength=num_gallery)
    return counts >= min_count


def _column_logsumexp(matrix: np.ndarray, scale: float, chunk_size: int) -> np.ndarray:
    """(G,) log sum_b exp(scale * matrix[b, g]) over rows, in row chunks, without overflow."""
    total = np.full(matrix.shape[1], -np.inf)
    for row0 in range(0, len(matrix), chunk_size):
        logits = scale * matrix[row0:row0 + chunk_size]  # (c, G)
        peak = logits.max(axis=0)
        chunk_lse = peak + np.log(np.exp(logits - peak).sum(axis=0))
        total = np.logaddexp(total, chunk_lse)
    return total


def qb_norm(scores: Any, bank_scores: Any, *, beta: float = 20.0, k: int = 1, min_count: int = 1,
            chunk_size: int = DEFAULT_CHUNK_SIZE) -> np.ndarray:
    """Querybank normalisation by dynamic inverted softmax (Bogolin et al., CVPR 2022), in log space.

    scores (Q, G): test queries x test gallery; bank_scores (Nb, G): TRAINING queries x the same test
    gallery (never test queries). A = `activation_set(bank_scores, k, min_count)` (min_count is DiCoSA's
    theta; 1 = official). A row whose top-1 item (first index on ties) is in A becomes
        log s'(q, v) = beta * s(q, v) - log sum_b exp(beta * Sb(b, v)),
    the LOG of the official exp(beta s) / sum_b exp(beta Sb): same order within the row, but no
    overflow (beta=1000 on logits) and no underflow to tied zeros. Other rows keep their raw scores.
    Returns a new float64 (Q, G) array; rank along rows only.
    """
    test = _as_float64(scores, "scores")  # (Q, G)
    bank = _as_float64(bank_scores, "bank_scores")  # (Nb, G)
    if test.shape[1] != bank.shape[1]:
        raise ValueError(f"qbnorm: scores have {test.shape[1]} gallery columns but bank_scores {bank.shape[1]}; "
                         "the bank must score the SAME test gallery")
    if not (np.isfinite(beta) and beta > 0):
        raise ValueError(f"qbnorm beta={beta} must be a positive finite number")
    active = _activation_of_bank(bank, k, min_count, chunk_size)  # (G,)
    log_normaliser = _column_logsumexp(bank, beta, chunk_size)  # (G,)
    for row0 in range(0, len(test), chunk_size):
        chunk = test[row0:row0 + chunk_size]  # (c, G) view into our own copy
        gated = active[chunk.argmax(axis=1)]  # (c,) top-1 item is a hub of the bank
        chunk[gated] = beta * chunk[gated] - log_normaliser
    return test


def dual_softmax(scores: Any, *, temperature: float = 100.0) -> np.ndarray:
    """Dual softmax (DSL, Cheng et al. 2021): scores * softmax(temperature * scores) over the QUERY axis 0.

    Transductive: every output value depends on ALL test queries at once (a prior that each gallery
    item is wanted by about one query), so it is not usable for a single live query; report it apart.
    """
    raw = _as_float64(scores, "scores")  # (Q, G)
    if not np.isfinite(temperature):
        raise ValueError(f"dsl temperature={temperature} must be finite")
    logits = temperature * raw
    logits -= logits.max(axis=0, keepdims=True)  # stable softmax down each gallery column
    weights = np.exp(logits)
    weights /= weights.sum(axis=0, keepdims=True)  # (Q, G), columns sum to 1
    return raw * weights


def no_postprocess(scores: Any) -> np.ndarray:
    """The raw scores as a new float64 array (the "none" entry of the registry)."""
    return _as_float64(scores, "scores")


def _qbnorm_entry(scores: Any, bank_scores: Any = None, **params: Any) -> np.ndarray:
    """Registry adapter: QB-Norm needs a bank."""
    if bank_scores is None:
        raise ValueError("postprocess 'qbnorm' needs bank_scores (training queries x test gallery)")
    return qb_norm(scores, bank_scores, **params)


def _dsl_entry(scores: Any, bank_scores: Any = None, **params: Any) -> np.ndarray:
    """Registry adapter: DSL uses no bank."""
    return dual_softmax(scores, **params)


def _none_entry(scores: Any, bank_scores: Any = None) -> np.ndarray:
    """Registry adapter: identity."""
    return no_postprocess(scores)


# name -> fn(scores (Q, G), bank_scores (Nb, G) | None, **params) -> (Q, G); bank used by qbnorm only.
POSTPROCESSORS: dict[str, Callable[..., np.ndarray]] = {
    "none": _none_entry,
    "qbnorm": _qbnorm_entry,
    "dsl": _dsl_entry,
}


def apply_postprocess(name: str, scores: Any, *, bank_scores: Any = None, **params: Any) -> np.ndarray:
    """Look up `name` in POSTPROCESSORS and apply it; unknown names list the valid ones."""
    if name not in POSTPROCESSORS:
        raise ValueError(f"unknown postprocess {name!r}; choose one of {sorted(POSTPROCESSORS)}")
    return POSTPROCESSORS[name](scores, bank_scores, **params)
