"""Stage-2 training step on cached features vs the same step through the frozen extractor.

Both variants run the identical GenerationObjective (same generator, optimiser and noise); the only
difference is where the batch's text and frame features come from: slices of a feature cache (what
`train_gen` does) or a no-grad forward of the frozen CLIP + temporal module on uint8 frames and token ids
(what the official code does every step). Prints steps/s of each and their ratio, measured in one run.

    .venv/bin/python benchmarks/stage2_cached_vs_extractor.py                       # tiny default shapes
    .venv/bin/python benchmarks/stage2_cached_vs_extractor.py --backbone vit-b-32 \
        --temporal-layers 4 --batch 8 --frames 12 --words 32 --steps 3              # ViT-B/32 shapes
"""

from __future__ import annotations

import argparse
import time

import torch

from diffusionret.config import TrainGenParams
from diffusionret.method.diffusion import create_diffusion
from diffusionret.method.objectives import GenerationObjective
from diffusionret.model.denoiser import Generator
from diffusionret.model.extractor import build_feature_extractor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="tiny")
    parser.add_argument("--temporal-layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--words", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--vocab", type=int, default=400)
    args = parser.parse_args()

    torch.manual_seed(0)
    vocab = dict(vocab_size=args.vocab, bos_token_id=0, eos_token_id=1, pad_token_id=2) \
        if args.backbone == "tiny" else {}
    extractor = build_feature_extractor(args.backbone, temporal="seqTransf", temporal_layers=args.temporal_layers,
                                        head="wti", **vocab).eval().requires_grad_(False)
    image_size = extractor.backbone.clip.config.vision_config.image_size
    vocab_size = extractor.backbone.clip.config.text_config.vocab_size
    B, T, L = args.batch, args.frames, args.words
    ids = torch.randint(3, vocab_size - 2, (B, L))  # (B, L)
    ids[:, 0], ids[:, -1] = extractor.backbone.clip.config.text_config.bos_token_id or 0, 1
    text_mask = torch.ones(B, L, dtype=torch.long)
    frames = torch.randint(0, 256, (B, T, image_size, image_size, 3), dtype=torch.uint8)  # (B, T, S, S, 3)
    frame_mask = torch.ones(B, T, dtype=torch.bool)
    with torch.no_grad():
        text = extractor.encode_text(ids, text_mask)
        video = extractor.encode_video(frames, frame_mask)
    cached = {"text_tokens": text.tokens, "text_mask": text.mask, "sentence": text.sentence,
              "video_frames": video.frames, "video_mask": video.mask, "video_key": torch.arange(B)}

    def through_extractor() -> dict[str, torch.Tensor]:
        with torch.no_grad():
            t = extractor.encode_text(ids, text_mask)
            v = extractor.encode_video(frames, frame_mask)
        return {"text_tokens": t.tokens, "text_mask": t.mask, "sentence": t.sentence,
                "video_frames": v.frames, "video_mask": v.mask, "video_key": torch.arange(B)}

    settings = TrainGenParams(global_batch=B, num_negatives=B - 1)
    width = extractor.backbone.width
    results = {}
    for name, make_batch in (("cached features", lambda: cached), ("frozen extractor", through_extractor)):
        generator = Generator(width, seed=0)
        objective = GenerationObjective(generator, create_diffusion(50), extractor, settings,
                                        torch.Generator().manual_seed(0))
        optimizer = torch.optim.AdamW(generator.parameters(), lr=1e-4)

        def step() -> None:
            objective.backward_step(make_batch())
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        step()  # warm-up
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        results[name] = args.steps / (time.perf_counter() - start)
    print(f"backbone {args.backbone}, batch {B}, frames {T}, words {L}, {torch.get_num_threads()} threads")
    for name, rate in results.items():
        print(f"  {name:<18} {rate:10.2f} steps/s")
    print(f"  ratio (cached / extractor): {results['cached features'] / results['frozen extractor']:.1f}x")


if __name__ == "__main__":
    main()
