"""`train.augment`: RandAugment rand-m7-n4-mstd0.5-inc1 on training frames, one draw per video."""

import numpy as np
import pytest
import torch

from diffusionret.data.augment import OPS, RAND_AUGMENT, apply_plan, augment_video, draw_plan
from diffusionret.data.datasets import CaptionVideoDataset


def _frames(seed=0, count=4, size=16):
    return (np.random.default_rng(seed).random((count, size, size, 3)) * 255).astype(np.uint8)


def test_operations_by_hand():
    frame = _frames()[0]
    np.testing.assert_array_equal(apply_plan(frame, [("Invert", 0.7, 0)]), 255 - frame)
    # posterize at level 0.7 keeps 4 - int(2.8) = 2 bits
    np.testing.assert_array_equal(apply_plan(frame, [("PosterizeIncreasing", 0.7, 0)]), frame & 0b11000000)
    # solarize-add at level 0.5 adds int(55) below 128, clipped at 255
    expected = np.where(frame < 128, np.minimum(frame.astype(int) + 55, 255), frame).astype(np.uint8)
    np.testing.assert_array_equal(apply_plan(frame, [("SolarizeAdd", 0.5, 0)]), expected)
    # solarize at level 0.5 inverts pixels >= 256 - 128
    np.testing.assert_array_equal(apply_plan(frame, [("SolarizeIncreasing", 0.5, 0)]),
                                  np.where(frame >= 128, 255 - frame, frame))
    assert len(OPS) == 15


def test_plan_draws_four_operations_each_with_probability_one_half():
    rng = np.random.default_rng(0)
    plans = [draw_plan(rng) for _ in range(4000)]
    mean_ops = np.mean([len(plan) for plan in plans])
    assert mean_ops == pytest.approx(2.0, abs=0.1)  # 4 draws x 0.5
    levels = np.array([level for plan in plans for _, level, _ in plan])
    assert levels.min() >= 0 and levels.max() <= 1
    assert levels.mean() == pytest.approx(0.7, abs=0.01) and levels.std() == pytest.approx(0.05, abs=0.01)
    names = [name for plan in plans for name, _, _ in plan]
    assert set(names) == set(OPS)


def test_one_draw_per_video_and_padded_frames_untouched():
    frames = _frames()
    frames[1] = frames[0]  # two identical frames must stay identical: one draw for the whole video
    mask = np.array([True, True, True, False])
    for seed in range(10):
        out = augment_video(frames, mask, np.random.default_rng(seed))
        np.testing.assert_array_equal(out[0], out[1])
        np.testing.assert_array_equal(out[3], frames[3])
        assert out.dtype == np.uint8 and out.shape == frames.shape


def test_dataset_augments_only_when_asked():
    frames = _frames(count=4)[None]  # one video
    mask = np.ones((1, 4), dtype=bool)
    common = (torch.zeros(3, 5, dtype=torch.long), torch.ones(3, 5, dtype=torch.long), np.zeros(3, dtype=int),
              np.zeros(1, dtype=int), frames, mask)
    plain = CaptionVideoDataset(*common)
    np.testing.assert_array_equal(plain[0]["frames"].numpy(), frames[0])
    augmented = [CaptionVideoDataset(*common, augment=RAND_AUGMENT, augment_seed=5) for _ in range(2)]
    draws = [[dataset[i]["frames"].numpy() for i in range(3)] for dataset in augmented]
    for a, b in zip(*draws):
        np.testing.assert_array_equal(a, b)  # reproducible for a seed
    assert any(not np.array_equal(d, frames[0]) for d in draws[0])
    with pytest.raises(ValueError, match="unknown frame augmentation"):
        CaptionVideoDataset(*common, augment="rand-m9")
