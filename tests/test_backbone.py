"""CLIP backbone: configs, loading, text/sentence/frame features, pixel normalisation, frozen patch conv."""

import time

import numpy as np
import pytest
import torch

from diffusionret.model.backbone import NAMED_CLIP_CONFIGS, ClipBackbone, build_clip

EOS = 49407


@pytest.fixture(scope="module")
def tiny() -> ClipBackbone:
    torch.manual_seed(0)  # CLIPModel's own init draws from the global RNG; fixed for reproducible values
    return ClipBackbone(build_clip("tiny")).eval()


def _text_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """ids (3, 7) framed [bos] words [eos] pad (pad id 0, not eos) and their mask."""
    generator = torch.Generator().manual_seed(1)
    lengths = [7, 4, 3]  # valid tokens per row, bos and eos included
    ids = torch.zeros(3, 7, dtype=torch.long)
    mask = torch.zeros(3, 7, dtype=torch.long)
    for row, length in enumerate(lengths):
        ids[row, 0] = 49406
        ids[row, 1 : length - 1] = torch.randint(1, 49000, (length - 2,), generator=generator)
        ids[row, length - 1] = EOS
        mask[row, :length] = 1
    return ids, mask


def test_tiny_config_numbers(tiny):
    config = tiny.clip.config
    assert (config.text_config.hidden_size, config.projection_dim, config.vision_config.hidden_size) == (64, 64, 64)
    assert config.text_config.num_hidden_layers == config.vision_config.num_hidden_layers == 2
    assert config.vision_config.image_size == 32 and config.vision_config.patch_size == 8
    assert config.text_config.hidden_act == config.vision_config.hidden_act == "quick_gelu"
    assert tiny.clip.logit_scale.item() == pytest.approx(np.log(100.0))


def test_text_features_and_sentence_at_eos(tiny):
    ids, mask = _text_batch()
    with torch.no_grad():
        tokens, sentence = tiny.encode_text(ids, mask)
        # HF's own pooled path: final-layer-normed hidden state at the FIRST eos id, projected
        hf_pooled = tiny.clip.get_text_features(input_ids=ids, attention_mask=mask).pooler_output
    assert tokens.shape == (3, 7, 64) and sentence.shape == (3, 64)
    torch.testing.assert_close(sentence, hf_pooled, rtol=1e-5, atol=1e-5)
    eos_rows = [(row, int((ids[row] == EOS).nonzero()[0])) for row in range(3)]
    for row, position in eos_rows:
        torch.testing.assert_close(tokens[row, position], sentence[row])


def test_valid_tokens_ignore_padding(tiny):
    ids, mask = _text_batch()
    changed = ids.clone()
    changed[mask == 0] = 12345
    with torch.no_grad():
        tokens, _ = tiny.encode_text(ids, mask)
        tokens_changed, _ = tiny.encode_text(changed, mask)
    valid = mask.bool()
    torch.testing.assert_close(tokens[valid], tokens_changed[valid])


def test_frame_normalisation_by_hand(tiny):
    generator = np.random.default_rng(2)
    frames = generator.integers(0, 256, size=(2, 3, 32, 32, 3), dtype=np.uint8)
    mean = np.array([0.48145466, 0.4578275, 0.40821073])
    std = np.array([0.26862954, 0.26130258, 0.27577711])
    expected = np.empty((6, 3, 32, 32))
    for video in range(2):
        for frame in range(3):
            for channel in range(3):
                plane = frames[video, frame, :, :, channel] / 255.0
                expected[video * 3 + frame, channel] = (plane - mean[channel]) / std[channel]
    pixels = tiny.normalise_frames(torch.from_numpy(frames))
    np.testing.assert_allclose(pixels.numpy(), expected, rtol=1e-5, atol=1e-5)

    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    masked = tiny.normalise_frames(torch.from_numpy(frames), mask).numpy()
    assert np.all(masked[[2, 4, 5]] == 0.0)  # padded frames are 0 in normalised space
    np.testing.assert_allclose(masked[[0, 1, 3]], expected[[0, 1, 3]], rtol=1e-5, atol=1e-5)


def test_frame_features_match_hf_image_features(tiny):
    frames = torch.randint(0, 256, (2, 3, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    with torch.no_grad():
        features = tiny.encode_frames(frames, mask)
        pixels = tiny.normalise_frames(frames, mask)
        hf = tiny.clip.get_image_features(pixel_values=pixels).pooler_output.reshape(2, 3, -1)
        changed = frames.clone()
        changed[1, 2] = 255 - changed[1, 2]
        features_changed = tiny.encode_frames(changed, mask)
    assert features.shape == (2, 3, 64)
    torch.testing.assert_close(features, hf)
    torch.testing.assert_close(features, features_changed)  # the content of a padded frame is irrelevant


def test_patch_embedding_frozen_and_rest_trains():
    torch.manual_seed(0)
    backbone = ClipBackbone(build_clip("tiny"))
    patch = backbone.clip.vision_model.embeddings.patch_embedding.weight
    assert not patch.requires_grad
    ids, mask = _text_batch()
    frames = torch.randint(0, 256, (1, 2, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    tokens, sentence = backbone.encode_text(ids, mask)
    (tokens.sum() + sentence.sum() + backbone.encode_frames(frames).sum()).backward()
    assert patch.grad is None
    assert backbone.clip.vision_model.embeddings.class_embedding.grad is not None
    assert backbone.clip.visual_projection.weight.grad is not None
    assert backbone.clip.text_projection.weight.grad is not None
    assert any(p is patch for p in backbone.clip_parameters())
    assert len(backbone.clip_parameters()) == len(list(backbone.clip.parameters()))


def test_vocab_overrides_apply_to_named_configs():
    clip = build_clip("tiny", vocab_size=300, bos_token_id=0, eos_token_id=1, pad_token_id=2)
    assert clip.text_model.embeddings.token_embedding.weight.shape == (300, 64)
    assert (clip.config.text_config.bos_token_id, clip.config.text_config.eos_token_id) == (0, 1)
    assert clip.config.text_config.pad_token_id == 2


def test_local_directory_round_trip(tiny, tmp_path):
    tiny.clip.save_pretrained(tmp_path)
    loaded = build_clip(str(tmp_path))
    reference = tiny.clip.state_dict()
    for name, tensor in loaded.state_dict().items():
        torch.testing.assert_close(tensor, reference[name], rtol=0, atol=0)
    with pytest.raises(ValueError, match="cannot be overridden"):
        build_clip(str(tmp_path), vocab_size=300)


def test_hub_id_offline_fails_fast_and_clearly():
    start = time.monotonic()
    with pytest.raises(OSError, match="openai/clip-vit-base-patch32") as error:
        build_clip("openai/clip-vit-base-patch32")
    assert "point model.backbone at that folder" in str(error.value)
    assert time.monotonic() - start < 30


def _layer_count(width: int, mlp: int) -> int:
    """Parameters of one pre-LN block: q/k/v/out Linear with bias, two LayerNorms, fc1/fc2 with bias."""
    return 4 * (width * width + width) + 2 * (2 * width) + (width * mlp + mlp) + (mlp * width + width)


def test_vit_b_32_architecture_and_parameter_count():
    with torch.device("meta"):  # shapes only: the same modules and counts without initialising 151M weights (5 s)
        clip = build_clip("vit-b-32")
    text, vision = clip.config.text_config, clip.config.vision_config
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads, text.intermediate_size) == (
        512, 12, 8, 2048)
    assert (vision.hidden_size, vision.num_hidden_layers, vision.num_attention_heads,
            vision.intermediate_size) == (768, 12, 12, 3072)
    assert (vision.image_size, vision.patch_size, clip.config.projection_dim, text.vocab_size) == (224, 32, 512, 49408)
    assert text.hidden_act == vision.hidden_act == "quick_gelu"

    text_count = 49408 * 512 + 77 * 512 + 12 * _layer_count(512, 2048) + 2 * 512
    patches = (224 // 32) ** 2
    vision_count = 768 + 3 * 32 * 32 * 768 + (patches + 1) * 768 + 2 * 768 + 12 * _layer_count(768, 3072) + 2 * 768
    total = text_count + vision_count + 768 * 512 + 512 * 512 + 1  # projections (no bias) + logit_scale
    assert sum(p.numel() for p in clip.parameters()) == total == 151_277_313  # also the HF model card's count
