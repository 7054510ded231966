"""A trained model directory for search: `<dir>/disc` (extractor) + `<dir>/gen` (generator), and its fingerprint.

The fingerprint is the sha256 of `disc/model.safetensors` and of `gen/model.safetensors`. An index records it;
frame features depend only on the extractor (disc), the re-ranking also on the generator (gen).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from diffusionret.data.download import sha256_of
from diffusionret.method.diffusion import create_diffusion
from diffusionret.model.checkpoint import load_extractor, load_generator, read_metadata
from diffusionret.model.tokenizer import load_tokenizer

WEIGHTS = "model.safetensors"


class CheckpointMismatchError(ValueError):
    """An index was built with a different checkpoint than the one asked to search it."""


@dataclass(frozen=True)
class FrameSettings:
    """How frames are sampled for a model: exactly what `preprocess@<benchmark>` did for its training data."""

    sample_fps: float
    max_frames: int
    image_size: int
    decoder: str = "decord"

    def as_dict(self) -> dict:
        return {"sample_fps": self.sample_fps, "max_frames": self.max_frames, "image_size": self.image_size,
                "decoder": self.decoder}


@dataclass(frozen=True)
class Fingerprint:
    """sha256 of the two checkpoint files; `short` names the pair in messages."""

    disc_sha256: str
    gen_sha256: str

    @property
    def short(self) -> str:
        return hashlib.sha256(f"{self.disc_sha256}:{self.gen_sha256}".encode()).hexdigest()[:16]

    def as_dict(self) -> dict:
        return {"disc_sha256": self.disc_sha256, "gen_sha256": self.gen_sha256, "fingerprint": self.short}

    @staticmethod
    def from_dict(raw: dict) -> "Fingerprint":
        return Fingerprint(raw["disc_sha256"], raw["gen_sha256"])


@dataclass
class SearchModel:
    """Everything a search needs from a model directory (torch modules in eval mode)."""

    directory: Path
    extractor: object  # FeatureExtractor
    tokenizer: object
    generator: object | None  # model.denoiser.Generator, None when loaded for indexing only
    diffusion: object | None  # diffusion.GaussianDiffusion matching the generator's training
    frames: FrameSettings
    max_words: int
    fingerprint: Fingerprint


def check_model_dir(model_dir: Path) -> None:
    """Raise if `model_dir` lacks the disc/ or gen/ checkpoint a search needs, saying which stage writes it."""
    model_dir = Path(model_dir)
    for part, stage in (("disc", "train_disc"), ("gen", "train_gen")):
        for name in (WEIGHTS, "model.json"):
            if not (model_dir / part / name).is_file():
                raise FileNotFoundError(
                    f"{model_dir / part / name} is missing: --model must be a trained model directory holding "
                    f"disc/ and gen/ (e.g. models/synthetic); run `dvc repro {stage}@<benchmark>` to write it")


def fingerprint_model(model_dir: Path) -> Fingerprint:
    """sha256 of disc/model.safetensors and gen/model.safetensors."""
    check_model_dir(model_dir)
    return Fingerprint(sha256_of(Path(model_dir) / "disc" / WEIGHTS), sha256_of(Path(model_dir) / "gen" / WEIGHTS))


def frame_settings(model_dir: Path, decoder: str = "decord") -> tuple[FrameSettings, int]:
    """The frame sampling and max_words the extractor was trained with (disc/model.json `data`)."""
    data = read_metadata(Path(model_dir) / "disc").get("data")
    keys = ("fps", "max_frames", "image_size", "max_words")
    if not isinstance(data, dict) or any(key not in data for key in keys):
        raise ValueError(f"{Path(model_dir) / 'disc' / 'model.json'} has no `data` section with {list(keys)}; it "
                         "was written by an older train_disc: re-run `dvc repro train_disc@<benchmark>`")
    return (FrameSettings(float(data["fps"]), int(data["max_frames"]), int(data["image_size"]), decoder),
            int(data["max_words"]))


def load_search_model(model_dir: Path, *, with_generator: bool = True, decoder: str = "decord",
                      fingerprint: Fingerprint | None = None) -> SearchModel:
    """Load the extractor, tokenizer and (optionally) the generator + its diffusion from a model directory."""
    model_dir = Path(model_dir)
    check_model_dir(model_dir)
    fingerprint = fingerprint or fingerprint_model(model_dir)
    settings, max_words = frame_settings(model_dir, decoder)
    extractor, _ = load_extractor(model_dir / "disc")
    tokenizer = load_tokenizer(model_dir / "disc" / "tokenizer")
    generator = diffusion = None
    if with_generator:
        generator, gen_meta = load_generator(model_dir / "gen")
        trained_with = gen_meta.get("diffusion", {})
        if "steps" not in trained_with or "schedule" not in trained_with:
            raise ValueError(f"{model_dir / 'gen' / 'model.json'} does not say which diffusion the generator was "
                             "trained with (`diffusion: {steps, schedule}`); re-run `dvc repro train_gen@<benchmark>`")
        diffusion = create_diffusion(int(trained_with["steps"]), str(trained_with["schedule"]))
    return SearchModel(model_dir, extractor, tokenizer, generator, diffusion, settings, max_words, fingerprint)
