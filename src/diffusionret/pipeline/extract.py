"""`extract` stage: cache the frozen stage-1 features of a benchmark's splits for one trained model.

info.json also holds `truncation`: per split, the captions the evaluated benchmark's max_words cuts under the
trained model's own tokenizer (exact; data/truncation.py), which `evaluate` reports beside the cell.
"""

from __future__ import annotations

from diffusionret.config import Params
from diffusionret.data.frames import load_frame_cache
from diffusionret.data.records import load_annotations
from diffusionret.data.truncation import truncation_summary
from diffusionret.features.cache import SplitFeatureWriter, write_info
from diffusionret.features.encode import encode_captions, encode_videos, split_rows
from diffusionret.model.checkpoint import load_extractor
from diffusionret.model.tokenizer import load_tokenizer, token_lengths, tokenize
from diffusionret.pipeline.paths import Paths

CAPTION_BLOCK = 4096  # captions encoded and written per block: the token features are never all in memory


def splits_to_extract(trained: str, evaluated: str) -> tuple[str, ...]:
    """The trained benchmark needs train (stage 2) and val (selection); any other one only its test set."""
    return ("train", "val", "test") if trained == evaluated else ("test",)


def extract_features(trained: str, evaluated: str, params: Params, paths: Paths) -> dict:
    """Encode texts and videos of `evaluated` with the stage-1 model trained on `trained`."""
    model_dir = paths.disc_model(trained)
    extractor, metadata = load_extractor(model_dir)
    tokenizer = load_tokenizer(model_dir / "tokenizer")
    bench = params.benchmark(evaluated)  # the evaluated benchmark's own max_words / max_frames
    cache = load_frame_cache(paths.frames(evaluated))
    if cache.frames.shape[2] != metadata["data"]["image_size"]:
        raise ValueError(f"frames of `{evaluated}` are {cache.frames.shape[2]} px but the model trained on "
                         f"`{trained}` expects {metadata['data']['image_size']} px; set preprocess.image_size "
                         f"and re-run `dvc repro`")
    out_dir = paths.features(trained, evaluated)
    counts, truncation = {}, {}
    for split in splits_to_extract(trained, evaluated):
        if split == "val" and not paths.annotations(evaluated, split).is_file():
            continue  # paper mode (eval.selection: test) carves no val split
        annotations = load_annotations(paths.annotations(evaluated, split))
        ids, mask = tokenize(tokenizer, annotations.captions, bench.max_words)  # (C, L)
        truncation[split] = truncation_summary(token_lengths(tokenizer, annotations.captions), bench.max_words)
        if truncation[split]["truncated"]:
            cut = truncation[split]
            print(f"extract {trained} -> {evaluated}: max_words {bench.max_words} cuts {cut['truncated']} of "
                  f"{cut['captions']} {split} captions (up to {cut['max_excess']} tokens; longest {cut['longest']})")
        writer = SplitFeatureWriter(out_dir, split, len(ids), params.data.features_dtype)
        for start in range(0, len(ids), CAPTION_BLOCK):
            text = encode_captions(extractor, ids[start:start + CAPTION_BLOCK], mask[start:start + CAPTION_BLOCK],
                                   params.eval.batch_size)
            writer.add_text(text)
        video = encode_videos(extractor, cache.frames, cache.mask, split_rows(annotations, cache),
                              params.eval.batch_size)
        writer.finish(video, annotations)
        counts[split] = {"captions": annotations.num_captions, "videos": annotations.num_videos}
    write_info(out_dir, {"trained": trained, "evaluated": evaluated, "splits": counts, "truncation": truncation,
                         "width": int(text.sentence.shape[-1]),
                         "dtype": params.data.features_dtype})
    return counts
