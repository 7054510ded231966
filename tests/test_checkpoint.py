"""Checkpoints load strictly: a missing or unexpected key is an error that names it."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from diffusionret.model.checkpoint import (CheckpointMismatch, load_extractor, load_generator, save_extractor,
                                           save_module)
from diffusionret.model.denoiser import Generator
from diffusionret.model.extractor import build_feature_extractor


def write_generator(directory, width=16):
    generator = Generator(width, frame_temperature=1.0, seed=3)
    save_module(generator.state_dict(), directory, {"width": width, "frame_temperature": 1.0,
                                                     "diffusion": {"steps": 10, "schedule": "cosine"}})
    return generator


def test_generator_round_trip(tmp_path):
    original = write_generator(tmp_path)
    loaded, metadata = load_generator(tmp_path)
    assert metadata["width"] == 16
    for key, value in original.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


def test_missing_denoiser_key_is_refused(tmp_path):
    write_generator(tmp_path)
    weights = load_file(str(tmp_path / "model.safetensors"))
    dropped = "t2v.decoder.0.weight" if "t2v.decoder.0.weight" in weights else sorted(weights)[0]
    del weights[dropped]
    save_file(weights, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointMismatch, match=dropped.replace(".", r"\.")):
        load_generator(tmp_path)


def test_unexpected_key_is_refused(tmp_path):
    write_generator(tmp_path)
    weights = load_file(str(tmp_path / "model.safetensors"))
    weights["t2v.extra_layer.weight"] = torch.zeros(2)
    save_file(weights, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointMismatch, match=r"unexpected keys \['t2v\.extra_layer\.weight'\]"):
        load_generator(tmp_path)


def test_extractor_round_trip_rebuilds_from_saved_config(tmp_path):
    torch.manual_seed(0)
    extractor = build_feature_extractor("tiny", temporal="seqTransf", temporal_layers=2, head="wti",
                                        vocab_size=300, bos_token_id=0, eos_token_id=1, pad_token_id=2)
    metadata = {"model": {"backbone": "tiny", "temporal": "seqTransf", "temporal_layers": 2, "head": "wti"}}
    save_extractor(extractor, tmp_path, metadata)
    loaded, _ = load_extractor(tmp_path)
    ids = torch.tensor([[0, 5, 6, 1, 2]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    with torch.no_grad():
        expected = extractor.eval().encode_text(ids, mask).sentence
        assert torch.allclose(loaded.encode_text(ids, mask).sentence, expected)


def test_missing_metadata_names_the_stage(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.json is missing"):
        load_generator(tmp_path)
