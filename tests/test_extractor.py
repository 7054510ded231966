"""FeatureExtractor: assembled shapes, padded frames harmless, logit scale, parameter groups and counts."""

import math

import pytest
import torch

from diffusionret.model.extractor import FeatureExtractor, TextFeatures, VideoFeatures, build_feature_extractor


@pytest.fixture(scope="module")
def extractor() -> FeatureExtractor:
    torch.manual_seed(0)  # CLIPModel and nn.Linear initialise from the global RNG
    return build_feature_extractor("tiny", temporal="seqTransf", temporal_layers=2, head="wti",
                                   vocab_size=300, bos_token_id=0, eos_token_id=1, pad_token_id=2).eval()


def _batch(seed: int):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 300, (3, 6), generator=generator)
    text_mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 3 + [0] * 3])
    ids[:, 0] = 0
    ids[text_mask == 0] = 2
    ids[torch.arange(3), text_mask.sum(1) - 1] = 1
    frames = torch.randint(0, 256, (2, 4, 32, 32, 3), dtype=torch.uint8, generator=generator)
    video_mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    frames[video_mask == 0] = 0  # the uint8 cache pads with black frames
    return ids, text_mask, frames, video_mask


def test_forward_shapes_and_features(extractor):
    ids, text_mask, frames, video_mask = _batch(1)
    with torch.no_grad():
        text = extractor.encode_text(ids, text_mask)
        video = extractor.encode_video(frames, video_mask)
        scores = extractor(ids, text_mask, frames, video_mask)
    assert isinstance(text, TextFeatures) and isinstance(video, VideoFeatures)
    assert text.tokens.shape == (3, 6, 64) and text.sentence.shape == (3, 64) and text.mask is text_mask
    assert video.frames.shape == (2, 4, 64) and video.mask is video_mask
    assert scores.shape == (3, 2) and torch.isfinite(scores).all()
    torch.testing.assert_close(scores, extractor.similarity(text, video))


def test_padded_frames_are_harmless(extractor):
    ids, text_mask, frames, video_mask = _batch(2)
    noisy = frames.clone()
    generator = torch.Generator().manual_seed(9)
    noisy[0, 2:] = torch.randint(0, 256, noisy[0, 2:].shape, dtype=torch.uint8, generator=generator)
    with torch.no_grad():
        video, video_noisy = extractor.encode_video(frames, video_mask), extractor.encode_video(noisy, video_mask)
        scores = extractor(ids, text_mask, frames, video_mask)
        scores_noisy = extractor(ids, text_mask, noisy, video_mask)
        # one-video batches: a video's features do not depend on what it is batched with
        alone = extractor.encode_video(frames[1:], video_mask[1:])
    torch.testing.assert_close(video.frames, video_noisy.frames)  # padded positions too: they enter CLIP as 0 pixels
    torch.testing.assert_close(scores, scores_noisy)
    torch.testing.assert_close(alone.frames[0], video.frames[1], rtol=1e-5, atol=1e-5)


def test_logit_scale_is_clips_and_clamps(extractor):
    assert extractor.logit_scale is extractor.backbone.clip.logit_scale
    assert extractor.logit_scale.item() == pytest.approx(math.log(100.0))
    original = extractor.logit_scale.detach().clone()
    try:
        with torch.no_grad():
            extractor.logit_scale.fill_(6.0)
        extractor.clamp_logit_scale_()
        assert extractor.logit_scale.item() == pytest.approx(math.log(100.0))
        with torch.no_grad():
            extractor.logit_scale.fill_(1.5)
        extractor.clamp_logit_scale_()
        assert extractor.logit_scale.item() == pytest.approx(1.5)
    finally:
        with torch.no_grad():
            extractor.logit_scale.copy_(original)


def _layer_count(width: int, mlp: int) -> int:
    """One pre-LN block: q/k/v/out Linear with bias, two LayerNorms, fc1/fc2 with bias."""
    return 4 * (width * width + width) + 2 * (2 * width) + (width * mlp + mlp) + (mlp * width + width)


def test_parameter_groups_and_counts(extractor):
    clip_group, other_group = extractor.clip_parameters(), extractor.non_clip_parameters()
    everything = list(extractor.parameters())
    assert {id(p) for p in clip_group} | {id(p) for p in other_group} == {id(p) for p in everything}
    assert not {id(p) for p in clip_group} & {id(p) for p in other_group}
    assert any(p is extractor.logit_scale for p in clip_group)

    temporal = sum(p.numel() for p in extractor.temporal.parameters())
    head = sum(p.numel() for p in extractor.head.parameters())
    assert temporal == 77 * 64 + 2 * _layer_count(64, 256)  # position table + 2 copied text blocks
    assert head == 2 * ((64 * 128 + 128) + (128 + 1))  # token and frame weight MLPs
    assert sum(p.numel() for p in other_group) == temporal + head


def test_mean_pool_without_temporal_matches_backbone(extractor):
    torch.manual_seed(0)
    plain = FeatureExtractor(extractor.backbone.clip, temporal="none", head="meanP").eval()
    ids, text_mask, frames, video_mask = _batch(3)
    with torch.no_grad():
        scores = plain(ids, text_mask, frames, video_mask)
        _, sentence = extractor.backbone.encode_text(ids, text_mask)
        per_frame = extractor.backbone.encode_frames(frames, video_mask)
    unit = torch.nn.functional.normalize(per_frame, dim=-1)  # CLIP4Clip meanP: frames normalised, then averaged
    pooled = torch.stack([unit[b, video_mask[b].bool()].mean(0) for b in range(2)])  # (V, D)
    expected = torch.nn.functional.cosine_similarity(sentence[:, None, :], pooled[None, :, :], dim=-1)
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-6)


def test_unknown_names_are_errors():
    with pytest.raises(ValueError, match="unknown similarity head 'dot'"):
        build_feature_extractor("tiny", temporal="none", head="dot")
    with pytest.raises(ValueError, match="unknown temporal module 'lstm'"):
        build_feature_extractor("tiny", temporal="lstm", head="wti")
