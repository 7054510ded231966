"""Stage-2 options beyond the paper: mined negatives, tie-free generator ranking, unclamped / early-stopped DDIM,
matched and val-chosen re-ranking temperatures; and that their official values keep the official behaviour."""

import math

import numpy as np
import pytest
import torch

from diffusionret.config import ConfigError, load_params, params_from_dict
from diffusionret.evaluation.within_topk import direction_targets, generator_top1_hits
from diffusionret.method.diffusion import create_diffusion
from diffusionret.method.losses import list_loss, select_candidates, stage2_loss
from diffusionret.method.mining import sample_negatives, stage1_top_k
from diffusionret.model.denoiser import Generator
from diffusionret.model.extractor import TextFeatures, VideoFeatures

CAPTION_VIDEO = torch.tensor([0, 0, 1, 2, 2, 3, 4, 5, 5, 6])  # 10 captions of 7 videos


def _features(seed=0, width=8):
    g = torch.Generator().manual_seed(seed)
    text = TextFeatures(tokens=torch.randn(10, 3, width, generator=g), mask=torch.ones(10, 3),
                        sentence=torch.randn(10, width, generator=g))
    video = VideoFeatures(frames=torch.randn(7, 2, width, generator=g), mask=torch.ones(7, 2))
    return text, video


def _score(text, video):  # a simple stage-1 head: <sentence, mean frame>, (C, V)
    return text.sentence @ video.frames.mean(dim=1).T


def _brute_force_top_k(scores, k):
    """Independent: every caption's k best other videos and every video's k best captions of other videos."""
    scores = scores.numpy()
    t2v = []
    for c in range(scores.shape[0]):
        others = [v for v in range(scores.shape[1]) if v != int(CAPTION_VIDEO[c])]
        t2v.append(sorted(others, key=lambda v: (-scores[c, v], v))[:k])
    v2t = []
    for v in range(scores.shape[1]):
        others = [c for c in range(scores.shape[0]) if int(CAPTION_VIDEO[c]) != v]
        v2t.append(sorted(others, key=lambda c: (-scores[c, v], c))[:k])
    return torch.tensor(t2v), torch.tensor(v2t)


@pytest.mark.parametrize("query_block", [1, 3, 10])
@pytest.mark.parametrize("k", [1, 4, 6])
def test_mined_top_k_matches_brute_force_and_excludes_the_own_video(query_block, k):
    text, video = _features()
    t2v, v2t = stage1_top_k(_score, text, video, CAPTION_VIDEO, k, query_block=query_block, video_block=2)
    expected_t2v, expected_v2t = _brute_force_top_k(_score(text, video), k)
    assert torch.equal(t2v, expected_t2v) and torch.equal(v2t, expected_v2t)
    assert not (t2v == CAPTION_VIDEO[:, None]).any()  # no caption lists its own video
    assert not (CAPTION_VIDEO[v2t] == torch.arange(7)[:, None]).any()  # no video lists a caption of itself


def test_mined_top_k_rejects_a_k_the_gallery_cannot_fill():
    text, video = _features()
    with pytest.raises(ValueError, match="mined_top_k"):
        stage1_top_k(_score, text, video, CAPTION_VIDEO, 7, query_block=4)


def test_sampled_negatives_come_from_the_top_k_distinct_and_seeded():
    top_k = torch.arange(40).reshape(4, 10) * 3  # (4 queries, k = 10)
    rows = np.array([2, 0, 3])
    drawn = sample_negatives(top_k, rows, 6, seed=1, step=5)
    assert drawn.shape == (3, 6)
    for row, picks in zip(rows, drawn):
        assert set(picks.tolist()) <= set(top_k[row].tolist()) and len(set(picks.tolist())) == 6
    assert torch.equal(drawn, sample_negatives(top_k, rows, 6, seed=1, step=5))  # resumable
    assert not torch.equal(drawn, sample_negatives(top_k, rows, 6, seed=1, step=6))  # lists vary over steps
    counts = torch.zeros(10)  # uniform over the top-k: every position is drawn about equally often
    for step in range(400):
        picks = sample_negatives(top_k, np.array([0]), 3, seed=0, step=step)[0] // 3
        counts[picks] += 1
    assert counts.min() > 0.7 * counts.mean()


def test_mined_batch_lists_put_the_own_item_first_and_never_among_the_negatives():
    from diffusionret.features.cache import SplitFeatures
    from diffusionret.pipeline.train_gen import mined_batch

    text, video = _features()
    features = SplitFeatures(text=text, video=video, annotations=None)
    top_k = stage1_top_k(_score, text, video, CAPTION_VIDEO, 5, query_block=4)
    indices = np.array([4, 9, 0, 6, 2, 7])  # the global batch; this process holds its second half
    batch = mined_batch(features, CAPTION_VIDEO, indices, indices[3:], top_k, 4, seed=0, step=3)
    assert batch["candidate_frames"].shape == (3, 5, 2, 8) and batch["candidate_sentences"].shape == (3, 5, 8)
    frames = video.frames.reshape(7, -1)
    for row, caption in enumerate(indices[3:]):
        own_video = int(CAPTION_VIDEO[caption])
        listed = [int(torch.nonzero((frames == f.reshape(1, -1)).all(1))[0]) for f in batch["candidate_frames"][row]]
        assert listed[0] == own_video and own_video not in listed[1:]
        assert set(listed[1:]) <= set(top_k[0][caption].tolist())
        captions = [int(torch.nonzero((text.sentence == s).all(1))[0]) for s in batch["candidate_sentences"][row]]
        assert captions[0] == caption
        assert all(int(CAPTION_VIDEO[c]) != own_video for c in captions[1:])
        assert set(captions[1:]) <= set(top_k[1][own_video].tolist())


def test_list_loss_on_the_in_batch_lists_is_the_official_stage2_loss():
    """The official path (stage2_loss) is list_loss on select_candidates' lists: the same value, same draws."""
    generator = Generator(8, seed=0)
    diffusion = create_diffusion(10)
    text, video = _features(width=8)
    keys = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    similarity = _score(text, VideoFeatures(frames=video.frames[CAPTION_VIDEO], mask=video.mask[CAPTION_VIDEO]))
    frames, mask = video.frames[CAPTION_VIDEO], video.mask[CAPTION_VIDEO]
    official, _ = stage2_loss(generator, diffusion, sentence=text.sentence, frames=frames, frame_mask=mask,
                              similarity=similarity, video_keys=keys, num_negatives=5, temperature_inv=100.0,
                              generator_rng=torch.Generator().manual_seed(3))
    t2v, v2t = select_candidates(similarity, keys, 5)
    listed, _ = list_loss(generator, diffusion, sentence=text.sentence, frames=frames, frame_mask=mask,
                          candidate_frames=frames[t2v], candidate_mask=mask[t2v], candidate_sentences=text.sentence[v2t],
                          num_candidates=6, temperature_inv=100.0, generator_rng=torch.Generator().manual_seed(3))
    assert torch.equal(official, listed)


def test_min_timestep_zero_draws_the_official_timesteps_and_higher_ones_stay_in_range():
    diffusion = create_diffusion(50)
    official = torch.randint(0, 50, (1000,), generator=torch.Generator().manual_seed(4))
    assert torch.equal(diffusion.sample_timesteps(1000, torch.Generator().manual_seed(4)), official)
    high = diffusion.sample_timesteps(1000, torch.Generator().manual_seed(4), min_step=30)
    assert int(high.min()) == 30 and int(high.max()) == 49


def test_generator_top1_hits_breaks_ties_at_random_in_expectation():
    x0_hat = torch.tensor([[1.0, 1.0, 1.0, 0.2],   # target tied with two others at the top: 1/3
                           [0.1, 0.9, 0.3, 0.2],   # target strictly first: 1
                           [1.0, 0.5, 0.5, 0.0],   # target below the top: 0
                           [0.3, 0.3, 0.1, 0.0]])  # target outside the top-k: 0
    topk = torch.tensor([[5, 6, 7, 8], [1, 2, 3, 4], [9, 8, 7, 6], [1, 2, 3, 4]])
    targets = np.array([7, 2, 8, 0])
    hits = generator_top1_hits(x0_hat, topk, targets)
    # independent: a random tie-break simulated many times
    rng = np.random.default_rng(0)
    simulated = np.zeros(4)
    for _ in range(20000):
        jitter = x0_hat.numpy() + 1e-6 * rng.random(x0_hat.shape)
        winner = topk.numpy()[np.arange(4), jitter.argmax(axis=1)]
        simulated += winner == targets
    assert np.allclose(hits, simulated / 20000, atol=0.01)
    assert np.allclose(hits, [1 / 3, 1, 0, 0])


def test_top1_hits_with_several_positives_matches_a_simulated_random_tie_break():
    from diffusionret.evaluation.within_topk import top1_hits

    rng = np.random.default_rng(3)
    values = rng.integers(0, 3, (200, 6)).astype(float)  # many ties at the top
    positives = rng.random((200, 6)) < 0.3
    simulated = np.zeros(200)
    for _ in range(4000):
        winner = (values + 1e-6 * rng.random(values.shape)).argmax(axis=1)
        simulated += positives[np.arange(200), winner]
    assert np.allclose(top1_hits(values, positives), simulated / 4000, atol=0.04)
    with pytest.raises(ValueError, match="must both be"):
        top1_hits(values, positives[:, :3])


def test_direction_targets():
    caption_video = np.array([2, 0, 1])
    assert direction_targets(caption_video, 3, "t2v").tolist() == [2, 0, 1]
    assert direction_targets(caption_video, 3, "v2t").tolist() == [1, 2, 0]
    with pytest.raises(ValueError, match="one caption per video"):
        direction_targets(np.array([0, 0, 1]), 3, "v2t")


def test_unclamped_final_keeps_the_order_the_clamp_ties():
    diffusion = create_diffusion(10)
    noise = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    fn = lambda x_t, t: torch.tensor([3.0, 2.0, 1.5, 0.0, -4.0]).expand_as(x_t) + 0.0 * x_t  # noqa: E731
    clamped = diffusion.ddim_sample(fn, (3, 5), noise=noise)
    raw = diffusion.ddim_sample(fn, (3, 5), noise=noise, clamp_final=False)
    assert (clamped[:, :3] == 1.0).all()  # the official final clamp ties three candidates
    assert torch.equal(raw, fn(noise, None))  # the last prediction as the network made it, order kept


def test_stop_step_runs_only_the_trained_steps_and_returns_that_prediction():
    diffusion = create_diffusion(20)
    steps, outputs = [], []

    def fn(x_t, t):
        steps.append(int(t[0]))
        outputs.append(0.5 * x_t + 0.01 * t[:, None])
        return outputs[-1]

    sample = diffusion.ddim_sample(fn, (2, 4), torch.Generator().manual_seed(1), stop_step=12)
    assert steps == list(range(19, 11, -1))
    assert torch.equal(sample, outputs[-1].clamp(-1, 1))
    with pytest.raises(ValueError, match="stop_step"):
        diffusion.ddim_sample(fn, (2, 4), torch.Generator().manual_seed(1), stop_step=20)


def test_official_sampler_unchanged_by_the_new_arguments():
    diffusion = create_diffusion(10)
    noise = torch.randn(3, 4, generator=torch.Generator().manual_seed(2))
    fn = lambda x_t, t: 2.0 * torch.tanh(x_t) + 0.05 * t[:, None]  # noqa: E731
    default = diffusion.ddim_sample(fn, (3, 4), noise=noise)
    explicit = diffusion.ddim_sample(fn, (3, 4), noise=noise, clamp_final=True, stop_step=0)
    assert torch.equal(default, explicit)


def _params(**changes):
    import yaml
    data = yaml.safe_load(open("params.yaml"))
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        data[section][key] = value
    return params_from_dict(data)


def test_rerank_temperature_sources():
    from diffusionret.pipeline.evaluate import rerank_settings

    meta = {"loss_temperature_inv": 100.0, "min_timestep": 7,
            "selected": {"rerank": {"temperature": 10.0, "alpha": 0.3}}}
    official = rerank_settings(_params(eval__rerank_from="params", eval__rerank_temperature=1.0,
                                       eval__rerank_alpha=1.0, eval__rerank_clamp_final=True))
    assert (official.temperature, official.alpha, official.clamp_final, official.stop_step) == (1.0, 1.0, True, 0)
    matched = rerank_settings(_params(eval__rerank_from="training", eval__rerank_alpha=0.5), meta)
    assert (matched.temperature, matched.alpha, matched.stop_step) == (100.0, 0.5, 7)  # training's 1/tau_g
    chosen = rerank_settings(_params(eval__rerank_from="val"), meta)
    assert (chosen.temperature, chosen.alpha) == (10.0, 0.3)
    with pytest.raises(ValueError, match="rerank_temperatures"):
        rerank_settings(_params(eval__rerank_from="val"), {"selected": {}})


def test_train_gen_option_validation():
    with pytest.raises(ConfigError, match="num_negatives"):
        _params(train_gen__negatives="mined", train_gen__mined_top_k=32, train_gen__num_negatives=32)
    with pytest.raises(ConfigError, match="min_timestep"):
        _params(train_gen__min_timestep=50)
    with pytest.raises(ConfigError, match="negatives"):
        _params(train_gen__negatives="random")
    with pytest.raises(ConfigError, match="rerank_from"):
        _params(eval__rerank_from="test")


def test_paper_presets_keep_the_official_stage2_values():
    from diffusionret.presets import load_preset, preset_names

    names = preset_names()
    assert names
    for name in names:
        preset = load_preset(name)
        gen, ev = preset["train_gen"], preset["eval"]
        assert (gen["negatives"], gen["min_timestep"], gen["select_by"]) == ("batch", 0, "rerank_r1"), name
        assert (ev["rerank_from"], ev["rerank_clamp_final"]) == ("params", True), name
        assert (gen["loss_temperature_inv"], ev["rerank_temperature"], ev["rerank_alpha"]) == (100.0, 1.0, 1.0), name


def test_val_choice_of_temperature_and_alpha_matches_full_reranking_per_pair():
    """choose_rerank_on_val re-weights one draw's x0_hat per grid pair; re-running the whole re-ranking for each pair
    (an independent path) must pick the same pair with the same val R@1."""
    from types import SimpleNamespace

    from diffusionret.evaluation.metrics import retrieval_ranks
    from diffusionret.evaluation.scoring import RerankSettings, score_queries
    from diffusionret.features.cache import SplitFeatures
    from diffusionret.pipeline.train_gen import choose_rerank_on_val

    g = torch.Generator().manual_seed(5)
    text = TextFeatures(tokens=torch.randn(12, 3, 8, generator=g), mask=torch.ones(12, 3),
                        sentence=torch.randn(12, 8, generator=g))
    video = VideoFeatures(frames=text.sentence[:, None, :] + 0.8 * torch.randn(12, 2, 8, generator=g),
                          mask=torch.ones(12, 2))
    features = SplitFeatures(text=text, video=video, annotations=SimpleNamespace(caption_video=list(range(12))))
    extractor = SimpleNamespace(similarity=_score)
    generator = Generator(8, seed=3).eval()
    diffusion = create_diffusion(5)
    base = RerankSettings(k=6, temperature=1.0, alpha=1.0, seeds=(0,), query_batch=4, clamp_final=False)
    temperatures, alphas = (1.0, 30.0), (0.0, 0.05, 2.0)
    chosen = choose_rerank_on_val(generator, diffusion, extractor, features, base, 64, temperatures, alphas)
    best = None
    for temperature in temperatures:
        for alpha in alphas:
            settings = RerankSettings(k=6, temperature=temperature, alpha=alpha, seeds=(0,), query_batch=4,
                                      clamp_final=False)
            r1 = 0.0
            for direction in ("t2v", "v2t"):
                scores = score_queries(_score, text, video, direction=direction, query_block=64, generator=generator,
                                       diffusion=diffusion, rerank=settings)
                r1 += 100.0 * float(np.mean(retrieval_ranks(scores.reranked[0].numpy(), np.arange(12)) == 0))
            if best is None or r1 > best[0] + 1e-9:
                best = (r1, temperature, alpha)
    assert math.isclose(chosen["val_R1_sum"], best[0])  # the best sum of t2v + v2t val R@1 over the grid
    assert (chosen["temperature"], chosen["alpha"]) in {(t, a) for t in temperatures for a in alphas}
