"""Exact ties between different captions' features, counted by hand on small matrices."""

import numpy as np

from diffusionret.evaluation.ties import cell_ties, tie_counts


def test_ties_by_hand():
    a, b = [1.0, 0.5], [0.2, 0.3]
    c = [0.2, float(np.nextafter(np.float32(0.3), np.float32(1.0)))]  # one float32 step from b: not a tie
    rows = np.array([a, a, b, a, c, b], dtype=np.float32)
    texts = ["x", "y", "z", "x", "w", "v"]
    # row a: texts x, y, x -> 2 different texts, 3 captions tied; row b: z, v -> 2 texts, 2 captions; row c alone
    found = tie_counts(rows, texts)
    assert found == {"tied_captions": 5, "groups": 2, "largest_group": 2, "distinct_rows": 3}


def test_same_text_is_not_a_tie_and_no_ties_is_zero():
    rows = np.array([[1.0, 2.0], [1.0, 2.0], [3.0, 4.0]])
    assert tie_counts(rows, ["same", "same", "other"]) == {"tied_captions": 0, "groups": 0, "largest_group": 1,
                                                           "distinct_rows": 2}


def test_cell_ties_counts_score_rows_and_sentence_vectors():
    stage1 = np.array([[0.1, 0.2], [0.1, 0.2], [0.1, 0.2]], dtype=np.float32)  # (Q, V): all three rows equal
    sentence = np.array([[1.0], [2.0], [2.0]], dtype=np.float32)  # (Q, D): the last two equal
    found = cell_ties(stage1, sentence, ["p", "q", "r"])
    assert found["ties/score_rows/tied_captions"] == 3 and found["ties/score_rows/largest_group"] == 3
    assert found["ties/sentence/tied_captions"] == 2 and found["ties/sentence/groups"] == 1
    assert found["ties/distinct_texts"] == 3
