"""The feature cache: float16 storage read back as float32, and token features read per batch from disk."""

import numpy as np
import pytest
import torch

from diffusionret.data.records import SplitAnnotations
from diffusionret.evaluation.scoring import score_queries
from diffusionret.features.cache import (SplitFeatureWriter, TokenRows, load_split_features, save_split_features,
                                         tokens_fit_in_memory)
from diffusionret.model.extractor import TextFeatures, VideoFeatures, build_feature_extractor
from diffusionret.pipeline.train_gen import feature_batch

# float16 keeps 11 significant bits: round-to-nearest errs by at most half a unit in the last place, i.e. 2^-11
# of the value for normal numbers, and by at most half the smallest subnormal step (2^-25) below 2^-14.
FP16_RTOL, FP16_ATOL = 2.0 ** -11, 2.0 ** -25


def make_split(num_videos=6, captions_per_video=3, words=7, frames=4, width=16, scale=3.0, seed=0):
    rng = torch.Generator().manual_seed(seed)
    num_captions = num_videos * captions_per_video
    lengths = torch.randint(2, words + 1, (num_captions,), generator=rng)
    text_mask = (torch.arange(words)[None] < lengths[:, None]).long()  # (C, L)
    tokens = torch.randn(num_captions, words, width, generator=rng) * scale  # (C, L, D)
    text = TextFeatures(tokens=tokens, mask=text_mask, sentence=tokens[torch.arange(num_captions), lengths - 1])
    video_mask = torch.ones(num_videos, frames, dtype=torch.long)
    video_mask[0, -1] = 0
    video = VideoFeatures(frames=torch.randn(num_videos, frames, width, generator=rng) * scale, mask=video_mask)
    annotations = SplitAnnotations(benchmark="b", split="train", video_ids=tuple(f"v{i}" for i in range(num_videos)),
                                   captions=tuple(f"caption {i}" for i in range(num_captions)),
                                   caption_video=tuple(i // captions_per_video for i in range(num_captions)))
    return text, video, annotations


def assert_fp16_rounding(stored: torch.Tensor, original: torch.Tensor) -> None:
    assert stored.dtype == torch.float32
    error = (stored.double() - original.double()).abs()
    bound = FP16_RTOL * original.double().abs() + FP16_ATOL
    assert bool((error <= bound).all()), float((error - bound).max())
    assert float(error.max()) > 0  # it really went through float16


def test_float16_round_trip_within_float16_rounding(tmp_path):
    text, video, annotations = make_split()
    save_split_features(tmp_path, "train", text, video, annotations, dtype="float16")
    assert np.load(tmp_path / "train.tokens.npy", mmap_mode="r").dtype == np.float16
    loaded = load_split_features(tmp_path, "train", "memory")
    assert_fp16_rounding(loaded.text.tokens[:], text.tokens)
    assert_fp16_rounding(loaded.text.sentence, text.sentence)
    assert_fp16_rounding(loaded.video.frames, video.frames)
    assert torch.equal(loaded.text.mask, text.mask) and torch.equal(loaded.video.mask, video.mask)
    assert loaded.annotations == annotations


def test_float32_storage_is_exact(tmp_path):
    text, video, annotations = make_split()
    save_split_features(tmp_path, "train", text, video, annotations, dtype="float32")
    loaded = load_split_features(tmp_path, "train", "disk")
    assert torch.equal(loaded.text.tokens[:], text.tokens)
    assert torch.equal(loaded.video.frames, video.frames)


def test_float16_overflow_is_an_error_naming_the_fix(tmp_path):
    text, video, annotations = make_split()
    text.tokens[0, 0, 0] = 7.0e4
    with pytest.raises(ValueError, match="features_dtype: float32"):
        save_split_features(tmp_path, "train", text, video, annotations, dtype="float16")


def test_blockwise_writer_equals_one_shot_and_leaves_no_temporary(tmp_path):
    text, video, annotations = make_split()
    writer = SplitFeatureWriter(tmp_path / "blocks", "train", len(text.tokens), "float16")
    for start in range(0, len(text.tokens), 5):
        part = slice(start, start + 5)
        writer.add_text(TextFeatures(tokens=text.tokens[part], mask=text.mask[part], sentence=text.sentence[part]))
    writer.finish(video, annotations)
    save_split_features(tmp_path / "whole", "train", text, video, annotations, dtype="float16")
    for name in ("train.tokens.npy", "train.safetensors"):
        assert (tmp_path / "blocks" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()
    assert sorted(p.name for p in (tmp_path / "blocks").iterdir()) == ["train.json", "train.safetensors",
                                                                     "train.tokens.npy"]


def test_incomplete_writer_refuses_to_finish(tmp_path):
    text, video, annotations = make_split()
    writer = SplitFeatureWriter(tmp_path, "train", len(text.tokens), "float16")
    writer.add_text(TextFeatures(tokens=text.tokens[:4], mask=text.mask[:4], sentence=text.sentence[:4]))
    with pytest.raises(ValueError, match="4 of 18 captions"):
        writer.finish(video, annotations)
    assert not (tmp_path / "train.tokens.npy").exists()


def test_disk_tokens_index_like_a_tensor(tmp_path):
    text, video, annotations = make_split()
    save_split_features(tmp_path, "train", text, video, annotations, dtype="float32")
    for in_memory in (False, True):
        rows = TokenRows(tmp_path / "train.tokens.npy", in_memory=in_memory)
        assert rows.shape == text.tokens.shape and len(rows) == len(text.tokens)
        index = torch.tensor([5, 1, 5, 17, 0])
        assert torch.equal(rows[index], text.tokens[index])
        assert torch.equal(rows[index.numpy()], text.tokens[index])
        assert torch.equal(rows[3:11], text.tokens[3:11])
        assert torch.equal(rows[4], text.tokens[4])


def test_missing_cache_names_the_stage(tmp_path):
    with pytest.raises(FileNotFoundError, match="extract"):
        load_split_features(tmp_path, "train")


def test_auto_loading_threshold_is_half_the_memory(tmp_path):
    stored = 1000 * 32 * 512 * 2  # 1000 captions of 32 x 512 float16
    assert tokens_fit_in_memory(stored, limit_bytes=2 * stored)
    assert not tokens_fit_in_memory(stored, limit_bytes=2 * stored - 2)
    text, video, annotations = make_split()
    save_split_features(tmp_path, "train", text, video, annotations)
    assert load_split_features(tmp_path, "train", "auto").text.tokens.in_memory  # a few kB
    assert not load_split_features(tmp_path, "train", "disk").text.tokens.in_memory


def test_disk_path_gives_the_scores_and_batches_of_the_memory_path(tmp_path):
    text, video, annotations = make_split(width=64, words=16)
    save_split_features(tmp_path, "train", text, video, annotations, dtype="float16")
    in_memory = load_split_features(tmp_path, "train", "memory")
    on_disk = load_split_features(tmp_path, "train", "disk")
    assert not on_disk.text.tokens.in_memory and in_memory.text.tokens.in_memory
    torch.manual_seed(0)
    extractor = build_feature_extractor("tiny", temporal="none", vocab_size=40).eval()
    whole = TextFeatures(tokens=in_memory.text.tokens[:], mask=in_memory.text.mask, sentence=in_memory.text.sentence)
    with torch.no_grad():
        reference = extractor.similarity(whole, in_memory.video)  # all captions at once, as one float32 tensor
        chunked = score_queries(extractor.similarity, on_disk.text, on_disk.video, query_block=4).stage1
    torch.testing.assert_close(chunked, reference, rtol=0, atol=1e-6)
    keys = torch.tensor(annotations.caption_video)
    indices = np.array([7, 2, 16, 9])
    disk_batch, memory_batch = feature_batch(on_disk, keys, indices), feature_batch(in_memory, keys, indices)
    assert disk_batch.keys() == memory_batch.keys()
    for name in disk_batch:
        assert torch.equal(disk_batch[name], memory_batch[name]), name


def test_feature_containers_index_and_cat_token_rows(tmp_path):
    text, video, annotations = make_split()
    save_split_features(tmp_path, "train", text, video, annotations, dtype="float32")
    on_disk = load_split_features(tmp_path, "train", "disk").text
    assert len(on_disk) == len(text)
    rows = torch.tensor([4, 0, 11])
    picked = on_disk[rows]
    assert isinstance(picked.tokens, torch.Tensor) and picked.tokens.dtype == torch.float32
    assert torch.equal(picked.tokens, text.tokens[rows]) and torch.equal(picked.mask, text.mask[rows])
    joined = TextFeatures.cat([on_disk[2:5], text[7:9]])
    assert torch.equal(joined.tokens, torch.cat([text.tokens[2:5], text.tokens[7:9]]))
    assert torch.equal(joined.sentence, torch.cat([text.sentence[2:5], text.sentence[7:9]]))


def test_scoring_reads_token_rows_one_block_at_a_time(tmp_path, monkeypatch):
    text, video, annotations = make_split(width=64)
    save_split_features(tmp_path, "train", text, video, annotations, dtype="float32")
    on_disk = load_split_features(tmp_path, "train", "disk")
    read = []
    original = TokenRows.__getitem__

    def recording(self, index):
        rows = original(self, index)
        read.append(rows.shape[0])
        return rows

    monkeypatch.setattr(TokenRows, "__getitem__", recording)
    torch.manual_seed(0)
    extractor = build_feature_extractor("tiny", temporal="none", vocab_size=40).eval()
    scores = score_queries(extractor.similarity, on_disk.text, on_disk.video, query_block=5).stage1
    assert scores.shape == (len(text), len(video))
    assert read == [5, 5, 5, 3]  # 18 captions in blocks of 5, never the whole split
