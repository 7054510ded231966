"""Report figures: every drawn axis labelled, plain tick labels (no offset text), the uniform reference on the
generator's OOD panels, and the ΔR@K panel equal to each row minus stage 1."""

import numpy as np
import pytest

from diffusionret.report import figures


@pytest.fixture
def captured(monkeypatch):
    saved = []

    def keep(figure, path):
        figure.canvas.draw()  # offset texts are set while drawing
        saved.append(figure)
        return path

    monkeypatch.setattr(figures, "_save", keep)
    return saved


def drawn_axes(figure):
    return [axis for axis in figure.axes if axis.axison]


def check_readable(figure):
    for axis in drawn_axes(figure):
        assert axis.get_xlabel() and axis.get_ylabel(), axis.get_title()
        for which in (axis.xaxis, axis.yaxis):
            assert which.get_offset_text().get_text() == "", (axis.get_title(), which.get_offset_text().get_text())
            assert all(label.get_fontsize() >= figures.TICK_SIZE for label in which.get_ticklabels())


def test_ood_histograms_are_labelled_plain_and_show_the_uniform_reference(captured, tmp_path):
    rng = np.random.default_rng(0)
    k = 32
    scores = {  # a generator stuck at uniform: values within 1e-6 of 1/32 (offset notation would hide that)
        "gen_max_prob": {"id": 1 / k + rng.uniform(0, 1e-6, 50), "ood": 1 / k + rng.uniform(0, 1e-6, 40)},
        "s1_max": {"id": 1000 + rng.normal(0, 1e-3, 50), "ood": 1000 + rng.normal(0, 1e-3, 40)},
    }
    figures.ood_histogram_figure(scores, "a → b", tmp_path / "h.png", {"s1_max": 0.8}, num_candidates=k)
    figure = captured[-1]
    check_readable(figure)
    generator = next(axis for axis in figure.axes if axis.get_title().startswith("gen_max_prob"))
    assert generator.get_ylabel() == "density"
    references = [line for line in generator.get_lines() if line.get_linestyle() == "--"]
    assert len(references) == 1 and references[0].get_xdata()[0] == pytest.approx(1 / k)


def test_recall_figure_has_a_delta_panel_of_each_row_minus_stage_1(captured, tmp_path):
    ks = np.arange(1, 33)
    stage1 = np.minimum(100.0, 3.0 * ks)[None, :]  # (1, 32)
    rerank = np.stack([stage1[0] + 2.0, stage1[0] + 4.0])  # two draws: mean = stage 1 + 3
    curves = {"t2v": stage1, "t2v_rerank": rerank, "v2t": stage1, "v2t_rerank": rerank}
    figures.recall_figure(curves, "a → a", tmp_path / "r.png")
    figure = captured[-1]
    check_readable(figure)
    deltas = [axis for axis in figure.axes if axis.get_ylabel().startswith("ΔR@K")]
    assert len(deltas) == 2
    line = next(line for line in deltas[0].get_lines() if line.get_label() == "+ re-ranking")
    assert np.asarray(line.get_ydata()) == pytest.approx(np.full(32, 3.0))


def test_rank_and_loss_figures_are_labelled_and_plain(captured, tmp_path):
    curve = np.minimum(100.0, 3.0 * np.arange(1, 33))[None, :]
    figures.rank_figure({"t2v": curve, "t2v_rerank": curve, "v2t": curve, "v2t_rerank": curve}, "a", tmp_path / "k.png")
    check_readable(captured[-1])
    steps = np.array([20.0, 40.0, 60.0])
    figures.loss_figure({"step": steps, "loss/contrastive": 4.1 + np.array([1e-5, 2e-5, 3e-5])},
                        {"step": steps, "loss/generative": np.array([1.0, 0.9, 0.8])}, "a", tmp_path / "l.png")
    check_readable(captured[-1])
