"""train.batch_sampler = neighbours: batches of groups of TF-IDF caption neighbours, each video once, a pure
function of (seed, step)."""

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

from diffusionret.config import ConfigError, params_from_dict
from diffusionret.data.batches import StepBatchSampler
from diffusionret.data.neighbours import caption_neighbours, neighbour_batch_indices

REPO = Path(__file__).resolve().parents[1]

COLOURS = ("red", "green", "blue")
SHAPES = ("circle", "square")
MOTIONS = ("left", "right", "up", "down")
TEMPLATES = ("a {c} {s} moves {m}", "there is the {c} {s} that travels {m}")


def manual_tfidf_similarity(captions: list[str]) -> np.ndarray:
    """Cosine similarity of smoothed TF-IDF vectors without English stop words, computed by hand."""
    documents = [[w for w in caption.lower().split() if w not in ENGLISH_STOP_WORDS] for caption in captions]
    vocabulary = sorted({w for doc in documents for w in doc})
    frequency = {w: sum(w in doc for doc in documents) for w in vocabulary}
    n = len(documents)
    vectors = np.array([[Counter(doc)[w] * (math.log((1 + n) / (1 + frequency[w])) + 1) for w in vocabulary]
                        for doc in documents])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors @ vectors.T


def synthetic_captions() -> list[str]:
    return [t.format(c=c, s=s, m=m) for c in COLOURS for s in SHAPES for m in MOTIONS for t in TEMPLATES]


def test_neighbour_table_holds_the_nearest_captions_by_tfidf_cosine():
    captions = synthetic_captions()  # 48 captions
    pool = 5
    table = caption_neighbours(captions, pool)
    similarity = manual_tfidf_similarity(captions)
    np.fill_diagonal(similarity, -np.inf)
    for row, neighbours in enumerate(table):
        assert row not in neighbours and len(set(neighbours)) == pool
        kth = np.sort(similarity[row])[::-1][pool - 1]
        assert (similarity[row, neighbours] >= kth - 1e-9).all()  # nearest first, up to ties
        assert (np.diff(similarity[row, neighbours]) <= 1e-9).all()
        tied = similarity[row, neighbours[:-1]] == similarity[row, neighbours[1:]]
        assert (np.diff(neighbours)[tied] > 0).all()  # ties broken by caption index


def clustered_inputs():
    """48 captions in 6 clusters of 8; caption i shows video i // 2 (4 videos per cluster); each caption's
    neighbour row is the other 7 captions of its cluster."""
    cluster = np.arange(48) // 8
    caption_video = np.arange(48) // 2
    table = np.array([[j for j in range(48) if cluster[j] == cluster[i] and j != i] for i in range(48)])
    return cluster, caption_video, table


@pytest.mark.parametrize("step", range(6))
def test_batches_are_groups_of_text_neighbours_with_each_video_once(step):
    cluster, caption_video, table = clustered_inputs()
    batch = neighbour_batch_indices(table, caption_video, batch_size=12, group_size=4, seed=3, step=step)
    assert len(batch) == 12
    assert len(set(caption_video[batch])) == 12  # no video twice
    groups = cluster[batch].reshape(3, 4)  # a cluster has 4 videos: every group fills from its anchor's cluster
    assert (groups == groups[:, :1]).all(), groups
    assert len(set(groups[:, 0])) == 3  # a used cluster cannot open another group (its videos are taken)


def test_the_batch_of_a_step_is_a_pure_function_of_seed_and_step():
    _, caption_video, table = clustered_inputs()
    draw = lambda seed, step: neighbour_batch_indices(table, caption_video, 12, 4, seed, step)  # noqa: E731
    assert (draw(3, 7) == draw(3, 7)).all()
    assert len({tuple(draw(3, s)) for s in range(20)}) > 10  # steps differ
    assert any((draw(3, s) != draw(4, s)).any() for s in range(5))  # seeds differ


def test_a_resumed_sampler_reads_the_batches_of_the_uninterrupted_one():
    _, caption_video, table = clustered_inputs()
    draw = lambda step: neighbour_batch_indices(table, caption_video, 12, 4, 3, step)  # noqa: E731
    straight = list(StepBatchSampler(48, 12, 3, 0, 10, draw=draw))
    resumed = list(StepBatchSampler(48, 12, 3, 4, 10, draw=draw))
    assert resumed == straight[4:]
    halves = [list(StepBatchSampler(48, 12, 3, 0, 10, rank=r, world_size=2, draw=draw)) for r in (0, 1)]
    assert [a + b for a, b in zip(*halves)] == straight  # two processes share the same global batch


def test_a_batch_larger_than_the_videos_is_refused():
    _, caption_video, table = clustered_inputs()
    with pytest.raises(ValueError, match="24 training videos"):
        neighbour_batch_indices(table, caption_video, 32, 4, 0, 0)
    with pytest.raises(ValueError, match="neighbour_pool"):
        caption_neighbours(["a b", "c d"], 2)


@pytest.mark.parametrize("key, value, allowed", [("batch_sampler", "hard", "random, neighbours"),
                                                 ("neighbour_group", 1, "[2, global_batch"),
                                                 ("neighbour_group", 65, "[2, global_batch = 64]"),
                                                 ("neighbour_pool", 3, ">= neighbour_group - 1")])
def test_config_validation(key, value, allowed):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["train"].update({"batch_sampler": "neighbours", key: value})
    with pytest.raises(ConfigError) as error:
        params_from_dict(raw)
    assert f"`train.{key}`" in str(error.value) and allowed in str(error.value), str(error.value)


def test_paper_preset_keeps_random_batches():
    preset = yaml.safe_load((REPO / "configs/presets/paper.yaml").read_text())
    assert preset["params"]["train"]["batch_sampler"] == "random"


def test_a_share_of_the_batch_in_groups_and_the_rest_single_captions():
    cluster, caption_video, table = clustered_inputs()
    for step in range(6):
        batch = neighbour_batch_indices(table, caption_video, 12, 4, 3, step, share=0.5)  # 6 places in groups
        assert len(set(caption_video[batch])) == 12
        assert (cluster[batch[:4]] == cluster[batch[0]]).all() and cluster[batch[4]] == cluster[batch[5]]
    singles = [tuple(neighbour_batch_indices(table, caption_video, 12, 4, 3, s, share=0.5)[6:]) for s in range(40)]
    clusters_after = np.array([cluster[list(s)] for s in singles])  # (40, 6)
    # single captions are not groups: their clusters differ within a batch far more often than a group's would
    assert np.mean([len(set(row)) > 1 for row in clusters_after]) > 0.9


def test_warm_up_draws_random_batches_before_from_step_and_neighbour_groups_from_it():
    """train.neighbour_from_step: the seeded random epoch order first, then neighbour groups (each rule computed
    here by its own function); the caption-to-video map has 2 captions per video, as the synthetic train split."""
    from diffusionret.data.batches import global_batch_indices
    from diffusionret.data.neighbours import warmed_up_batch_draw

    captions = synthetic_captions()  # 48 captions
    caption_video = np.arange(48) // 2
    table = caption_neighbours(captions, 5)
    draw = warmed_up_batch_draw(table, caption_video, 8, 4, seed=3, share=1.0, from_step=2)
    for step in (0, 1):
        assert np.array_equal(draw(step), global_batch_indices(48, 8, 3, step))
    for step in (2, 3):
        assert np.array_equal(draw(step), neighbour_batch_indices(table, caption_video, 8, 4, 3, step, 1.0))
    epoch_order = np.random.default_rng([3, 0]).permutation(48)  # the random sampler's first epoch, by hand
    assert list(draw(1)) == list(epoch_order[8:16])
