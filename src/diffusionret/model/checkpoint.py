"""Save and strictly load the stage-1 extractor and the stage-2 generator.

A checkpoint directory holds `model.safetensors`, `model.json` (everything needed to rebuild the module
and the data settings it was trained with), the CLIP config (`clip/`) and the tokenizer (`tokenizer/`).
Loading is strict: a missing or unexpected key is an error naming it (the official code's strict=False
silently left untrained weights, e.g. untrained denoisers).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from diffusionret.model.denoiser import Generator
from diffusionret.model.extractor import FeatureExtractor


class CheckpointMismatch(RuntimeError):
    """A checkpoint's keys do not match the module being loaded."""


def load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """load_state_dict(strict=True) with an error that names the file and the keys."""
    expected = set(module.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise CheckpointMismatch(
            f"{source} does not match the model: missing keys {missing[:10]}"
            f"{' ...' if len(missing) > 10 else ''}, unexpected keys {unexpected[:10]}"
            f"{' ...' if len(unexpected) > 10 else ''}. Was it written by a different stage or model "
            f"configuration? Re-run the stage that writes it (`dvc repro`)."
        )
    module.load_state_dict(state, strict=True)


def save_module(module_state: dict[str, torch.Tensor], directory: Path, metadata: dict) -> None:
    """Write weights + metadata to a checkpoint directory."""
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in module_state.items()}, str(directory / "model.safetensors"))
    (directory / "model.json").write_text(json.dumps(metadata, indent=2) + "\n")


def read_metadata(directory: Path) -> dict:
    path = directory / "model.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {directory} is not a complete checkpoint; re-run the "
                                f"training stage that writes it (`dvc repro`)")
    return json.loads(path.read_text())


def save_extractor(extractor, directory: Path, metadata: dict, state: dict[str, torch.Tensor] | None = None) -> None:
    """Save a FeatureExtractor (its CLIP config goes to `clip/` so it can be rebuilt without the hub)."""
    extractor.backbone.clip.config.save_pretrained(str(directory / "clip"))
    save_module(state if state is not None else extractor.state_dict(), directory, metadata)


def load_extractor(directory: Path):
    """Rebuild the FeatureExtractor a stage-1 checkpoint describes and load its weights strictly."""
    from transformers import CLIPConfig, CLIPModel

    metadata = read_metadata(directory)
    clip = CLIPModel(CLIPConfig.from_pretrained(str(directory / "clip")))
    model = metadata["model"]
    # checkpoints written before model.frame_feature existed hold the paper's CLS feature
    extractor = FeatureExtractor(clip, temporal=model["temporal"], temporal_layers=model["temporal_layers"],
                                 head=model["head"], head_params=model.get("head_params"),
                                 frame_feature=model.get("frame_feature", "cls"), frame_grid=model.get("frame_grid", 2))
    load_strict(extractor, load_file(str(directory / "model.safetensors")), directory / "model.safetensors")
    if getattr(extractor.head, "reinit_basis_on_load", False):
        extractor.head.reset_basis()  # model.emcl.reinit_basis_on_load: the official reload (saved bases ignored)
    extractor.eval()
    return extractor, metadata


def load_generator(directory: Path):
    """Rebuild the two denoisers a stage-2 checkpoint describes and load their weights strictly."""
    metadata = read_metadata(directory)
    generator = Generator(metadata["width"], frame_temperature=metadata["frame_temperature"])
    load_strict(generator, load_file(str(directory / "model.safetensors")), directory / "model.safetensors")
    generator.eval()
    return generator, metadata
