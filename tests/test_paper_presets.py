"""Paper presets: every preset is the official recipe (checked against values restated here from the official
README and main_retrieval.py), applies through DVC's own -S machinery, and starts training on CPU with a tiny
CLIP saved in the hub format; epochs/steps and warm-up alternatives; the official validation cadence."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from diffusionret.cli import main as cli_main
from diffusionret.cli import preset_overrides
from diffusionret.config import ConfigError, load_params, params_from_dict, resolve_schedule
from diffusionret.data.records import SplitAnnotations, save_annotations
from diffusionret.pipeline.paths import Paths
from diffusionret.pipeline.runs import validation_steps
from diffusionret.presets import apply_to_params_file, load_preset, preset_names

REPO = Path(__file__).resolve().parents[1]
PRESETS = REPO / "configs" / "presets"

# The official recipe, restated from the official README commands and main_retrieval.py defaults.
OFFICIAL = {"lr": 1e-4, "coef_lr": 1e-3, "weight_decay": 0.2, "global_batch": 128, "epochs": 5,
            "warmup_proportion": 0.1, "optimizer": "bertadam", "ema_decay": 0.99, "val_every": 150}
# benchmark preset -> (benchmark entry, max_words, max_frames, train split)
BENCHMARKS = {"msrvtt-9k": ("msrvtt", 32, 12, "9k"), "msrvtt-7k": ("msrvtt-7k", 32, 12, "7k"),
              "lsmdc": ("lsmdc", 32, 12, "training"), "msvd": ("msvd", 32, 12, "train"),
              "activitynet": ("activitynet", 64, 64, "train"), "didemo": ("didemo", 64, 64, "train")}
HUB_IDS = {"vitb32": "openai/clip-vit-base-patch32", "vitb16": "openai/clip-vit-base-patch16"}


def applied(tmp_path: Path, overrides: list[str]):
    """params.yaml of the repository with the overrides written by DVC's -S code, loaded and validated."""
    path = tmp_path / "params.yaml"
    shutil.copyfile(REPO / "params.yaml", path)
    apply_to_params_file(path, overrides)
    return load_params(path)


SIBLINGS = ("emcl", "dicosa")  # the author's other systems as stage-1 heads, at ViT-B/32


def test_twelve_presets_one_per_benchmark_and_backbone_plus_the_sibling_heads():
    assert sorted(preset_names(PRESETS)) == sorted(f"{b}-{v}" for b in BENCHMARKS for v in (*HUB_IDS, *SIBLINGS))


def test_sibling_presets_are_their_official_recipes(tmp_path):
    emcl = applied(tmp_path, preset_overrides("msrvtt-9k-emcl", None, [], PRESETS))
    assert (emcl.model.backbone, emcl.model.head) == (HUB_IDS["vitb32"], "emcl")
    assert (emcl.model.emcl.bases, emcl.model.emcl.em_iters, emcl.model.emcl.momentum, emcl.model.emcl.beta,
            emcl.model.emcl.frame_temperature, emcl.model.emcl.eval_block) == (32, 9, 0.9, 3.0, 3.0, 32)
    assert (emcl.train.seed, emcl.train.ema_decay, emcl.train.augment) == (0, 0.0, "rand-m7-n4-mstd0.5-inc1")
    assert (emcl.train.lr, emcl.train.coef_lr, emcl.train.global_batch, emcl.train.epochs) == (1e-4, 1e-3, 128, 5)
    dicosa = applied(tmp_path, preset_overrides("didemo-dicosa", None, [], PRESETS))
    block = dicosa.model.dicosa
    assert (dicosa.model.head, block.concepts, block.frame_temperature, block.alpha, block.beta) == \
        ("dicosa", 8, 3.0, 0.01, 0.005)
    assert block.decorrelation_normaliser == "max_words" and dicosa.train.ema_decay == 0.0
    post = dicosa.postprocess
    assert post.qbnorm_settings("t2v") == {"beta": 70.0, "k": 1, "min_count": 3}
    assert post.qbnorm_settings("v2t") == {"beta": 70.0, "k": 1, "min_count": 5}


@pytest.mark.parametrize("name", sorted(f"{b}-{v}" for b in BENCHMARKS for v in HUB_IDS))
def test_each_preset_is_the_official_recipe(name, tmp_path):
    stem, variant = name.rsplit("-", 1)
    bench, words, frames, train_split = BENCHMARKS[stem]
    params = applied(tmp_path, preset_overrides(name, None, [], PRESETS))
    assert params.model.backbone == HUB_IDS[variant]
    assert (params.model.temporal, params.model.temporal_layers, params.model.head) == ("seqTransf", 4, "wti")
    assert params.model.frame_feature == "cls"  # CLIP's CLS image feature, whatever the embedded default
    assert params.preprocess.image_size == 224
    assert params.train.benchmarks == (bench,) and params.eval.benchmarks == (bench,)
    settings = params.benchmarks[bench]
    assert (settings.max_words, settings.max_frames, settings.fps) == (words, frames, 1.0)
    assert settings.splits["train"] == train_split
    for stage in (params.train, params.train_gen):
        for key, value in OFFICIAL.items():
            assert getattr(stage, key) == pytest.approx(value) if isinstance(value, float) else \
                getattr(stage, key) == value, (name, key)
        assert stage.steps is None and stage.warmup_steps is None
        assert stage.val_first_step and stage.val_epoch_ends
    assert params.train_gen.num_negatives == 127 and params.train_gen.loss_temperature_inv == 100.0
    assert (params.diffusion.steps, params.diffusion.schedule) == (50, "cosine")
    assert (params.eval.selection, params.eval.rerank_k) == ("test", 32)


def test_preset_show_prints_the_dvc_command_and_unknown_names_list_the_presets(capsys):
    assert cli_main(["preset", "show", "msvd-vitb16", "--presets", str(PRESETS), "-S", "train.micro_batch=32"]) == 0
    command = capsys.readouterr().out
    assert command.startswith("dvc exp run -S ") and "model.backbone=openai/clip-vit-base-patch16" in command
    assert "-S train.micro_batch=32 " in command and "train.micro_batch=0" not in command  # the user's value wins
    assert cli_main(["preset", "show", "msvd-vitb64", "--presets", str(PRESETS)]) == 2
    assert "msvd-vitb16" in capsys.readouterr().err


def test_preset_apply_writes_params_yaml_like_dvc(tmp_path):
    path = tmp_path / "params.yaml"
    shutil.copyfile(REPO / "params.yaml", path)
    assert cli_main(["preset", "apply", "didemo-vitb32", "--presets", str(PRESETS), "--params", str(path)]) == 0
    params = load_params(path)
    assert params.benchmarks["didemo"].clip_span_s == (0.0, 31.0) and params.train.epochs == 5
    assert "# Every default of the pipeline" in path.read_text()  # comments survive


# ------------------------------------------------------------------------------------------------------------
# epochs / steps, warm-up proportion, validation cadence
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture()
def raw() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


@pytest.mark.parametrize("steps, epochs", [(None, None), (100, 2)])
def test_exactly_one_of_steps_and_epochs(raw, steps, epochs):
    raw["train_gen"].update(steps=steps, epochs=epochs)
    with pytest.raises(ConfigError, match=r"`train_gen.steps`.*exactly one of `train_gen.steps` and `train_gen.epochs`"):
        params_from_dict(raw)


def test_exactly_one_of_warmup_steps_and_proportion(raw):
    raw["train"].update(warmup_steps=None, warmup_proportion=None)
    with pytest.raises(ConfigError, match="exactly one of `train.warmup_steps` and `train.warmup_proportion`"):
        params_from_dict(raw)


def test_epochs_resolve_to_whole_batches_per_epoch(raw):
    raw["train"].update(steps=None, epochs=5, global_batch=128, warmup_steps=None, warmup_proportion=0.1)
    settings = resolve_schedule(params_from_dict(raw).train, 180_000, "train")  # MSRVTT-9k: 9,000 x 20 captions
    assert settings.steps == 5 * 1406  # 180,000 // 128 = 1406 full batches per epoch (the last 32 pairs dropped)
    assert settings.warmup_steps == round(0.1 * 5 * 1406)
    raw["train"].update(steps=300, epochs=None, warmup_steps=20, warmup_proportion=None)
    settings = resolve_schedule(params_from_dict(raw).train, 1000, "train")
    assert (settings.steps, settings.warmup_steps) == (300, 20)  # steps given: unchanged
    with pytest.raises(ConfigError, match="larger than the 100 training pairs"):
        resolve_schedule(params_from_dict(raw).train, 100, "train")


def test_official_validation_cadence(raw):
    raw["train"].update(steps=None, epochs=3, val_every=150, val_first_step=True, val_epoch_ends=True)
    settings = resolve_schedule(params_from_dict(raw).train, 64 * 400, "train")  # 400 steps per epoch
    extra = validation_steps(settings, 400)
    assert extra == {1, 400, 800, 1200}
    every = {s for s in range(1, settings.steps + 1) if s % 150 == 0}
    assert sorted(every | extra)[:6] == [1, 150, 300, 400, 450, 600]
    raw["train"].update(val_first_step=False, val_epoch_ends=False)
    assert validation_steps(resolve_schedule(params_from_dict(raw).train, 64 * 400, "train"), 400) == set()


def test_training_loop_validates_at_the_extra_steps(tmp_path):
    from accelerate import Accelerator

    from diffusionret.training.loop import LoopSettings, run_training
    from diffusionret.training.state import TrainingState

    model = torch.nn.Linear(2, 1)

    class Objective(torch.nn.Module):
        def backward_step(self, batch):
            loss = model(batch).pow(2).mean()
            loss.backward()
            return {"loss": loss.detach()}

    validated: list[int] = []

    def log_metrics(metrics, step):
        if "val/metric_raw" in metrics:  # `validation_metric` defaults to "metric"
            validated.append(step)

    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    run_training(accelerator=Accelerator(cpu=True), objective=Objective(), trainable=model, optimizer=optimizer,
                 scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0),
                 batches=lambda start: (torch.ones(4, 2) for _ in range(start, 10)), validate=lambda m: 0.0,
                 settings=LoopSettings(total_steps=10, log_every=5, val_every=6, grad_clip=0.0,
                                       checkpoint_every=100, ema_decay=0.9, extra_val_steps=frozenset({1, 4, 8})),
                 state=TrainingState(tmp_path / "state"), log_metrics=log_metrics)
    assert validated == [1, 4, 6, 8, 10]


# ------------------------------------------------------------------------------------------------------------
# Each preset family starts training from its one command's values, on CPU, with a tiny hub-format CLIP
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    """A CLIP folder as the hub serves it (config.json, model.safetensors, tokenizer files): 224 px, width 32."""
    from transformers import CLIPConfig, CLIPModel

    from diffusionret.model.tokenizer import train_bpe_tokenizer

    folder = tmp_path_factory.mktemp("tiny-clip")
    tokenizer = train_bpe_tokenizer([f"a clip of thing {i} moving left" for i in range(50)], folder, 300)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                         num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu",
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=224, patch_size=32, hidden_act="quick_gelu"),
        projection_dim=32)
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    return folder


def write_preprocessed(paths: Paths, bench: str, max_frames: int, image_size: int, *, train_videos: int,
                       captions_per_video: int, test_videos: int) -> None:
    """What `preprocess` would leave for `bench`: annotations and a frame cache (random pixels)."""
    rng = np.random.default_rng(0)
    ids = {"train": [f"train{i}" for i in range(train_videos)], "test": [f"test{i}" for i in range(test_videos)]}
    for split, videos in ids.items():
        per_video = captions_per_video if split == "train" else 1
        captions = [f"a clip of thing {v} moving left {k}" for v in range(len(videos)) for k in range(per_video)]
        save_annotations(SplitAnnotations(bench, split, tuple(videos), tuple(captions),
                                          tuple(v for v in range(len(videos)) for _ in range(per_video))),
                         paths.annotations(bench, split))
    every = ids["train"] + ids["test"]
    out = paths.frames(bench)
    frames = rng.integers(0, 256, (len(every), max_frames, image_size, image_size, 3), dtype=np.uint8)
    np.save(out / "frames.npy", frames)
    mask = np.ones((len(every), max_frames), bool)
    mask[::3, max_frames // 2:] = False  # some videos shorter than max_frames
    np.save(out / "mask.npy", mask)
    (out / "videos.json").write_text(json.dumps({"video_ids": every, "settings": {"image_size": image_size}}))


TEST_OVERRIDES = ["train.epochs=1", "train.global_batch=4", "train.num_workers=0", "train.log_every=1",
                  "train.accelerate_config=configs/accelerate/cpu.yaml",
                  "train_gen.epochs=1", "train_gen.global_batch=4", "train_gen.num_negatives=3", "eval.num_samples=1",
                  "diffusion.steps=5"]


@pytest.fixture(scope="module")
def tracking_db(tmp_path_factory):
    """One MLflow store for the module (creating a sqlite store costs seconds); variables restored afterwards."""
    folder = tmp_path_factory.mktemp("tracking")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlruns.db'}")
        patch.setenv("_DIFFUSIONRET_ARTIFACT_ROOT", str(folder / "mlruns"))
        yield folder


@pytest.mark.slow
@pytest.mark.parametrize("name, stage2", [("msrvtt-9k-vitb32", True), ("msrvtt-7k-vitb16", False),
                                          ("lsmdc-vitb32", False), ("msvd-vitb16", False),
                                          ("activitynet-vitb32", False), ("didemo-vitb16", False)])
def test_preset_starts_training_with_a_local_hub_format_clip(name, stage2, tiny_clip, tracking_db, tmp_path):
    """The values of the preset's one command (backbone pointed at a local folder, one epoch of a tiny batch =
    two steps) train stage 1 on CPU; the MSRVTT family also extracts features and trains stage 2."""
    from diffusionret.model.checkpoint import read_metadata
    from diffusionret.pipeline.extract import extract_features
    from diffusionret.pipeline.train_disc import train_disc
    from diffusionret.pipeline.train_gen import train_gen

    work = tmp_path / "work"
    paths_overrides = [f"data.{key}_root={work / key}" for key in ("raw", "frames", "features", "partial", "manifests")]
    params = applied(tmp_path, preset_overrides(name, str(tiny_clip), TEST_OVERRIDES + paths_overrides, PRESETS))
    bench = params.train.benchmarks[0]
    settings = params.benchmark(bench)
    assert params.model.backbone == str(tiny_clip) and params.train.optimizer == "bertadam"
    paragraphs = settings.max_words == 64
    paths = Paths(work, params.data)
    paths.frames(bench).mkdir(parents=True)
    write_preprocessed(paths, bench, settings.max_frames, params.preprocess.image_size, train_videos=9,
                       captions_per_video=1 if paragraphs else 2, test_videos=4)
    train_pairs = 9 if paragraphs else 18
    work.joinpath("params.yaml").write_text("")  # the stages' repository root

    train_disc(bench, params, paths, work)
    meta = read_metadata(paths.disc_model(bench))
    assert meta["steps"] == 1 * (train_pairs // 4)  # epochs x whole global batches
    assert meta["train"] == {"videos": 9, "pairs": train_pairs}
    assert meta["selected"]["split"] == "test" and meta["data"]["image_size"] == 224
    assert meta["selected"]["step"] in (1, meta["steps"])  # validated after step 1 and at the epoch end
    if stage2:
        extract_features(bench, bench, params, paths)
        result = train_gen(bench, params, paths, work)
        gen_meta = read_metadata(paths.gen_model(bench))
        assert gen_meta["selected"]["split"] == "test" and math.isfinite(result["best_value"])


# ------------------------------------------------------------------------------------------------------------
# Hub access for the backbone
# ------------------------------------------------------------------------------------------------------------


def test_backbone_missing_from_an_offline_hub_names_it_and_the_local_folder_fix(monkeypatch):
    from diffusionret.model.backbone import BackboneUnavailable, resolve_backbone

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BackboneUnavailable) as error:
        resolve_backbone("diffusionret-tests/no-such-clip")
    message = str(error.value)
    assert "'diffusionret-tests/no-such-clip'" in message and "HF_HUB_OFFLINE" in message
    assert "model.backbone=/data/no-such-clip" in message and "--backbone" in message


def test_backbone_the_hub_cannot_serve_and_a_folder_without_config(monkeypatch, tmp_path):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    from diffusionret.model.backbone import BackboneUnavailable, resolve_backbone

    def unreachable(*args, **kwargs):
        raise LocalEntryNotFoundError("connection error and nothing cached")

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    with pytest.raises(BackboneUnavailable, match=r"(?s)'org/clip'.*could not be reached.*model\.backbone="):
        resolve_backbone("org/clip")
    with pytest.raises(BackboneUnavailable, match="no config.json"):
        resolve_backbone(str(tmp_path))


def test_preset_run_fetches_the_backbone_with_the_hub_allowed(monkeypatch, tiny_clip, capsys):
    """`preset run` overrides the Makefile's HF_HUB_OFFLINE=1 for its backbone and for the dvc command it starts."""
    import subprocess

    import huggingface_hub

    seen = {}

    def fake_snapshot(repo_id, allow_patterns, local_files_only):
        seen.update(repo_id=repo_id, local_files_only=local_files_only)
        return str(tiny_clip)

    def fake_call(command, env):
        seen.update(command=command, env_offline=(env["HF_HUB_OFFLINE"], env["TRANSFORMERS_OFFLINE"]))
        return 0

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    monkeypatch.setattr(subprocess, "call", fake_call)
    assert cli_main(["preset", "run", "msrvtt-9k-vitb32", "--presets", str(PRESETS)]) == 0
    assert seen["repo_id"] == "openai/clip-vit-base-patch32" and seen["local_files_only"] is False
    assert seen["env_offline"] == ("0", "0") and seen["command"][:3] == ["dvc", "exp", "run"]


# ------------------------------------------------------------------------------------------------------------
# Paper mode trains on the whole training split
# ------------------------------------------------------------------------------------------------------------


def test_paper_mode_trains_on_the_whole_msrvtt_train_split(tmp_path):
    """selection: val carves val_videos_from_train videos off the 9k csv; selection: test (paper mode) keeps every
    training video and caption and writes no val split."""
    import csv

    from diffusionret.data.records import load_annotations
    from diffusionret.data.synthetic import write_mp4
    from diffusionret.pipeline.preprocess import preprocess_benchmark

    raw = tmp_path / "raw" / "msrvtt"
    (raw / "videos").mkdir(parents=True)
    train_ids = [f"video{i}" for i in range(10)]
    test_ids = [f"video{i}" for i in range(10, 13)]
    with (raw / "MSRVTT_train.9k.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([["video_id"], *[[v] for v in train_ids]])
    with (raw / "MSRVTT_JSFUSION_test.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([["key", "vid_key", "video_id", "sentence"],
                                      *[[f"ret{i}", f"msr{i}", v, f"test caption {v}"] for i, v in enumerate(test_ids)]])
    sentences = [{"video_id": v, "caption": f"caption {k} of {v}", "sen_id": 3 * i + k}
                 for i, v in enumerate(train_ids + test_ids) for k in range(3)]
    (raw / "MSRVTT_data.json").write_text(json.dumps({"sentences": sentences}))
    for video in train_ids + test_ids:
        write_mp4(raw / "videos" / f"{video}.mp4", np.full((4, 32, 32, 3), 80, np.uint8), 4)

    source = yaml.safe_load((REPO / "params.yaml").read_text())
    source["data"].update({f"{key}_root": str(tmp_path / key) for key in ("raw", "frames", "features", "partial",
                                                                          "manifests")})
    source["benchmarks"]["msrvtt"].update(val_videos_from_train=4, max_frames=2)
    source["preprocess"].update(image_size=16, workers=1)
    params = params_from_dict(source)
    paths = Paths(tmp_path, params.data)
    settings = params.benchmark("msrvtt")

    preprocess_benchmark("msrvtt", settings, params.preprocess, paths, progress=False, selection="val")
    carved = load_annotations(paths.annotations("msrvtt", "val"))
    assert carved.num_videos == 4 and load_annotations(paths.annotations("msrvtt", "train")).num_videos == 6

    preprocess_benchmark("msrvtt", settings, params.preprocess, paths, progress=False, selection="test")
    train = load_annotations(paths.annotations("msrvtt", "train"))
    assert train.video_ids == tuple(train_ids) and train.num_captions == 3 * len(train_ids)
    assert not paths.annotations("msrvtt", "val").exists()
    assert load_annotations(paths.annotations("msrvtt", "test")).video_ids == tuple(test_ids)
