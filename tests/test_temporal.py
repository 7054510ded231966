"""seqTransf: initialisation from CLIP text layers, bidirectional masked attention, residual; registry."""

import math

import pytest
import torch

from diffusionret.model.backbone import build_clip
from diffusionret.model.temporal import TEMPORAL_MODULES, NoTemporal, SeqTransf


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)  # CLIPModel's own init uses the global RNG
    return build_clip("tiny")


def test_layers_and_positions_copied_from_text_encoder(clip):
    module = SeqTransf(clip, num_layers=2)
    torch.testing.assert_close(
        module.frame_position_embeddings.weight, clip.text_model.embeddings.position_embedding.weight, rtol=0, atol=0
    )
    for index in range(2):
        copied = module.layers[index].state_dict()
        original = clip.text_model.encoder.layers[index].state_dict()
        assert copied.keys() == original.keys()
        for name in original:
            torch.testing.assert_close(copied[name], original[name], rtol=0, atol=0)
    # a copy, not a share: training the temporal module must not move CLIP's text encoder
    with torch.no_grad():
        module.layers[0].mlp.fc1.weight.add_(1.0)
    assert not torch.equal(module.layers[0].mlp.fc1.weight, clip.text_model.encoder.layers[0].mlp.fc1.weight)


def test_first_layers_are_the_ones_copied(clip):
    module = SeqTransf(clip, num_layers=1)
    assert len(module.layers) == 1
    torch.testing.assert_close(module.layers[0].self_attn.q_proj.weight,
                               clip.text_model.encoder.layers[0].self_attn.q_proj.weight, rtol=0, atol=0)


def _reference_block(layer, hidden: torch.Tensor, valid: torch.Tensor, heads: int) -> torch.Tensor:
    """One pre-LN CLIP block written out for a single video: (T, D), keys restricted to valid frames."""
    attention, mlp = layer.self_attn, layer.mlp
    width = hidden.shape[-1]
    head_width = width // heads
    normed = torch.nn.functional.layer_norm(hidden, (width,), layer.layer_norm1.weight, layer.layer_norm1.bias, 1e-5)
    q = normed @ attention.q_proj.weight.T + attention.q_proj.bias
    k = normed @ attention.k_proj.weight.T + attention.k_proj.bias
    v = normed @ attention.v_proj.weight.T + attention.v_proj.bias
    outputs = []
    for head in range(heads):
        cols = slice(head * head_width, (head + 1) * head_width)
        rows = []
        for query in range(hidden.shape[0]):  # every frame attends to every VALID frame, before and after it
            logits = torch.stack([q[query, cols] @ k[key, cols] / math.sqrt(head_width) for key in valid])
            weights = torch.softmax(logits, dim=0)
            rows.append(sum(w * v[key, cols] for w, key in zip(weights, valid)))
        outputs.append(torch.stack(rows))
    attended = torch.cat(outputs, dim=-1) @ attention.out_proj.weight.T + attention.out_proj.bias
    hidden = hidden + attended
    normed = torch.nn.functional.layer_norm(hidden, (width,), layer.layer_norm2.weight, layer.layer_norm2.bias, 1e-5)
    inner = normed @ mlp.fc1.weight.T + mlp.fc1.bias
    inner = inner * torch.sigmoid(1.702 * inner)  # QuickGELU
    return hidden + inner @ mlp.fc2.weight.T + mlp.fc2.bias


def test_forward_matches_written_out_blocks(clip):
    module = SeqTransf(clip, num_layers=2).eval()
    generator = torch.Generator().manual_seed(5)
    frames = torch.randn(2, 4, 64, generator=generator, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    module = module.double()
    with torch.no_grad():
        output = module(frames, mask)
        for video in range(2):
            valid = [f for f in range(4) if mask[video, f] == 1]
            hidden = frames[video] + module.frame_position_embeddings.weight[:4]
            for layer in module.layers:
                hidden = _reference_block(layer, hidden, valid, heads=4)
            expected = hidden + frames[video]  # residual of the input frames
            torch.testing.assert_close(output[video, valid], expected[valid], rtol=1e-7, atol=1e-7)


def test_padded_frames_do_not_change_valid_outputs(clip):
    module = SeqTransf(clip, num_layers=2).eval()
    generator = torch.Generator().manual_seed(6)
    frames = torch.randn(2, 5, 64, generator=generator)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    changed = frames.clone()
    changed[mask == 0] = torch.randn(int((mask == 0).sum()), 64, generator=generator) * 50
    with torch.no_grad():
        output, output_changed = module(frames, mask), module(changed, mask)
    valid = mask.bool()
    torch.testing.assert_close(output[valid], output_changed[valid])
    assert torch.isfinite(output).all()


def test_too_many_layers_is_an_error(clip):
    with pytest.raises(ValueError, match="only 2 blocks"):
        SeqTransf(clip, num_layers=4)


def test_text_width_must_equal_projection_width():
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=16),
        projection_dim=48,
    )
    with pytest.raises(ValueError, match="width 32.*width 48"):
        SeqTransf(CLIPModel(config), num_layers=1)


def test_registry_and_identity(clip):
    assert set(TEMPORAL_MODULES) == {"seqTransf", "none"}
    frames = torch.randn(2, 3, 64, generator=torch.Generator().manual_seed(7))
    assert torch.equal(NoTemporal(clip, 0)(frames, torch.ones(2, 3)), frames)
