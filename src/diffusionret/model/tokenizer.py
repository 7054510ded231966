"""Tokenizers: train a byte-level BPE on the training captions, load one from a local dir, tokenize.

The offline default trains its own tokenizer (no CLIP vocabulary is committed); a real CLIP checkpoint
directory brings its own 49408-token BPE. Either way the ids are framed as OpenAI CLIP's:
[bos] + up to L-2 tokens + [eos] + padding, with the sentence feature read at the eos position.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
MIN_VOCAB = 10  # fewer tokens: CLIPTokenizer.from_pretrained(hub id) offline without a cache returns 2 tokens, silently


def train_bpe_tokenizer(captions: Iterable[str], out_dir: Path, vocab_size: int):
    """Train a lower-cased byte-level BPE on `captions`, save it to `out_dir`, return it (PreTrainedTokenizerFast)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [BOS_TOKEN, EOS_TOKEN, PAD_TOKEN]  # ids 0, 1, 2
    alphabet = pre_tokenizers.ByteLevel.alphabet()  # all 256 bytes: no unknown token is ever needed
    if vocab_size < len(alphabet) + len(specials) + 1:
        raise ValueError(
            f"vocab_size={vocab_size} is too small for a byte-level BPE: it needs at least "
            f"{len(alphabet) + len(specials) + 1} (256 bytes + {len(specials)} special tokens + 1 merge)."
        )
    captions = [str(c) for c in captions]
    if not captions:
        raise ValueError(f"no captions given to train the tokenizer saved to {out_dir}; check the training split.")

    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip(), normalizers.Lowercase()]
    )
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=specials,
        initial_alphabet=alphabet,
        show_progress=False,
    )
    bpe.train_from_iterator(captions, trainer=trainer, length=len(captions))
    bos_id, eos_id = bpe.token_to_id(BOS_TOKEN), bpe.token_to_id(EOS_TOKEN)
    bpe.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A {EOS_TOKEN}",
        pair=f"{BOS_TOKEN} $A {EOS_TOKEN} $B {EOS_TOKEN}",
        special_tokens=[(BOS_TOKEN, bos_id), (EOS_TOKEN, eos_id)],
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        model_max_length=77,  # CLIP's text position table
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out_dir)
    check_tokenizer(tokenizer, out_dir)
    return tokenizer


def check_tokenizer(tokenizer, source: str | Path) -> None:
    """Raise if `tokenizer` is empty (an offline hub-id load can be) or lacks bos/eos tokens in its vocabulary."""
    size = len(tokenizer)
    if size < MIN_VOCAB:
        raise ValueError(
            f"tokenizer from {source} has only {size} tokens (the silent empty tokenizer of an offline hub id); "
            "pass a local directory holding tokenizer.json (or vocab.json + merges.txt)."
        )
    vocab = tokenizer.get_vocab()
    for role, token in (("bos", tokenizer.bos_token), ("eos", tokenizer.eos_token)):
        if token is None or token not in vocab:
            raise ValueError(
                f"tokenizer from {source} has no {role} token in its vocabulary (got {token!r}); "
                f"DiffusionRet frames every caption as [bos] tokens [eos]; set {role}_token in tokenizer_config.json."
            )


def load_tokenizer(source: str | Path):
    """Load a tokenizer from a local directory (one trained here or a CLIP checkpoint dir) and check it."""
    from transformers import AutoTokenizer

    path = Path(source)
    if not path.is_dir():
        raise FileNotFoundError(
            f"tokenizer source {source} is not a local directory; tokenizers are never fetched from the hub. "
            "Train one with train_bpe_tokenizer or pass the directory of a downloaded CLIP checkpoint."
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise ValueError(f"could not load a tokenizer from {path}: {error}") from error
    check_tokenizer(tokenizer, path)
    return tokenizer


def token_lengths(tokenizer, captions: Sequence[str]) -> "np.ndarray":
    """(N,) tokens per caption without bos/eos, i.e. before `tokenize` frames and cuts it."""
    import numpy as np

    return np.array([len(ids) for ids in tokenizer(list(captions), add_special_tokens=False)["input_ids"]],
                    dtype=np.int64)


def tokenize(tokenizer, captions: Sequence[str], max_words: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids (N, L) = [bos] + up to L-2 tokens + [eos] + pad, and the 0/1 attention mask (N, L); L = max_words."""
    if max_words < 3:
        raise ValueError(f"max_words={max_words} leaves no room for a word between bos and eos; use at least 3.")
    bos_id = tokenizer.convert_tokens_to_ids(tokenizer.bos_token)
    eos_id = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    body = tokenizer(list(captions), add_special_tokens=False)["input_ids"]
    ids = torch.full((len(body), max_words), pad_id, dtype=torch.long)  # (N, L)
    mask = torch.zeros((len(body), max_words), dtype=torch.long)  # (N, L)
    for row, tokens in enumerate(body):
        framed = [bos_id, *tokens[: max_words - 2], eos_id]
        ids[row, : len(framed)] = torch.tensor(framed, dtype=torch.long)
        mask[row, : len(framed)] = 1
    return ids, mask
