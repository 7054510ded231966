"""`diffusionret model-summary`: parameter counts against arithmetic written out here."""

import json

import pytest

from diffusionret.cli import apply_overrides, main
from diffusionret.config import ConfigError


def denoiser_parameters(width: int) -> int:
    """q/k/v (no bias) + out proj + time MLP (2 layers) + decoder Linear(2D,2D)-ReLU-Linear(2D,1)."""
    d = width
    return 3 * d * d + (d * d + d) + 2 * (d * d + d) + (2 * d * 2 * d + 2 * d) + (2 * d + 1)


def text_layer_parameters(width: int, mlp: int) -> int:
    attention = 4 * (width * width + width)
    norms = 2 * 2 * width
    feed_forward = width * mlp + mlp + mlp * width + width
    return attention + norms + feed_forward


def test_vit_b_32_counts(capsys):
    code = main(["model-summary", "-S", "model.backbone=vit-b-32", "-S", "model.temporal_layers=4",
                 "-S", "model.tokenizer_vocab_size=49408", "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    modules = summary["modules"]
    assert denoiser_parameters(512) == 2_625_025  # by hand from the official layer sizes
    assert modules["denoiser.t2v"] == modules["denoiser.v2t"] == denoiser_parameters(512)
    assert summary["generator_total"] == 2 * denoiser_parameters(512)
    assert modules["temporal"] == 77 * 512 + 4 * text_layer_parameters(512, 2048)
    assert modules["head"] == 2 * (512 * 1024 + 1024 + 1024 + 1)
    # patch embedding conv (3 * 32 * 32 * 768, no bias) is the only frozen tensor
    assert summary["extractor_total"] - summary["extractor_trainable_stage1"] == 3 * 32 * 32 * 768


def test_tiny_default_counts_follow_params(capsys):
    assert main(["model-summary", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["backbone"] == "tiny" and summary["width"] == 64
    assert summary["modules"]["denoiser.t2v"] == denoiser_parameters(64)


def test_overrides_reject_unknown_keys():
    with pytest.raises(ConfigError, match="unknown key `learning_rate`"):
        apply_overrides({"train": {"lr": 1}}, ["train.learning_rate=2"])
    with pytest.raises(ConfigError, match="section.key=value"):
        apply_overrides({}, ["train.lr"])
    assert apply_overrides({"train": {"lr": 1}}, ["train.lr=0.5"]) == {"train": {"lr": 0.5}}


def test_invalid_override_value_exits_2(capsys):
    assert main(["model-summary", "-S", "train.lr=-1"]) == 2
    assert "`train.lr`" in capsys.readouterr().err
