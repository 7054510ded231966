"""FLOP counts of the training steps and the GPU-hour arithmetic (diffusionret.profiling.flops)."""

import torch

from diffusionret.profiling import flops
from diffusionret.model.extractor import build_feature_extractor
from diffusionret.method.objectives import ContrastiveObjective

VOCAB = dict(vocab_size=60, bos_token_id=0, eos_token_id=1, pad_token_id=2)


def tiny_extractor():
    torch.manual_seed(0)
    return build_feature_extractor("tiny", temporal="seqTransf", temporal_layers=2, **VOCAB)


def test_linear_layer_counts_match_the_textbook_formula():
    layer = torch.nn.Linear(24, 10, bias=False)
    x = torch.randn(7, 24, requires_grad=True)
    assert flops.count_flops(lambda: layer(x)) == 2 * 7 * 24 * 10
    # backward: the input gradient and the weight gradient are two more products of the same size
    assert flops.count_flops(lambda: layer(x).sum().backward()) == 3 * 2 * 7 * 24 * 10


def test_stage1_step_is_per_clip_cost_times_batch_plus_the_head():
    extractor = tiny_extractor()
    batch, frames, words = 4, 3, 8
    counted = flops.stage1_flops(extractor, batch=batch, frames=frames, words=words)
    image = extractor.backbone.clip.config.vision_config.image_size
    direct_batch = {"input_ids": torch.randint(3, 58, (batch, words)),
                    "attention_mask": torch.ones(batch, words, dtype=torch.long),
                    "frames": torch.randint(0, 256, (batch, frames, image, image, 3), dtype=torch.uint8),
                    "frame_mask": torch.ones(batch, frames, dtype=torch.bool)}
    direct = flops.count_flops(lambda: ContrastiveObjective(extractor).backward_step(direct_batch))
    assert counted.step == direct
    assert counted.clip_train > counted.text_forward + counted.video_forward > 0


def test_stage2_count_covers_the_hard_negative_similarity_and_grows_with_the_batch():
    extractor = tiny_extractor()
    width, frames, words = extractor.backbone.width, 3, 8
    small = flops.stage2_flops(extractor, batch=4, frames=frames, words=words, diffusion_steps=10)
    large = flops.stage2_flops(extractor, batch=8, frames=frames, words=words, diffusion_steps=10)
    # the frozen WTI similarity of the batch alone: B^2 (L x T) dot products of width D, 2 FLOPs per product term
    assert large >= 2 * 8 * 8 * words * frames * width
    assert large > 2 * small  # every query attends to every candidate: more than linear in B


def test_hours_and_projection_arithmetic():
    assert flops.hours(989e12 * 0.5 * 3600, 989.0, 0.5) == 1.0
    assert flops.hours(2 * 35.6e12 * 3600, 35.6, 1.0, devices=2) == 1.0
    assert flops.Workload().steps(128) == 5 * (180_000 // 128)
    step = flops.StepFlops(clip_train=3, text_forward=1, video_forward=2, head_train=5, step=3 * 128 + 5, batch=128)
    rows = flops.projection(step, stage2_step=7, stage2_batch=64, workload=flops.Workload(), utilisation=0.4)
    assert [row["stage"] for row in rows] == ["stage 1 (train_disc)", "extract", "stage 2 (train_gen)"]
    assert rows[0]["pflop"] == (3 * 128 + 5) * 5 * 1406 / 1e15
    assert rows[1]["pflop"] == (181_000 * 1 + 10_000 * 2) / 1e15
    assert rows[2]["pflop"] == 7 * 5 * 2812 / 1e15


def test_model_summary_flops_json_projects_hours_from_the_counts(capsys):
    import json

    from diffusionret.cli import main

    assert main(["model-summary", "--flops", "--json", "-S", "train.global_batch=8", "-S", "train_gen.global_batch=8",
                 "-S", "train_gen.num_negatives=7", "--utilisation", "0.5"]) == 0
    result = json.loads(capsys.readouterr().out)["flops"]
    stage1 = result["projection_hours"][0]
    steps = 5 * (180_000 // 8)
    assert result["workload"]["stage1_steps"] == steps
    assert abs(stage1["pflop"] - result["gflop"]["stage1_step"] * 1e9 * steps / 1e15) < 1e-9
    assert abs(stage1["H200 (bf16)"] - stage1["pflop"] * 1e15 / (989e12 * 0.5) / 3600) < 1e-12
