"""The paper's central claim at CPU scale: a tiny Mamba trained on 1..5-digit additions WITH the
pointer-memory tool adds 50-digit numbers (10x the training length) exactly; the same model trained
to answer directly (no tool) does not. Seeded; uses the `reproduce --scale cpu` recipe."""
import pytest

from ssm_tools.reproduce import SCALES, plot_curve, reproduce, run_parallel, task_config

RECIPE = SCALES["cpu"]


@pytest.mark.slow
def test_tool_use_makes_tiny_mamba_generalize_10x_in_length(tmp_path):
    with_tools, no_tools = run_parallel([
        (task_config("addition", mode), "mamba", RECIPE["model_scale"], RECIPE["train"], 0, [50], 40,
         tmp_path / mode, "cpu") for mode in ("interactive", "direct")])
    assert with_tools["accuracy"]["50"] >= 0.95
    assert no_tools["accuracy"]["50"] <= 0.20


def test_plot_curve_writes_a_png_with_one_band_per_model(tmp_path):
    import random

    rng = random.Random()
    sizes = [5, 10, 50]
    runs = [{"model": m, "mode": mode, "seed": s, "accuracy": {str(n): rng.random() for n in sizes}}
            for m, mode in (("mamba", "interactive"), ("mamba", "direct")) for s in (0, 1)]
    curve = {"task": "addition", "scale": "cpu", "train_sizes": [1, 5], "test_sizes": sizes, "n_per_size": 10,
             "seeds": [0, 1], "runs": runs}
    plot_curve(curve, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_reproduce_rejects_unknown_scale_and_runs():
    with pytest.raises(ValueError, match="scale must be one of"):
        reproduce("addition", "huge", [0], "unused")
    with pytest.raises(ValueError, match="not in the cpu scale"):
        reproduce("addition", "cpu", [0], "unused", only=[("mamba", "telepathy")])
    with pytest.raises(FileNotFoundError, match="no experiment config"):
        task_config("sorting", "interactive")
