"""Tokenizer training, loading guards and [bos] ... [eos] framing (our BPE and the real CLIP BPE)."""

import gzip
import json
from pathlib import Path

import pytest

from diffusionret.model.tokenizer import BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, load_tokenizer, tokenize, train_bpe_tokenizer

CAPTIONS = [
    f"a {who} is {what} in the {where}"
    for who in ("man", "woman", "child", "dog")
    for what in ("running", "cooking food", "playing a guitar", "singing a song")
    for where in ("park", "kitchen", "street")
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(tokenizer, directory) of a small BPE trained on CAPTIONS."""
    out_dir = tmp_path_factory.mktemp("bpe")
    return train_bpe_tokenizer(CAPTIONS, out_dir, vocab_size=320), out_dir


def test_trained_tokenizer_reloads_with_auto_tokenizer(trained):
    from transformers import AutoTokenizer

    tokenizer, out_dir = trained
    reloaded = AutoTokenizer.from_pretrained(out_dir)
    assert len(reloaded) == len(tokenizer) > 259  # 256 bytes + 3 specials + merges
    assert (reloaded.bos_token, reloaded.eos_token, reloaded.pad_token) == (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN)
    caption = "a dog is singing a song in the park"
    assert reloaded(caption)["input_ids"] == tokenizer(caption)["input_ids"]
    assert len(load_tokenizer(out_dir)) == len(tokenizer)


def test_training_is_deterministic(trained, tmp_path):
    _, first_dir = trained
    train_bpe_tokenizer(CAPTIONS, tmp_path, vocab_size=320)
    first = json.loads((first_dir / "tokenizer.json").read_text())
    second = json.loads((tmp_path / "tokenizer.json").read_text())
    assert first["model"] == second["model"]  # same vocabulary and same merges in the same order


def test_unseen_text_is_lowercased_and_never_unknown(trained):
    tokenizer, _ = trained
    caption = "A Zebra   ÉLÈVE 日本 🎸 x-ray #42"
    ids = tokenizer(caption, add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id is None or tokenizer.unk_token_id not in ids
    # byte-level: decoding gives back the text after normalisation (lower-case, single spaces)
    expected = " ".join(caption.split()).lower()
    assert tokenizer.decode(ids).strip() == expected


def test_frequent_word_is_one_token(trained):
    tokenizer, _ = trained
    assert len(tokenizer("kitchen", add_special_tokens=False)["input_ids"]) == 1


def test_tokenize_frames_truncates_and_pads(trained):
    tokenizer, _ = trained
    bos, eos, pad = (tokenizer.convert_tokens_to_ids(t) for t in (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN))
    short, long = "a dog", " ".join(["the child is cooking food"] * 6)
    max_words = 8
    ids, mask = tokenize(tokenizer, [short, long], max_words)
    assert ids.shape == mask.shape == (2, max_words)
    body_short = tokenizer(short, add_special_tokens=False)["input_ids"]
    body_long = tokenizer(long, add_special_tokens=False)["input_ids"]
    assert len(body_long) > max_words
    expected_short = [bos, *body_short, eos] + [pad] * (max_words - len(body_short) - 2)
    assert ids[0].tolist() == expected_short
    assert mask[0].tolist() == [1] * (len(body_short) + 2) + [0] * (max_words - len(body_short) - 2)
    assert ids[1].tolist() == [bos, *body_long[: max_words - 2], eos]
    assert mask[1].tolist() == [1] * max_words
    eos_position = mask.sum(1) - 1
    assert ids[[0, 1], eos_position].tolist() == [eos, eos]


def _save_fast_tokenizer(directory: Path, words: list[str], **special) -> Path:
    """A word-level tokenizer over `words`, saved with save_pretrained."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=words[0]))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token=words[0], **special).save_pretrained(directory)
    return directory


def test_load_rejects_two_token_tokenizer(tmp_path):
    source = _save_fast_tokenizer(tmp_path / "tiny", [BOS_TOKEN, EOS_TOKEN], bos_token=BOS_TOKEN, eos_token=EOS_TOKEN)
    with pytest.raises(ValueError, match=r"has only 2 tokens") as error:
        load_tokenizer(source)
    assert str(source) in str(error.value)


def test_load_rejects_tokenizer_without_eos(tmp_path):
    words = ["[unk]", BOS_TOKEN] + [f"w{i}" for i in range(20)]
    source = _save_fast_tokenizer(tmp_path / "noeos", words, bos_token=BOS_TOKEN)
    with pytest.raises(ValueError, match="no eos token") as error:
        load_tokenizer(source)
    assert str(source) in str(error.value)


def test_load_rejects_non_directory():
    with pytest.raises(FileNotFoundError, match="openai/clip-vit-base-patch32"):
        load_tokenizer("openai/clip-vit-base-patch32")


def _bytes_to_unicode() -> dict[int, str]:
    """OpenAI CLIP's reversible byte -> printable unicode table (bytes_to_unicode of its simple_tokenizer.py)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes, extra = printable[:], 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes)))


@pytest.mark.shared
def test_real_clip_bpe_framing(shared_root, tmp_path):
    from transformers import CLIPTokenizer

    lines = gzip.open(shared_root / "clip-bpe" / "bpe_simple_vocab_16e6.txt.gz").read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    vocab = list(_bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    vocab_file, merges_file = tmp_path / "vocab.json", tmp_path / "merges.txt"
    vocab_file.write_text(json.dumps({token: index for index, token in enumerate(vocab)}))
    merges_file.write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    clip_dir = tmp_path / "clip-tokenizer"
    CLIPTokenizer(vocab=str(vocab_file), merges=str(merges_file), model_max_length=77).save_pretrained(clip_dir)

    tokenizer = load_tokenizer(clip_dir)
    assert len(tokenizer) == 49408
    ids, mask = tokenize(tokenizer, ["a photo of a cat", "A PHOTO of a cat"], max_words=10)
    known = [49406, 320, 1125, 539, 320, 2368, 49407]  # the hub CLIP tokenizer's ids for this caption
    assert ids[0, :7].tolist() == known and ids[1, :7].tolist() == known
    assert mask[0].tolist() == [1] * 7 + [0] * 3
    truncated, _ = tokenize(tokenizer, ["a photo of a cat"], max_words=4)
    assert truncated[0].tolist() == [49406, 320, 1125, 49407]
