"""What a score matrix gets right about the synthetic meanings: top-1 attribute accuracy and top-k composition.

Rows are queries, columns candidates, each with (colour, shape, motion) labels (`meanings`). Every order breaks
ties at random (`ranking.descending_order`). Percentages are over all queries unless a key says otherwise.
"""

from __future__ import annotations

import numpy as np

from diffusionret.diagnostics.meanings import ATTRIBUTES, Labels, combined
from diffusionret.diagnostics.ranking import descending_order

# attribute groups reported: each attribute alone, colour+shape, and the whole meaning
GROUPS = {**{attribute: (attribute,) for attribute in ATTRIBUTES}, "colour_shape": ("colour", "shape"),
          "meaning": ATTRIBUTES}


def _same_share(row_labels: np.ndarray, column_labels: np.ndarray) -> np.ndarray:
    """(Q,) share of the columns whose label equals each row's label."""
    values, counts = np.unique(column_labels, return_counts=True)
    share = dict(zip(values.tolist(), (counts / len(column_labels)).tolist()))
    return np.array([share.get(label, 0.0) for label in row_labels.tolist()])


def top1_attribute_accuracy(scores: np.ndarray, rows: Labels, columns: Labels, rng: np.random.Generator) -> dict:
    """Share (%) of queries whose top-1 candidate has the query's label, per group, with its chance level.

    scores: (Q, C); rows: labels of the Q queries; columns: labels of the C candidates. Chance is the expected
    accuracy of a uniformly random top-1: the mean share of candidates with the query's label.
    """
    top1 = descending_order(scores, rng)[:, 0]  # (Q,)
    out = {}
    for name, attributes in GROUPS.items():
        row_labels, column_labels = combined(rows, attributes), combined(columns, attributes)
        out[f"top1_{name}"] = 100.0 * float(np.mean(row_labels == column_labels[top1]))
        out[f"top1_{name}_chance"] = 100.0 * float(np.mean(_same_share(row_labels, column_labels)))
    return out


def topk_composition(scores: np.ndarray, rows: Labels, columns: Labels, positives: np.ndarray, k: int,
                     rng: np.random.Generator) -> dict:
    """What each query's top-k holds, and where its true candidate stands among those of its colour and shape.

    scores: (Q, C); positives: (Q, C) bool, the query's true candidates (several for v2t with several captions per
    video). Keys: `topk_same_colour` / `topk_same_colour_shape` (mean count in the top-k), `topk_colour_shape_coverage`
    (% of the gallery's candidates of the query's colour+shape that are in its top-k), `true_in_topk` (%),
    `group_rank` (mean 1-based rank of the best true candidate among the top-k's colour+shape group, over queries
    with a true candidate in the top-k) and `group_rank_random` (its expectation under a random order of the group:
    (g + 1) / (m + 1) for g candidates of which m true), `oracle_colour_shape_R1` (% of queries whose true candidate
    leads its group: R@1 of a re-ranker that moves the query's colour+shape to the front, keeping this order inside),
    `random_motion_R1` (% expected from picking uniformly among the gallery's candidates of the query's colour+shape).
    """
    k = min(k, scores.shape[1])
    topk = descending_order(scores, rng)[:, :k]  # (Q, k)
    colour_shape_rows = combined(rows, ("colour", "shape"))  # (Q,)
    colour_shape_columns = combined(columns, ("colour", "shape"))  # (C,)
    same_colour = rows["colour"][:, None] == columns["colour"][topk]  # (Q, k)
    same_group = colour_shape_rows[:, None] == colour_shape_columns[topk]  # (Q, k)
    group_in_gallery = colour_shape_rows[:, None] == colour_shape_columns[None, :]  # (Q, C)
    true_topk = np.take_along_axis(np.asarray(positives, bool), topk, axis=1)  # (Q, k)
    found = true_topk.any(axis=1)  # (Q,)
    first_true = true_topk.argmax(axis=1)  # position in the top-k of the best true candidate
    rank_in_group = np.take_along_axis(np.cumsum(same_group | true_topk, axis=1),
                                       first_true[:, None], axis=1)[:, 0]  # (Q,) 1-based among the group
    group_size = same_group.sum(axis=1)
    true_in_group = (true_topk & same_group).sum(axis=1)
    positives_in_group = (np.asarray(positives, bool) & group_in_gallery).sum(axis=1)
    return {
        "topk_same_colour": float(same_colour.sum(axis=1).mean()),
        "topk_same_colour_shape": float(group_size.mean()),
        "topk_colour_shape_coverage": 100.0 * float(np.mean(group_size / group_in_gallery.sum(axis=1))),
        "true_in_topk": 100.0 * float(found.mean()),
        "group_rank": float(rank_in_group[found].mean()) if found.any() else float("nan"),
        "group_rank_random": float(((group_size[found] + 1) / (true_in_group[found] + 1)).mean())
        if found.any() else float("nan"),
        "oracle_colour_shape_R1": 100.0 * float(np.mean(found & (rank_in_group == 1))),
        "random_motion_R1": 100.0 * float(np.mean(positives_in_group / group_in_gallery.sum(axis=1))),
    }
