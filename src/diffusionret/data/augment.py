"""Training-frame augmentation of EMCL-Net, HBI and DiCoSA: RandAugment `rand-m7-n4-mstd0.5-inc1`, per video.

The policy string reads: magnitude 7 (of 10), 4 operations per video, the magnitude drawn per operation from
N(7, 0.5) clipped to [0, 10], and the "increasing" operation set (a larger magnitude is always a stronger
change). Each of the 4 operations is drawn uniformly, with replacement, from the 15 below and applied with
probability 0.5; one draw of operations and magnitudes is applied to every frame of a video, so the clip stays
temporally consistent (the video RandAugment of EMCL/HBI/DiCoSA's training loaders). Built on PIL, not torchvision.

Only training frames are augmented (`train.augment`); validation, test and the feature cache never are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

AUGMENT_NONE = "none"
RAND_AUGMENT = "rand-m7-n4-mstd0.5-inc1"
MAX_LEVEL = 10.0
FILL = (128, 128, 128)  # fill of pixels an affine transform uncovers
OP_PROBABILITY = 0.5


@dataclass(frozen=True)
class RandAugmentPolicy:
    magnitude: float = 7.0
    num_ops: int = 4
    magnitude_std: float = 0.5


def _signed(value: float, rng: np.random.Generator) -> float:
    return -value if rng.random() < 0.5 else value


def _affine(image: Image.Image, matrix: tuple[float, ...]) -> Image.Image:
    return image.transform(image.size, Image.Transform.AFFINE, matrix, resample=Image.Resampling.BICUBIC,
                           fillcolor=FILL)


# operation name -> (image, level in [0, 1], rng) -> image; the level is magnitude / 10
OPS: dict[str, Callable[[Image.Image, float, np.random.Generator], Image.Image]] = {
    "AutoContrast": lambda im, level, rng: ImageOps.autocontrast(im),
    "Equalize": lambda im, level, rng: ImageOps.equalize(im),
    "Invert": lambda im, level, rng: ImageOps.invert(im),
    "Rotate": lambda im, level, rng: im.rotate(_signed(30.0 * level, rng), resample=Image.Resampling.BICUBIC,
                                               fillcolor=FILL),
    "PosterizeIncreasing": lambda im, level, rng: ImageOps.posterize(im, max(1, 4 - int(4 * level))),
    "SolarizeIncreasing": lambda im, level, rng: ImageOps.solarize(im, 256 - int(256 * level)),
    "SolarizeAdd": lambda im, level, rng: _solarize_add(im, int(110 * level)),
    "ColorIncreasing": lambda im, level, rng: ImageEnhance.Color(im).enhance(1.0 + _signed(0.9 * level, rng)),
    "ContrastIncreasing": lambda im, level, rng: ImageEnhance.Contrast(im).enhance(1.0 + _signed(0.9 * level, rng)),
    "BrightnessIncreasing": lambda im, level, rng: ImageEnhance.Brightness(im).enhance(
        1.0 + _signed(0.9 * level, rng)),
    "SharpnessIncreasing": lambda im, level, rng: ImageEnhance.Sharpness(im).enhance(
        1.0 + _signed(0.9 * level, rng)),
    "ShearX": lambda im, level, rng: _affine(im, (1, _signed(0.3 * level, rng), 0, 0, 1, 0)),
    "ShearY": lambda im, level, rng: _affine(im, (1, 0, 0, _signed(0.3 * level, rng), 1, 0)),
    "TranslateXRel": lambda im, level, rng: _affine(im, (1, 0, _signed(0.45 * level, rng) * im.size[0], 0, 1, 0)),
    "TranslateYRel": lambda im, level, rng: _affine(im, (1, 0, 0, 0, 1, _signed(0.45 * level, rng) * im.size[1])),
}


def _solarize_add(image: Image.Image, add: int, threshold: int = 128) -> Image.Image:
    """Pixels below `threshold` get `add` added (clipped to 255); the others are kept."""
    pixels = np.asarray(image).astype(np.int16)
    shifted = np.where(pixels < threshold, np.minimum(pixels + add, 255), pixels)
    return Image.fromarray(shifted.astype(np.uint8))


def draw_plan(rng: np.random.Generator, policy: RandAugmentPolicy = RandAugmentPolicy()
              ) -> list[tuple[str, float, int]]:
    """The operations one video gets: (name, level in [0, 1], seed of the op's own random sign), skipped ops dropped."""
    names = list(OPS)
    plan = []
    for _ in range(policy.num_ops):
        name = names[int(rng.integers(len(names)))]
        magnitude = float(np.clip(rng.normal(policy.magnitude, policy.magnitude_std), 0.0, MAX_LEVEL))
        sign_seed = int(rng.integers(2**31))
        if rng.random() < OP_PROBABILITY:
            plan.append((name, magnitude / MAX_LEVEL, sign_seed))
    return plan


def apply_plan(frame: np.ndarray, plan: list[tuple[str, float, int]]) -> np.ndarray:
    """One uint8 frame (S, S, 3) through the operations of `plan`, in order."""
    image = Image.fromarray(frame)
    for name, level, sign_seed in plan:
        image = OPS[name](image, level, np.random.default_rng(sign_seed))  # same sign on every frame of a video
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def augment_video(frames: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 frames (T, S, S, 3) of one video with one RandAugment draw applied to every valid frame (mask (T,));
    padded frames stay as they are."""
    plan = draw_plan(rng)
    out = frames.copy()
    for index in np.flatnonzero(mask):
        out[index] = apply_plan(frames[index], plan)
    return out
