"""model.frame_feature = cls+grid: CLS feature plus patch tokens pooled on a coarse grid and projected."""

import copy

import pytest
import torch
import yaml

from diffusionret.config import ConfigError, params_from_dict
from diffusionret.model.backbone import ClipBackbone, build_clip
from diffusionret.model.checkpoint import load_extractor, save_extractor
from diffusionret.model.extractor import build_feature_extractor
from test_config import REPO


def _frames(batch=2, num_frames=3, size=32, seed=3):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, num_frames, size, size, 3), dtype=torch.uint8, generator=generator)


def _by_hand(backbone: ClipBackbone, frames: torch.Tensor, mask: torch.Tensor, grid: int) -> torch.Tensor:
    """The cls+grid feature with explicit loops over grid cells (no adaptive pooling, no reshape of the module)."""
    clip = backbone.clip
    pixels = backbone.normalise_frames(frames, mask)
    hidden = clip.vision_model(pixel_values=pixels).last_hidden_state  # (N, 1 + P*P, Dv)
    normed = clip.vision_model.post_layernorm(hidden)
    side = int(round((hidden.shape[1] - 1) ** 0.5))
    cls_part = normed[:, 0] @ clip.visual_projection.weight.T  # (N, D)
    cells = []
    for row in range(grid):
        for col in range(grid):
            # the patches whose (row, col) fall in this cell; cells are equal when grid divides side
            rows = range(row * side // grid, -(-(row + 1) * side // grid))
            cols = range(col * side // grid, -(-(col + 1) * side // grid))
            tokens = [normed[:, 1 + r * side + c] for r in rows for c in cols]
            cells.append(torch.stack(tokens).mean(0))  # (N, Dv)
    grid_part = torch.cat(cells, dim=1) @ backbone.grid_projection.weight.T  # (N, D)
    return (cls_part + grid_part).reshape(frames.shape[0], frames.shape[1], -1)


@pytest.mark.parametrize("grid", [1, 2, 3, 4])
def test_cls_grid_matches_a_computation_by_hand(grid):
    torch.manual_seed(0)
    backbone = ClipBackbone(build_clip("tiny"), frame_feature="cls+grid", frame_grid=grid).eval()
    frames, mask = _frames(), torch.tensor([[1, 1, 1], [1, 1, 0]])
    with torch.no_grad():
        features = backbone.encode_frames(frames, mask)
        expected = _by_hand(backbone, frames, mask, grid)
    assert features.shape == (2, 3, 64)
    assert backbone.grid_projection.weight.shape == (64, grid * grid * 64)
    torch.testing.assert_close(features, expected, rtol=1e-5, atol=1e-5)


def test_cls_grid_sees_where_the_object_is_and_cls_is_unchanged():
    torch.manual_seed(0)
    clip = build_clip("tiny")
    plain = ClipBackbone(clip).eval()
    gridded = ClipBackbone(clip, frame_feature="cls+grid", frame_grid=2).eval()
    frames, mask = _frames(batch=1, num_frames=2), torch.ones(1, 2, dtype=torch.long)
    with torch.no_grad():
        # the CLS part is the paper's feature; with a zero grid projection both agree exactly
        gridded.grid_projection.weight.zero_()
        torch.testing.assert_close(gridded.encode_frames(frames, mask), plain.encode_frames(frames, mask))
        # the grid part tells apart a block in the top-left from one in the bottom-right quadrant
        torch.nn.init.normal_(gridded.grid_projection.weight)
        left = torch.zeros(1, 1, 32, 32, 3, dtype=torch.uint8)
        right = left.clone()
        left[0, 0, 4:12, 4:12] = 255
        right[0, 0, 20:28, 20:28] = 255
        one = torch.ones(1, 1, dtype=torch.long)
        grid_left = gridded.pooled_patch_grid(gridded.clip.vision_model(
            pixel_values=gridded.normalise_frames(left, one)).last_hidden_state).reshape(2, 2, 64)
        grid_right = gridded.pooled_patch_grid(gridded.clip.vision_model(
            pixel_values=gridded.normalise_frames(right, one)).last_hidden_state).reshape(2, 2, 64)
    # the cells without the block differ from the cell holding it, and the block's cell moves with it
    assert (grid_left[0, 0] - grid_left[1, 1]).abs().max() > 0.1
    torch.testing.assert_close(grid_left[0, 0], grid_right[1, 1], rtol=0.3, atol=0.3)


def test_grid_projection_trains_and_cls_default_has_none():
    torch.manual_seed(0)
    extractor = build_feature_extractor("tiny", temporal="seqTransf", temporal_layers=2, head="wti",
                                        frame_feature="cls+grid", frame_grid=2)
    assert extractor.backbone.grid_projection.weight.requires_grad
    projection = extractor.backbone.grid_projection.weight
    assert any(projection is parameter for parameter in extractor.non_clip_parameters())
    assert build_feature_extractor("tiny", temporal="none", head="meanP").backbone.grid_projection is None


def test_bad_grid_and_feature_are_refused():
    with pytest.raises(ValueError, match=r"frame_grid=5 must lie in 1\.\.4"):
        ClipBackbone(build_clip("tiny"), frame_feature="cls+grid", frame_grid=5)
    with pytest.raises(ValueError, match="unknown frame feature 'patches'"):
        ClipBackbone(build_clip("tiny"), frame_feature="patches")


def test_round_trip_keeps_the_frame_feature(tmp_path):
    torch.manual_seed(0)
    extractor = build_feature_extractor("tiny", temporal="seqTransf", temporal_layers=2, head="wti",
                                        vocab_size=300, bos_token_id=0, eos_token_id=1, pad_token_id=2,
                                        frame_feature="cls+grid", frame_grid=2)
    metadata = {"model": {"backbone": "tiny", "temporal": "seqTransf", "temporal_layers": 2, "head": "wti",
                          "frame_feature": "cls+grid", "frame_grid": 2}}
    save_extractor(extractor, tmp_path, metadata)
    loaded, _ = load_extractor(tmp_path)
    frames, mask = _frames(), torch.ones(2, 3, dtype=torch.long)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_video(frames, mask).frames,
                                   extractor.eval().encode_video(frames, mask).frames)


@pytest.mark.parametrize("key, value, allowed", [("frame_feature", "patches", "cls, cls+grid"),
                                                 ("frame_grid", 0, ">= 1")])
def test_config_names_bad_frame_feature_values(key, value, allowed):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw = copy.deepcopy(raw)
    raw["model"][key] = value
    with pytest.raises(ConfigError) as error:
        params_from_dict(raw)
    assert f"`model.{key}`" in str(error.value) and allowed in str(error.value)

