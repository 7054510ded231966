"""Where each real benchmark's files come from: a registry of data, read by the `download` stage.

Every benchmark folder (`data.raw_root/<source>/`) holds its annotation files at the top level (flat, as the
readers expect) and its videos anywhere below it (searched recursively; `videos/` is where downloads and the
instructions put them). For each file the registry gives its public URL, expected size and sha256 where known,
how it unpacks, and how to obtain it by hand. A `None` URL means there is no public download (a licence or a
form); a `None` digest means it is not known with certainty, and the lock file records the digest of the first
download instead. `verified=True` marks a digest checked against a byte-exact copy of the file
taken from that public repository at that commit; such URLs are the raw.githubusercontent.com form of the recorded
repository, commit and path. Every other URL is taken from the READMEs of CLIP4Clip, Frozen-in-Time and
ActivityNet Captions and is marked unverified: it was not fetched from this project's machines.
"""

from __future__ import annotations

from dataclasses import dataclass

from diffusionret.data.videos import VIDEO_EXTENSIONS


@dataclass(frozen=True)
class Download:
    """A file fetched over HTTP(S): a plain file saved as `file` in the benchmark folder, or an archive kept
    under `downloads/<file>` and unpacked (`unpack`: zip or tar)."""

    url: str
    file: str
    sha256: str | None
    size: int | None  # bytes
    unpack: str = "none"  # none | zip | tar
    verified: bool = False
    note: str = ""


@dataclass(frozen=True)
class Requirement:
    """An annotation file the reader needs; any one of `paths` (relative to the benchmark folder) satisfies it."""

    paths: tuple[str, ...]
    what: str
    obtain: str  # how to get it by hand
    download: Download | None = None  # how the download stage gets it (None: by hand only)
    member: str | None = None  # its base name inside `download`'s archive
    splits: tuple[str, ...] = ()  # needed only when one of these split names is used (empty: always)


@dataclass(frozen=True)
class VideoSource:
    """The benchmark's videos."""

    what: str
    naming: str  # how files must be named so the id is the file name minus its last extension
    obtain: str
    download: Download | None = None  # an archive of all videos (None: by hand only)
    count: int | None = None  # videos of the standard release, where known
    extensions: tuple[str, ...] = VIDEO_EXTENSIONS
    id_prefix: str = ""  # a prefix of the annotation ids that file names may omit


@dataclass(frozen=True)
class BenchmarkSource:
    name: str
    reader: str
    licence: str
    requirements: tuple[Requirement, ...]
    videos: VideoSource


def _github_raw(repo: str, commit: str, path: str) -> str:
    return f"https://raw.githubusercontent.com/{repo}/{commit}/{path}"


_DIFFUSIONRET = ("jpthu17/DiffusionRet", "0316c974de05219bd1aa2bc1ec41479565a4428e")
_XPOOL = ("layer6ai-labs/xpool", "bc88718199007d395136adc99a3e69adbee874a0")
_LOCALIZING_MOMENTS = ("LisaAnne/LocalizingMoments", "b6a555c8134581305d0ed4716fbc192860e0b88c")
_VERIFIED = "sha256 and size checked against a byte-exact copy of the file at the recorded repository and commit"

MSRVTT_DATA_ZIP = Download(
    url="https://github.com/ArrowLuo/CLIP4Clip/releases/download/v0.0/msrvtt_data.zip", file="msrvtt_data.zip",
    sha256=None, size=None, unpack="zip",
    note="CLIP4Clip's split/caption archive (README); members msrvtt_data/{MSRVTT_data.json, MSRVTT_train.9k.csv, "
         "MSRVTT_train.7k.csv, MSRVTT_JSFUSION_test.csv}. Unverified: URL from the README, digest unknown.")
ACTIVITYNET_CAPTIONS_ZIP = Download(
    url="https://cs.stanford.edu/people/ranjaykrishna/densevid/captions.zip", file="captions.zip",
    sha256=None, size=None, unpack="zip",
    note="ActivityNet Captions project page; holds train.json, val_1.json, val_2.json. Unverified: a third-party "
         "repository pins sha256 7ed4f4d613d965683fbdbb9f01baad4fe2a439b99fc39cfd2f6fa6cf9201fd2b, not checked "
         "here, so it is not enforced.")

SOURCES: dict[str, BenchmarkSource] = {
    "msrvtt": BenchmarkSource(
        name="msrvtt", reader="msrvtt",
        licence="MSR-VTT: research use (Microsoft); the videos are the Frozen-in-Time re-share of the original set.",
        requirements=(
            Requirement(("MSRVTT_JSFUSION_test.csv",), "the 1k-A test set: 1000 video-caption pairs",
                        "the DiffusionRet/CLIP4Clip data bundle (msrvtt_data.zip of the CLIP4Clip v0.0 release)",
                        Download(_github_raw(*_DIFFUSIONRET, "data/MSR-VTT/anns/MSRVTT_JSFUSION_test.csv"),
                                 "MSRVTT_JSFUSION_test.csv",
                                 "e61144b312c8a2fc2126f96504c981f8c23c05b3ba9655a56e2af50ac8a4b16a", 74475,
                                 verified=True, note=_VERIFIED),
                        splits=("1k-A",)),
            Requirement(("MSRVTT_train.9k.csv",), "the 9k training split: 9000 video ids",
                        "the DiffusionRet/CLIP4Clip data bundle (msrvtt_data.zip of the CLIP4Clip v0.0 release)",
                        Download(_github_raw(*_DIFFUSIONRET, "data/MSR-VTT/anns/MSRVTT_train.9k.csv"),
                                 "MSRVTT_train.9k.csv",
                                 "0a7ece2418e1f7ac5680555a04ddfef8950293ac3c4bdd6584fb0fa6cc0ff7d3", 88899,
                                 verified=True, note=_VERIFIED),
                        splits=("9k",)),
            Requirement(("MSRVTT_train.7k.csv",), "the 7k training split",
                        "msrvtt_data.zip of the CLIP4Clip v0.0 release (or X-Pool's data/MSRVTT/MSRVTT_train.7k.csv)",
                        MSRVTT_DATA_ZIP, member="MSRVTT_train.7k.csv", splits=("7k",)),
            Requirement(("MSRVTT_data.json",), "all captions (~200k, key `sentences`)",
                        "msrvtt_data.zip of the CLIP4Clip v0.0 release", MSRVTT_DATA_ZIP,
                        member="MSRVTT_data.json", splits=("9k", "7k")),
            Requirement(("MSRVTT_JSFUSION_val.csv",), "a validation csv (key, vid_key, video_id, sentence)",
                        "the real MSRVTT has none (the synthetic generator writes one): use `splits.val: ''` to carve "
                        "a validation split from train", splits=("jsfusion_val",)),
        ),
        videos=VideoSource(
            what="10,000 MSRVTT clips (mp4)", naming="video<N>.mp4, e.g. video9770.mp4", count=10000,
            obtain="https://www.robots.ox.ac.uk/~maxbain/frozen-in-time/data/MSRVTT.zip (Frozen in Time; about "
                   "6.5 GB), or any copy of the 10k clips",
            download=Download("https://www.robots.ox.ac.uk/~maxbain/frozen-in-time/data/MSRVTT.zip", "MSRVTT.zip",
                              sha256=None, size=None, unpack="zip",
                              note="URL from the CLIP4Clip and Frozen-in-Time READMEs; unverified; reported to hold "
                                   "MSRVTT/videos/all/video*.mp4. Every mp4 member is extracted to videos/."))),
    "msvd": BenchmarkSource(
        name="msvd", reader="msvd",
        licence="MSVD (Chen and Dolan 2011): research use; the clips are cut from YouTube videos.",
        requirements=(
            *(Requirement((f"{split}_list.txt",), f"the {split} video ids ({count} lines)",
                          "msvd_data.zip of the CLIP4Clip v0.0 release, or X-Pool's data/MSVD/",
                          Download(_github_raw(*_XPOOL, f"data/MSVD/{split}_list.txt"), f"{split}_list.txt", digest,
                                   size, verified=True, note=_VERIFIED),
                          splits=(split,))
              for split, count, size, digest in (
                  ("train", 1200, 21853, "abfb8ab5660b464cf547d63a37a369920ff92c5f547af80f07aedd709df335d3"),
                  ("val", 100, 1795, "9527cf1ef6c8fe2fb1ecfda0e1856acc563fecef5ff0a409b5d908b65c1e6ed4"),
                  ("test", 670, 12186, "95eacd1fddb1d88cd7144267913ef02d0ecb8cc94a88bc484035433a2d8f9c7a"))),
            Requirement(("raw-captions.pkl", "captions_msvd.json"), "the captions of all 1970 videos (80,827)",
                        "raw-captions.pkl from msvd_data.zip of the CLIP4Clip v0.0 release "
                        "(https://github.com/ArrowLuo/CLIP4Clip/releases/download/v0.0/msvd_data.zip), or "
                        "captions_msvd.json from X-Pool's data/MSVD/",
                        Download(_github_raw(*_XPOOL, "data/MSVD/captions_msvd.json"), "captions_msvd.json",
                                 "11bc68e8441438121c1c7321526ef1d1fc6553d3b801baef1cca1d3429e306b1", 3099287,
                                 verified=True, note=_VERIFIED)),
        ),
        videos=VideoSource(
            what="1970 MSVD clips (YouTubeClips, avi)", naming="<youtube id>_<start>_<end>.avi, e.g. "
                                                            "-4wsuPCjDBc_5_15.avi", count=1970,
            obtain="https://www.cs.utexas.edu/users/ml/clamp/videoDescription/YouTubeClips.tar (UT Austin)",
            download=Download("https://www.cs.utexas.edu/users/ml/clamp/videoDescription/YouTubeClips.tar",
                              "YouTubeClips.tar", sha256=None, size=None, unpack="tar",
                              note="URL from the CLIP4Clip README and several data scripts; unverified."))),
    "lsmdc": BenchmarkSource(
        name="lsmdc", reader="lsmdc",
        licence="LSMDC (MPII): a signed permission is required; the files must not be redistributed.",
        requirements=tuple(
            Requirement((file,), what, "request access from MPII at "
                        "https://sites.google.com/site/describingmovies/download; the annotation csvs come with the "
                        "LSMDC 2016 challenge data", splits=(split,))
            for split, file, what in (
                ("training", "LSMDC16_annos_training.csv", "the training captions (tab-separated)"),
                ("val", "LSMDC16_annos_val.csv", "the validation captions (tab-separated)"),
                ("test_1000", "LSMDC16_challenge_1000_publictect.csv",
                 "the 1000 test clips (tab-separated; 'publictect' is the real file name)"))),
        videos=VideoSource(
            what="the LSMDC movie clips (about 1.3 TB as distributed, per the T-MASS README)",
            naming="<clip id>.<ext>, e.g. 0001_American_Beauty_00.00.51.926-00.00.54.129.avi",
            obtain="MPII, after permission (https://sites.google.com/site/describingmovies/download): the challenge "
                   "download script takes your MPII user name and password")),
    "activitynet": BenchmarkSource(
        name="activitynet", reader="activitynet",
        licence="ActivityNet Captions annotations: research use; the videos are YouTube videos obtained through "
                "the ActivityNet request form.",
        requirements=tuple(
            Requirement((file,), what, "captions.zip from https://cs.stanford.edu/people/ranjaykrishna/densevid/",
                        ACTIVITYNET_CAPTIONS_ZIP, member=file, splits=(split,))
            for split, file, what in (
                ("train", "train.json", "training paragraphs (~10k videos)"),
                ("val_1", "val_1.json", "the val_1 paragraphs: the test set of the papers (~4.9k videos)"),
                ("val_2", "val_2.json", "the val_2 paragraphs (same videos as val_1)"))),
        videos=VideoSource(
            what="the ActivityNet v1.3 videos of the train and val splits (~15k)",
            naming="v_<youtube id>.<ext> (the `v_` prefix may be left out), e.g. v_QOlSCBRmfWY.mp4",
            obtain="fill in the request form at http://activity-net.org/download.html (the organisers share the "
                   "videos on Google and Baidu drives); many YouTube originals are gone",
            id_prefix="v_")),
    "didemo": BenchmarkSource(
        name="didemo", reader="didemo",
        licence="DiDeMo annotations: BSD 2-Clause (LocalizingMoments); videos are Flickr (YFCC100M) videos under "
                "their own Creative Commons licences.",
        requirements=(
            Requirement(("test_data.json",), "the test moments (4021 moments, 1037 videos)",
                        "https://github.com/LisaAnne/LocalizingMoments (data/test_data.json)",
                        Download(_github_raw(*_LOCALIZING_MOMENTS, "data/test_data.json"), "test_data.json",
                                 "1891c04ec48b3d364c739594b2b6413806b74bd9027c092d896e7ebb930ff1cd", 1068934,
                                 verified=True, note=_VERIFIED), splits=("test",)),
            Requirement(("val_data.json",), "the validation moments (4180 moments, 1094 videos)",
                        "https://github.com/LisaAnne/LocalizingMoments (data/val_data.json)",
                        Download(_github_raw(*_LOCALIZING_MOMENTS, "data/val_data.json"), "val_data.json",
                                 sha256=None, size=1111448,
                                 note="size from the repository index; digest unknown (locked on first download)"),
                        splits=("val",)),
            Requirement(("train_data.json",), "the training moments",
                        "https://github.com/LisaAnne/LocalizingMoments (data/train_data.json)",
                        Download(_github_raw(*_LOCALIZING_MOMENTS, "data/train_data.json"), "train_data.json",
                                 sha256=None, size=None, note="size and digest unknown (locked on first download)"),
                        splits=("train",)),
        ),
        videos=VideoSource(
            what="the DiDeMo videos (~10k Flickr videos, about 581 GB as distributed)",
            naming="<json video id>.mp4, the id INCLUDING its original extension, e.g. "
                   "26292851@N04_4253489686_265c3c8051.m4v.mp4 (a file named exactly as the id, "
                   "26292851@N04_4253489686_265c3c8051.m4v, is accepted too)",
            obtain="the download script of https://github.com/LisaAnne/LocalizingMoments is reported dead "
                   "(LocalizingMoments#28); users share copies on Hugging Face mirrors. Put them here as they are",
            extensions=VIDEO_EXTENSIONS + (".mpg", ".mpeg", ".wmv", ".3gp", ".3g2", ".mts", ".m2ts", ".flv",
                                           ".ogv"))),
}


def source_of(name: str) -> BenchmarkSource:
    """The registry entry of a real benchmark source, with a clear error for an unknown one."""
    if name not in SOURCES:
        raise KeyError(f"no download source named {name!r}; known sources: {', '.join(SOURCES)}")
    return SOURCES[name]


def needed(requirement: Requirement, split_names: set[str]) -> bool:
    """Whether a requirement is needed for the split names a benchmark uses."""
    return not requirement.splits or bool(set(requirement.splits) & split_names)
