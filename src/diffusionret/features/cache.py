"""The frozen-feature cache written by `extract` and read by stage 2 and evaluation (no CLIP re-run).

On disk, per split: `<split>.safetensors` (text mask, sentence features, video frames and masks),
`<split>.tokens.npy` (every caption's token features, (C, L, D), the one large array: 180k MSRVTT captions
x 32 words x 512 = 5.9 GB in float16) and `<split>.json` (ids and the caption -> video mapping).
Floating-point features are stored in `data.features_dtype` (float16 by default: half the disk and I/O of
float32, a relative rounding of at most 2^-11 = 4.9e-4; bfloat16 would round at 2^-8) and always converted
to float32 when read, so every computation stays float32. Values beyond float16's range (65504) stop the
extraction with the fix named instead of turning into infinities.

Reading: the token features come as a `TokenRows` array that converts the rows a batch or block asks for to
float32. By default (`data.features_loading: disk`) it memory-maps the file only while it copies those rows,
so the process never holds more than them; `memory` holds the stored array, `auto` holds it when it takes at
most half of the machine's memory.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from diffusionret.data.records import SplitAnnotations, load_annotations, save_annotations
from diffusionret.model.extractor import TextFeatures, VideoFeatures

STORAGE_DTYPES = {"float16": torch.float16, "float32": torch.float32}
FEATURE_LOADING = ("auto", "memory", "disk")
FLOAT16_MAX = 65504.0


@dataclass
class SplitFeatures:
    text: TextFeatures  # tokens (C, L, D) (a TokenRows when read from disk per batch), mask (C, L), sentence (C, D)
    video: VideoFeatures  # frames (V, T, D) after the temporal module, mask (V, T)
    annotations: SplitAnnotations


class TokenRows:
    """Caption token features (C, L, D) as stored (float16 or float32); indexing returns float32 rows.

    In memory (`in_memory=True`) the stored array is read once and kept, in its storage dtype (half the size of
    float32 for float16). On disk the file is memory-mapped only for the duration of one `[]` (a batch or a
    block of rows), so pages read for earlier batches are not kept in the process. Accepts what a tensor row
    index accepts: an int, a slice, a 1-D integer tensor, array or list.
    """

    def __init__(self, path: Path, in_memory: bool = False):
        self.path = Path(path)
        array = np.load(self.path, mmap_mode="r")
        self.shape = torch.Size(array.shape)
        self.storage_dtype = array.dtype
        self.in_memory = in_memory
        del array
        # a plain read, not a copy out of the mapping: mapped pages would count in the process's memory on top
        self._array = np.load(self.path) if in_memory else None  # (C, L, D) stored dtype
        self.dtype = torch.float32  # what indexing returns

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, torch.Tensor):
            index = index.cpu().numpy()
        if self._array is not None:
            return torch.from_numpy(np.array(self._array[index])).float()
        array = np.load(self.path, mmap_mode="r")  # (C, L, D), mapped for this read only
        try:
            rows = np.array(array[index])  # a copy of the requested rows
        finally:
            del array
        return torch.from_numpy(rows).float()

    def __repr__(self) -> str:
        where = "in memory" if self.in_memory else "on disk"
        return f"TokenRows({self.path}, shape={tuple(self.shape)}, {self.storage_dtype} {where})"


def memory_limit_bytes() -> int:
    """The memory this process may use: physical memory, or the cgroup limit when lower."""
    limit = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for cgroup_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(cgroup_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            limit = min(limit, int(text))
    return limit


def tokens_fit_in_memory(stored_bytes: int, limit_bytes: int | None = None) -> bool:
    """Whether token features of `stored_bytes` on disk take at most half of the memory limit."""
    limit = memory_limit_bytes() if limit_bytes is None else limit_bytes
    return stored_bytes <= limit // 2


def to_storage(tensor: torch.Tensor, dtype: str, what: str) -> torch.Tensor:
    """`tensor` in the storage dtype; a value outside float16's range is an error naming the fix."""
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"data.features_dtype={dtype!r}; choose one of {sorted(STORAGE_DTYPES)}")
    if dtype == "float16" and tensor.is_floating_point():
        peak = float(tensor.detach().abs().max()) if tensor.numel() else 0.0
        if not peak <= FLOAT16_MAX:
            raise ValueError(f"{what}: a feature of magnitude {peak:.4g} does not fit float16 (max {FLOAT16_MAX:g}); "
                             f"set data.features_dtype: float32 and re-run `extract`")
    return tensor.detach().cpu().to(STORAGE_DTYPES[dtype]).contiguous() if tensor.is_floating_point() \
        else tensor.detach().cpu().contiguous()


class SplitFeatureWriter:
    """Writes one split's cache: caption token features block by block, the small tensors at the end.

    The token array goes to a temporary name and is renamed once complete, so a killed extraction never
    leaves a file that looks finished.
    """

    def __init__(self, directory: Path, split: str, num_captions: int, dtype: str = "float16"):
        if dtype not in STORAGE_DTYPES:
            raise ValueError(f"data.features_dtype={dtype!r}; choose one of {sorted(STORAGE_DTYPES)}")
        directory.mkdir(parents=True, exist_ok=True)
        self.directory, self.split, self.num_captions, self.dtype = directory, split, num_captions, dtype
        self.tokens_path = directory / f"{split}.tokens.npy"
        self.tmp_path = directory / f"{split}.tokens.tmp.npy"
        self.written = 0
        self.masks, self.sentences = [], []

    def add_text(self, text: TextFeatures) -> None:
        """Append the features of the next captions (in caption order)."""
        rows = text.tokens.shape[0]
        if self.written + rows > self.num_captions:
            raise ValueError(f"{self.tokens_path}: {self.written + rows} captions written, {self.num_captions} declared")
        block = to_storage(text.tokens, self.dtype, f"{self.split} token features").numpy()  # (b, L, D)
        if self.written == 0:
            np.lib.format.open_memmap(self.tmp_path, mode="w+", dtype=block.dtype,
                                      shape=(self.num_captions, *block.shape[1:]))  # header + sparse body
        array = np.load(self.tmp_path, mmap_mode="r+")  # mapped for this block only
        try:
            array[self.written:self.written + rows] = block
            array.flush()
        finally:
            del array
        self.written += rows
        self.masks.append(text.mask.detach().cpu())
        self.sentences.append(to_storage(text.sentence, self.dtype, f"{self.split} sentence features"))

    def finish(self, video: VideoFeatures, annotations: SplitAnnotations) -> None:
        """Write the small tensors and the annotations, and move the token array to its final name."""
        if self.written != self.num_captions:
            raise ValueError(f"{self.tokens_path}: {self.written} of {self.num_captions} captions were written")
        if self.num_captions == 0:
            raise ValueError(f"{self.split}: no captions to cache")
        save_file({"text_mask": torch.cat(self.masks).contiguous(), "sentence": torch.cat(self.sentences),
                   "video_frames": to_storage(video.frames, self.dtype, f"{self.split} frame features"),
                   "video_mask": video.mask.detach().cpu().contiguous()},
                  str(self.directory / f"{self.split}.safetensors"))
        os.replace(self.tmp_path, self.tokens_path)
        save_annotations(annotations, self.directory / f"{self.split}.json")


def save_split_features(directory: Path, split: str, text: TextFeatures, video: VideoFeatures,
                        annotations: SplitAnnotations, dtype: str = "float16") -> None:
    """<directory>/<split>.safetensors + <split>.tokens.npy + <split>.json, features stored as `dtype`."""
    writer = SplitFeatureWriter(directory, split, text.tokens.shape[0], dtype)
    writer.add_text(text)
    writer.finish(video, annotations)


def load_split_features(directory: Path, split: str, loading: str = "disk") -> SplitFeatures:
    """Read a cached split as float32, with a clear error naming the stage to run when it is missing.

    The token features come as `TokenRows` (float32 rows per batch or block): loading "memory" keeps the stored
    array in memory, "disk" reads the rows from disk per batch, "auto" keeps them in memory only when the
    stored array takes at most half of the memory limit.
    """
    if loading not in FEATURE_LOADING:
        raise ValueError(f"data.features_loading={loading!r}; choose one of {list(FEATURE_LOADING)}")
    path, tokens_path = directory / f"{split}.safetensors", directory / f"{split}.tokens.npy"
    if not path.is_file() or not tokens_path.is_file():
        missing = path if not path.is_file() else tokens_path
        raise FileNotFoundError(f"{missing} is missing: run the `extract` stage that writes {directory} "
                                f"(`dvc repro`)")
    tensors = load_file(str(path))
    in_memory = loading == "memory" or (loading == "auto" and tokens_fit_in_memory(tokens_path.stat().st_size))
    tokens = TokenRows(tokens_path, in_memory=in_memory)  # (C, L, D), float32 rows per batch
    return SplitFeatures(
        text=TextFeatures(tokens=tokens, mask=tensors["text_mask"], sentence=tensors["sentence"].float()),
        video=VideoFeatures(frames=tensors["video_frames"].float(), mask=tensors["video_mask"]),
        annotations=load_annotations(directory / f"{split}.json"),
    )


def write_info(directory: Path, info: dict) -> None:
    (directory / "info.json").write_text(json.dumps(info, indent=2) + "\n")


def video_keys(annotations: SplitAnnotations) -> torch.Tensor:
    """Stable integer id of each caption's video (its gallery index; never Python's salted hash)."""
    return torch.tensor(annotations.caption_video, dtype=torch.long)  # (C,)
