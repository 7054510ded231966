"""Linear probe of the synthetic attributes (colour, shape, motion) from the cached stage-1 video features, and
stage-1 t2v R@1 on the cached test features: how much motion the default image features carry.

A logistic regression (scikit-learn) is fit on the cached per-frame video features of the training split (the
(V, T, D) array `extract` writes for stage 2, flattened to T*D) and scored on the test split. Labels come from
data/raw/<benchmark>/meanings.json. Experiment tool for choosing the default; the report's diagnostics live in
the package.

    .venv/bin/python benchmarks/motion_probe.py --features data/features/synthetic/synthetic \
        --meanings data/raw/synthetic/meanings.json --model models/synthetic/disc
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=Path, default=Path("data/features/synthetic/synthetic"))
    parser.add_argument("--meanings", type=Path, default=Path("data/raw/synthetic/meanings.json"))
    parser.add_argument("--model", type=Path, default=Path("models/synthetic/disc"))
    args = parser.parse_args()
    meanings = json.loads(args.meanings.read_text())
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
