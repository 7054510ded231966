"""A benchmark preset file's own `variants` block: what one sibling's official command changes on that benchmark only
(DiCoSA's ActivityNet command), checked against the official values restated here."""

import shutil

import pytest

from diffusionret.cli import preset_overrides
from diffusionret.config import ConfigError
from diffusionret.presets import load_preset

from test_paper_presets import PRESETS, applied


def test_dicosa_activitynet_preset_is_its_own_command(tmp_path):
    """DiCoSA's ActivityNet command: 10 epochs and QB-Norm beta 50 (theta 3 / 5 as elsewhere); the other heads'
    ActivityNet presets and DiCoSA's other benchmarks are unchanged."""
    dicosa = applied(tmp_path, preset_overrides("activitynet-dicosa", None, [], PRESETS))
    activitynet = dicosa.benchmarks["activitynet"]
    assert (dicosa.train.epochs, activitynet.max_words, activitynet.max_frames) == (10, 64, 64)
    assert dicosa.postprocess.qbnorm_settings("t2v") == {"beta": 50.0, "k": 1, "min_count": 3}
    assert dicosa.postprocess.qbnorm_settings("v2t") == {"beta": 50.0, "k": 1, "min_count": 5}
    assert load_preset("activitynet-emcl", PRESETS)["train"]["epochs"] == 5
    assert load_preset("activitynet-vitb32", PRESETS)["train"]["epochs"] == 5
    assert load_preset("didemo-dicosa", PRESETS)["train"]["epochs"] == 5


def test_a_benchmark_variant_the_base_does_not_have_is_an_error(tmp_path):
    for name in ("paper.yaml", "msvd.yaml"):
        shutil.copyfile(PRESETS / name, tmp_path / name)
    with (tmp_path / "msvd.yaml").open("a") as handle:
        handle.write("variants:\n  dicosaa: {train: {epochs: 3}}\n")
    with pytest.raises(ConfigError, match="variant `dicosaa`"):
        load_preset("msvd-dicosa", tmp_path)
