"""Linear probes: how much of each attribute a feature holds, read by a logistic regression (scikit-learn).

Fit on the trained benchmark's training split, scored on held-out splits. Features are standardised (fitted on the
training rows) before the regression. Frame features are concatenated over frames and token features either
averaged over the caption's tokens or concatenated over positions; masked frames / tokens are zeros, and a split
with fewer or more positions than the training split is zero-padded or cut to the training length.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits


def _fit_length(array: np.ndarray, length: int) -> np.ndarray:
    """(N, P, D) cut or zero-padded to (N, length, D) along the positions."""
    if array.shape[1] >= length:
        return array[:, :length]
    return np.concatenate([array, np.zeros((array.shape[0], length - array.shape[1], array.shape[2]),
                                           dtype=array.dtype)], axis=1)


def concatenated(features: np.ndarray, mask: np.ndarray, length: int | None = None) -> np.ndarray:
    """(N, P, D) features with (N, P) mask -> (N, length * D), masked positions zeroed (length: P by default)."""
    masked = np.asarray(features, dtype=np.float32) * np.asarray(mask, dtype=np.float32)[..., None]
    masked = _fit_length(masked, length or masked.shape[1])
    return masked.reshape(masked.shape[0], -1)


def masked_mean(features: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(N, P, D) features with (N, P) mask -> (N, D) mean over the unmasked positions."""
    weights = np.asarray(mask, dtype=np.float32)[..., None]  # (N, P, 1)
    return (np.asarray(features, dtype=np.float32) * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1.0, None)


def probe_accuracy(train_x: np.ndarray, train_y: np.ndarray, evaluations: dict[str, tuple[np.ndarray, np.ndarray]],
                   *, c: float, max_iter: int) -> dict:
    """Fit once on (train_x (N, F), train_y (N,)); accuracy (%) on each named (x, y) evaluation split.

    Keys: `<split>` the probe's accuracy, `<split>_majority` the accuracy of always answering the training split's
    most frequent label; `chance` = 100 / number of labels; `converged` 1.0 when lbfgs stopped before max_iter.
    """
    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter))
    # one BLAS thread: these fits are small, and on a loaded 2-core machine more threads made them 30x slower
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(np.asarray(train_x, dtype=np.float32), train_y)
    labels, counts = np.unique(train_y, return_counts=True)
    majority = labels[counts.argmax()]
    out = {"chance": 100.0 / len(labels),
           "converged": float(model[-1].n_iter_.max() < max_iter)}
    for split, (x, y) in evaluations.items():
        with threadpool_limits(limits=1):
            predicted = model.predict(np.asarray(x, dtype=np.float32))
        out[split] = 100.0 * float(np.mean(predicted == y))
        out[f"{split}_majority"] = 100.0 * float(np.mean(y == majority))
    return out
