"""The figures of `reproduce`: exact-answer accuracy against problem size (plot_curve) and, for a
sweep (the task mixture, App. D.6), accuracy at the largest size against the addition weight, one
line per step budget (plot_sweep). Every legend says how its runs were trained: the model's size,
steps, learning rate and number of seeds; a scale smaller than the paper's says so in its title."""
from __future__ import annotations


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def model_size(curve: dict, run: dict) -> str:
    """"24x768": layers x width of the run's model (its own record, else the curve's for that model)."""
    cfg = run.get("model_cfg") or curve["models"].get(run["model"], {})
    return f"{cfg['n_layers']}x{cfg['d_model']}" if {"n_layers", "d_model"} <= set(cfg) else "?"


def recipe_text(curve: dict, runs: list[dict]) -> str:
    """"24x768, 2000 steps, batch 128, lr 0.0005, best step at 700 (every 200), 2 seeds, H200" for
    the runs of one line (values that differ are joined by '/'; "700 of 2000 steps" for a run its
    time budget stopped). Batch, checkpoint selection and machine appear where the runs record them."""
    def values(get, fmt=str):
        found = {get(r) for r in runs} - {None}
        return "/".join(fmt(v) for v in sorted(found, key=lambda v: (type(v).__name__, v)))

    def steps(run):  # a run stopped by its time budget: "700 of 2000"
        planned = run["train"]["steps"]
        return f"{run['trained_steps']} of {planned}" if run.get("trained_steps", planned) < planned else planned

    def selection(run):
        train = run["train"]
        return f"{train['select_size']} (every {train['select_every']})" if train.get("select_size") else None

    seeds = len({r["seed"] for r in runs})
    parts = [values(lambda r: model_size(curve, r)), f"{values(steps)} steps"]
    if batch := values(lambda r: r["train"].get("batch_size")):
        parts.append(f"batch {batch}")
    parts.append(f"lr {values(lambda r: r['train']['lr'], lambda v: f'{v:g}')}")
    if chosen := values(selection):
        parts.append(f"best step at {chosen}")
    parts.append(f"{seeds} seed{'s' * (seeds != 1)}")
    # "NVIDIA H200", "cpu (AVX512), 2 cores, 1 threads" -> "H200", "cpu (AVX512)"
    if machine := values(lambda r: r.get("machine", "").removeprefix("NVIDIA ").split(",")[0] or None):
        parts.append(machine)
    return ", ".join(parts)


def zero_skipped(run: dict) -> list[int]:
    """The sizes a run left undecoded because it scored 0/n at a smaller one (stop_after_zero)."""
    return [s for s in run.get("skipped_sizes", []) if run.get("zero_at") is not None and s > run["zero_at"]]


def plot_curve(curve: dict, path) -> list[str]:
    """Accuracy vs size (log x), one line per model/mode (mean over seeds) with a min-max band. A size
    is on a line only where every seed of it has a result (skipped or not-run sizes are not drawn);
    where only some seeds have one, those seeds' points stand alone, hollow. Sizes a run did not
    decode after scoring 0/n at a smaller one (stop_after_zero) are crosses at 0. The teacher-forced
    exact trajectory is dashed. A curve with "every_seed" (Hanoi) also draws each seed's own line.
    A sweep's curve is plot_sweep's figure. Returns the legend's lines."""
    if curve.get("sweep"):
        return plot_sweep(curve, path)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    stopped = False
    lo, hi = curve["train_sizes"]
    ax.axvspan(lo, hi, color="0.9", label=f"training sizes {lo}..{hi}")
    n_shared = curve["n_per_size"]
    for label in dict.fromkeys(f"{r['model']} ({r['mode']})" for r in curve["runs"]):
        runs = [r for r in curve["runs"] if f"{r['model']} ({r['mode']})" == label]
        sizes = sorted({s for r in runs for s, a in r["accuracy"].items() if a is not None}, key=int)
        full = [s for s in sizes if all(r["accuracy"].get(s) is not None for r in runs)]
        per_size = [[r["accuracy"][s] for r in runs] for s in full]
        ns = sorted({r["n"] for r in runs})
        text = f"{label}: {recipe_text(curve, runs)}"
        text += "" if n_shared is not None else f", n={'/'.join(map(str, ns))}"
        skipped = sorted({s for r in runs for s in r.get("skipped_sizes", []) if s not in zero_skipped(r)})
        text += f", skipped {','.join(map(str, skipped))}" if skipped else ""
        xs = [int(s) for s in full]
        line, = ax.plot(xs, [sum(a) / len(a) for a in per_size], marker="o", label=text)
        ax.fill_between(xs, [min(a) for a in per_size], [max(a) for a in per_size], color=line.get_color(), alpha=0.2)
        partial = [(int(s), r["accuracy"][s]) for s in sizes if s not in full for r in runs
                   if r["accuracy"].get(s) is not None]
        if partial:
            ax.plot(*zip(*partial), linestyle="none", marker="o", markerfacecolor="none", color=line.get_color())
        for r in runs:  # sizes left undecoded after a 0/n: crosses at 0, dotted from the 0/n point
            if zero_skipped(r):
                ax.plot([r["zero_at"], *zero_skipped(r)], [0] * (1 + len(zero_skipped(r))), linestyle=":",
                        marker="x", markevery=slice(1, None), color=line.get_color(), alpha=0.7)
                stopped = True
        tf_sizes = sorted({s for r in runs for s, a in r.get("exact_trajectory", {}).items() if a is not None}, key=int)
        tf_full = [s for s in tf_sizes if all(r.get("exact_trajectory", {}).get(s) is not None for r in runs)]
        if tf_full:  # teacher-forced exact trajectory (every size, skipped ones included): dashed
            ax.plot([int(s) for s in tf_full], [sum(r["exact_trajectory"][s] for r in runs) / len(runs) for s in tf_full],
                    linestyle="--", marker="x", color=line.get_color(), alpha=0.8)
        if curve.get("every_seed") and len(runs) > 1:  # each seed's own line, thin (the paper's Figure 5)
            for r in runs:
                for key, style in (("accuracy", "-"), ("exact_trajectory", "--")):
                    own = sorted((int(s), a) for s, a in r.get(key, {}).items() if a is not None)
                    if own:
                        ax.plot(*zip(*own), linewidth=0.7, linestyle=style, alpha=0.6, color=line.get_color())
    ax.set_xscale("log")
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel(f"problem size ({curve['task']}, {curve['size_label']})")
    n_text = f"n={n_shared} per size" if n_shared is not None else "n per size in the legend"
    ax.set_ylabel(f"accuracy ({n_text})")
    if any(r.get("exact_trajectory") for r in curve["runs"]):
        ax.plot([], [], linestyle="--", marker="x", color="0.4", label="dashed: exact trajectory (teacher-forced)")
        ax.plot([], [], marker="o", color="0.4", label="solid: exact answer (decoded with the tools)")
    if stopped:  # one legend entry for the crosses of every line
        ax.plot([], [], linestyle=":", marker="x", color="0.4", label="x: not decoded (0/n at a smaller size)")
    seeds = sorted({r["seed"] for r in curve["runs"]}) or curve["seeds"]
    ax.set_title(f"{curve['task']}: length generalization, {curve['scale']} scale, seeds {seeds}")
    return _save(fig, ax, path, curve)


def _save(fig, ax, path, curve: dict) -> list[str]:
    """Saves the figure; the legend's title is the curve's "scale_note" (a scale smaller than the
    paper's says so beside every line). Returns the legend's lines."""
    legend = (ax.legend(fontsize=7, title=curve.get("scale_note"), title_fontsize=7)
              if ax.get_legend_handles_labels()[0] else None)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    fig.clf()
    _pyplot().close(fig)
    return [t.get_text() for t in legend.get_texts()] if legend else []


def largest_common_size(runs: list[dict]) -> str | None:
    """The largest size every run has an accuracy at (None if there is none)."""
    common = set.intersection(*({s for s, a in r["accuracy"].items() if a is not None} for r in runs))
    return max(common, key=int) if common else None


def plot_sweep(curve: dict, path) -> list[str]:
    """Accuracy at the largest size that every run reached against the addition weight: one line per
    (model, mode, step budget) through the mean over seeds, every seed's own point beside it (budgets
    nudged apart on the x axis so their points do not hide each other). Returns the legend's lines."""
    plt = _pyplot()
    runs = curve["runs"]
    size = largest_common_size(runs) if runs else None
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    lines = list(dict.fromkeys((r["model"], r["mode"], r["setting"]["steps"]) for r in runs))
    for i, (model, mode, steps) in enumerate(lines if size is not None else []):
        group = [r for r in runs if (r["model"], r["mode"], r["setting"]["steps"]) == (model, mode, steps)]
        nudge = (i - (len(lines) - 1) / 2) * 0.006
        weights = sorted({r["setting"]["add_weight"] for r in group})
        means = [sum(acc) / len(acc) for acc in
                 ([r["accuracy"][size] for r in group if r["setting"]["add_weight"] == w] for w in weights)]
        line, = ax.plot([w + nudge for w in weights], means, marker="_", markersize=12,
                        label=f"{model} ({mode}): {recipe_text(curve, group)}")
        ax.plot([r["setting"]["add_weight"] + nudge for r in group], [r["accuracy"][size] for r in group],
                linestyle="none", marker="o", markersize=4, alpha=0.6, color=line.get_color())
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("weight of addition in the training mix")
    n = curve["n_per_size"]
    unit = curve["size_label"].split(" ")[0]  # "digits"
    ax.set_ylabel(f"exact-answer accuracy at {size} {unit}" if size is not None else "no size every run reached")
    lo, hi = curve["train_sizes"]
    ax.set_title(f"{curve['task']} ({curve['size_label']}): trained on {lo}..{hi}, {curve['scale']} scale;\n"
                 f"line: mean over seeds, dots: each seed" + (f", n={n} per point" if n else ""), fontsize=9)
    return _save(fig, ax, path, curve)
