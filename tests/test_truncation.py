"""Caption truncation at max_words: the counts against an independent count, the word-piece lower bound, and the
synthetic benchmarks of params.yaml, none of whose captions may be cut by the tokenizer stage 1 trains."""

import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from diffusionret.data.synthetic import plan_synthetic
from diffusionret.data.truncation import split_truncation, truncation_summary, word_piece_lengths
from diffusionret.model.tokenizer import token_lengths, tokenize, train_bpe_tokenizer

REPO = Path(__file__).resolve().parents[1]
CAPTIONS = ["a red circle moves left", "the blue box is moving to the left, then upward",
            "there is a violet plus sign that travels first to the right, then downward",
            "watch the yellow cross slide right and then back left", "one disc, coloured green, heads up"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return train_bpe_tokenizer(CAPTIONS[:3] * 4, tmp_path_factory.mktemp("tok"), vocab_size=300)


def test_truncation_counts_match_what_tokenize_cuts(tokenizer):
    for max_words in (4, 8, 12, 16, 40):
        ids, mask = tokenize(tokenizer, CAPTIONS, max_words)
        kept = mask.sum(dim=1).numpy() - 2  # tokens that reached the model between bos and eos
        full = np.array([len(tokenizer.tokenize(c)) for c in CAPTIONS])  # independent: the string tokens
        lost = full - kept
        summary = truncation_summary(token_lengths(tokenizer, CAPTIONS), max_words)
        assert summary["truncated"] == int((lost > 0).sum())
        assert summary["max_excess"] == (int(lost.max()) if (lost > 0).any() else 0)
        assert summary["mean_excess"] == pytest.approx(lost[lost > 0].mean() if (lost > 0).any() else 0.0)
        assert summary["longest"] == int(full.max()) + 2 and summary["captions"] == len(CAPTIONS)


def test_summary_by_hand():
    summary = truncation_summary([3, 10, 14, 6], max_words=10)  # framed 5, 12, 16, 8: two cut, by 2 and 6
    assert (summary["truncated"], summary["max_excess"], summary["mean_excess"], summary["longest"]) == (2, 6, 4.0, 16)
    assert truncation_summary([], 10)["truncated"] == 0
    assert split_truncation({"test": ["a b c"], "val": []}, 4) == {"test": truncation_summary([3], 4)}


def test_word_pieces_are_a_lower_bound_of_bpe_tokens(tokenizer):
    pieces = word_piece_lengths(CAPTIONS + ["Two  CATS, 3 dogs!!"])
    by_regex = [len(re.findall(r"[a-z]+|[0-9]+|[^\sa-z0-9]+", " ".join(c.lower().split())))
                for c in CAPTIONS + ["Two  CATS, 3 dogs!!"]]
    assert pieces.tolist() == by_regex
    assert (pieces[:len(CAPTIONS)] <= token_lengths(tokenizer, CAPTIONS)).all()
    assert (token_lengths(tokenizer, CAPTIONS[3:]) > pieces[3:5]).all()  # unseen words split into several tokens


def synthetic_benchmarks() -> dict[str, dict]:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    return {name: entry for name, entry in params["benchmarks"].items() if entry["source"] == "synthetic"}


def test_no_caption_of_a_synthetic_benchmark_is_cut(tmp_path):
    """Train the tokenizer as stage 1 does (BPE on the in-distribution training captions, model.tokenizer_vocab_size)
    and count every caption of every split of every synthetic benchmark of params.yaml at its max_words."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    plans = {name: plan_synthetic(tmp_path / name, **{k: v for k, v in entry["synthetic"].items()
                                                         if k not in ("image_size", "fps")})
             for name, entry in synthetic_benchmarks().items()}
    for trained in params["train"]["benchmarks"]:
        tokenizer = train_bpe_tokenizer(plans[trained].captions("train"), tmp_path / f"tok-{trained}",
                                        params["model"]["tokenizer_vocab_size"])
        for name, plan in plans.items():
            max_words = synthetic_benchmarks()[name]["max_words"]
            for split in ("train", "val", "test"):
                captions = plan.captions(split)
                if not captions:
                    continue
                ids, mask = tokenize(tokenizer, captions, max_words)
                full = np.array([len(tokenizer.tokenize(c)) for c in captions]) + 2
                longest = int(full.max())
                assert longest <= max_words, (f"{name} {split}: {int((full > max_words).sum())} captions cut at "
                                              f"max_words {max_words} (longest {longest})")
                assert (mask.sum(dim=1).numpy() == full).all()
