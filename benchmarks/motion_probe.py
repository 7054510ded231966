"""Linear probe of the synthetic attributes (colour, shape, motion) from the cached stage-1 video features, and
stage-1 t2v R@1 on the cached test features: how much motion the default image features carry.

A logistic regression (scikit-learn) is fit on the cached per-frame video features of the training split (the
(V, T, D) array `extract` writes for stage 2, flattened to T*D) and scored on the test split. Labels come from
data/raw/<benchmark>/meanings.json. Experiment tool for choosing the default; the report's diagnostics live in
the package.

    .venv/bin/python benchmarks/motion_probe.py --features data/features/synthetic/synthetic \
        --meanings data/raw/synthetic/meanings.json --model models/synthetic/disc

`--untrained cls cls+grid:2 cls+grid:4` instead probes the per-frame image features of freshly initialised tiny
extractors (seed 0) on the preprocessed frames (`--frames data/frames/synthetic`): what the architecture keeps
before any training.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from diffusionret.features.cache import load_split_features

ATTRIBUTES = ("colour", "shape", "motion")


def video_matrix(features_dir: Path, split: str):
    """(V, T*D) float32 cached video features and the video ids of `split`."""
    features = load_split_features(features_dir, split)
    frames = features.video.frames.float().numpy()  # (V, T, D)
    ids = json.loads((features_dir / f"{split}.json").read_text())["video_ids"]
    return frames.reshape(frames.shape[0], -1), ids, features


def probe(train_x, train_y, test_x, test_y) -> float:
    """Test accuracy (%) of a multinomial logistic regression fit on train."""
    scaler = StandardScaler().fit(train_x)
    model = LogisticRegression(max_iter=2000, C=1.0).fit(scaler.transform(train_x), train_y)
    return 100.0 * float((model.predict(scaler.transform(test_x)) == np.asarray(test_y)).mean())


def stage1_t2v_r1(model_dir: Path, test_features) -> float:
    """t2v R@1 (%) of the trained head on the cached test features (single caption per video or multi-caption)."""
    import torch

    from diffusionret.model.checkpoint import load_extractor

    extractor, _ = load_extractor(model_dir)
    extractor.eval()
    text = test_features.text[:]
    with torch.no_grad():
        scores = extractor.similarity(text, test_features.video).numpy()  # (C, V)
    truth = np.asarray(test_features.annotations.caption_video)
    return 100.0 * float((scores.argmax(axis=1) == truth).mean())


def untrained_probe(spec: str, frames_dir: Path, meanings: dict) -> float:
    """Motion probe (%) of the per-frame features (V, T*D) of an untrained tiny extractor; spec `feature[:grid]`."""
    import torch

    from diffusionret.data.frames import load_frame_cache
    from diffusionret.data.records import load_annotations
    from diffusionret.features.encode import split_rows
    from diffusionret.model.extractor import build_feature_extractor

    feature, _, grid = spec.partition(":")
    torch.manual_seed(0)
    extractor = build_feature_extractor("tiny", temporal="none", head="meanP", frame_feature=feature,
                                        frame_grid=int(grid or 2)).eval()
    cache = load_frame_cache(frames_dir)
    matrices, labels = {}, {}
    for split in ("train", "test"):
        annotations = load_annotations(frames_dir / "annotations" / f"{split}.json")
        rows = split_rows(annotations, cache)
        blocks = []
        with torch.no_grad():
            for start in range(0, len(rows), 256):
                block = rows[start:start + 256]
                frames = torch.from_numpy(np.asarray(cache.frames[block]))  # (b, T, S, S, 3)
                mask = torch.from_numpy(np.asarray(cache.mask[block])).long()  # (b, T)
                blocks.append(extractor.backbone.encode_frames(frames, mask).reshape(len(block), -1).numpy())
        matrices[split] = np.concatenate(blocks)  # (V, T*D)
        labels[split] = [meanings[video]["motion"] for video in annotations.video_ids]
    return probe(matrices["train"], labels["train"], matrices["test"], labels["test"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=Path, default=Path("data/features/synthetic/synthetic"))
    parser.add_argument("--meanings", type=Path, default=Path("data/raw/synthetic/meanings.json"))
    parser.add_argument("--model", type=Path, default=Path("models/synthetic/disc"))
    parser.add_argument("--frames", type=Path, default=Path("data/frames/synthetic"))
    parser.add_argument("--untrained", nargs="+", metavar="FEATURE[:GRID]", help="e.g. cls cls+grid:2 cls+grid:4")
    args = parser.parse_args()
    meanings = json.loads(args.meanings.read_text())
    if args.untrained:
        print(json.dumps({f"untrained_probe_motion[{spec}]": round(untrained_probe(spec, args.frames, meanings), 1)
                          for spec in args.untrained}))
        return
    train_x, train_ids, _ = video_matrix(args.features, "train")
    test_x, test_ids, test_features = video_matrix(args.features, "test")
    result = {}
    for attribute in ATTRIBUTES:
        train_y = [meanings[i][attribute] for i in train_ids]
        test_y = [meanings[i][attribute] for i in test_ids]
        result[f"probe_{attribute}"] = round(probe(train_x, train_y, test_x, test_y), 1)
        result[f"chance_{attribute}"] = round(100.0 / len(set(train_y)), 1)
    if args.model.is_dir():
        result["t2v_R1"] = round(stage1_t2v_r1(args.model, test_features), 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
