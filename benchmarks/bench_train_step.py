"""One training step of the paper-scale Mamba (24 x 768, vocab 128) against mamba_ssm's
MambaLMHeadModel (Mamba1 blocks, causal_conv1d, fused add + RMSNorm, residual in float32), side by
side in one process: same weights (ours copied into theirs; the logits' relative difference is
reported), same token batches, batch 128, bf16 autocast, fused AdamW, the same masked loss. Per input
length: median step time, tokens/s, peak memory (each model alone on the GPU: the other is on the
CPU meanwhile) and the ratios speedup_step_vs_mamba_ssm / memory_ratio_vs_mamba_ssm (ours / theirs).
Our model folds short rows into packed rows on CUDA (`Mamba.fold_rows`, models/mamba.py): where it
does at a length (ssm_tools_fold_factor > 1), our step is timed a second time with folding off, in the
same process on the same batches (ssm_tools_unfolded_*, speedup_folded_vs_unfolded).
With --cuda-graph, our step is also timed captured as one CUDA graph (ssm_tools.graphed_step:
forward, loss, backward and the fused capturable AdamW replayed per batch), in the same process on the
same batches, folded as the default step (ssm_tools_graphed_*, speedup_graphed_vs_eager, and
speedup_graphed_vs_mamba_ssm beside mamba_ssm); ssm_tools_graphed_device_ms is the GPU time from the
batch's copy to the replay's end (CUDA events), ssm_tools_graphed_build_s the warm-up and capture.
Optionally a profiler table of our step at the first length (--profile FILE; FILE with the suffix
.unfolded.txt: the same step unfolded) and of our packed step on the first task's batch (suffix
.packed.txt).

Task batches ("task_batches"): the episodes of real training batches of each --tasks config (sizes up
to its training maximum, --task-batch episodes a step, the same episodes for every variant): ours on
packed rows (the Trainer's `pack_batch`, seq_idx), ours padded to the longest episode, mamba_ssm padded
(it has no sequence reset). Step time, real (unpadded) tokens/s, peak memory,
speedup_packed_vs_mamba_ssm, speedup_packed_vs_padded, speedup_padded_vs_mamba_ssm.

    python3 benchmarks/bench_train_step.py [--seqlens 216 640] [--tasks addition multiplication_nx2]
        [--cuda-graph] [--out results/bench_train_step.json]

A CPU dry run of the same code (tiny model, no mamba_ssm; --fold-rows 2 forces the folded/unfolded pair):
    python benchmarks/bench_train_step.py --device cpu --scale tiny --batch 4 --seqlens 16 --task-batch 16 \
        --warmup 1 --steps 1 --fold-rows 2 --out /tmp/bench_train_step.json

Needs a GPU; mamba_ssm comes from benchmarks/mamba_ssm_baseline.py (installed, or built from the
sources benchmarks/fetch_mamba_ssm.sh fetches: MAMBA_SSM_PKG, CAUSAL_CONV1D_PKG, MAMBA_SSM_SRC).
Without it only our step is timed.
"""
import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

import mamba_ssm_baseline
from _results import write_result  # benchmarks/_results.py (run as a script: its folder is on sys.path)
from ssm_tools import vocab as V
from ssm_tools.config import load_config, make_task
from ssm_tools.models import build_model, preset
from ssm_tools.train import PACK_EPISODES, masked_loss, pack_batch, pad_batch


class TheirLM(torch.nn.Module):
    """MambaLMHeadModel as `masked_loss` calls a model: tokens -> logits."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, tokens):
        return self.model(tokens).logits


def mamba_ssm_model(ours):
    classes = mamba_ssm_baseline.lm_head_model()
    if classes is None:
        return None
    MambaLMHeadModel, MambaConfig = classes
    size = preset("mamba", "paper")
    cfg = MambaConfig(d_model=size["d_model"], n_layer=size["n_layers"], vocab_size=V.VOCAB_SIZE,
                      ssm_cfg={"layer": "Mamba1", "d_state": size["d_state"]}, rms_norm=True,
                      residual_in_fp32=True, fused_add_norm=True, pad_vocab_size_multiple=8)
    theirs = MambaLMHeadModel(cfg, device="cuda")
    state = {"backbone.embedding.weight": ours.embedding.weight, "backbone.norm_f.weight": ours.norm_f.weight}
    for i, (norm, mixer) in enumerate(zip(ours.norms, ours.mixers)):
        state[f"backbone.layers.{i}.norm.weight"] = norm.weight
        state.update({f"backbone.layers.{i}.mixer.{k}": v for k, v in mixer.state_dict().items()})
    missing, unexpected = theirs.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)  # lm_head: tied
    return TheirLM(theirs)


def train_step(model, opt, tokens, mask, seq_idx=None):
    device = tokens.device.type
    with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
        loss = masked_loss(model, tokens, mask, seq_idx=seq_idx)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(model, batches, warmup, device):
    """Median step time (ms) over batches[warmup:] and the peak memory of the steps (GB; CUDA only).
    batches: (tokens, mask) or (tokens, mask, seq_idx) on `device`."""
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i, batch in enumerate(batches):
        t0 = time.perf_counter()
        train_step(model, opt, *batch)
        sync(device)
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    peak = torch.cuda.max_memory_allocated() / 1e9 if cuda else None
    opt.zero_grad(set_to_none=True)
    del opt
    model.cpu()
    if cuda:
        torch.cuda.empty_cache()
    return statistics.median(times), peak, times


def measure_graphed(model, batches, warmup, device):
    """`measure` for our step captured as a CUDA graph (GraphedTrainStep, fused capturable AdamW at the
    same lr; each batch's values checked, read back from the GPU as the eager step reads its tokens'
    range and its mask's count): median step time
    (ms), peak memory (GB, warm-up and capture included), all step times, the GPU time of each timed
    step (ms, from the batch's copy to the replay's end), the seconds the warm-up and capture took, and
    every step's loss."""
    from ssm_tools.graphed_step import GraphedTrainStep
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True, capturable=True)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    graphed = GraphedTrainStep(model, opt, *batches[0][0].shape, packed=len(batches[0]) > 2)
    torch.cuda.synchronize()
    build_s = time.perf_counter() - t0
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times, device_times, losses = [], [], []
    for i, batch in enumerate(batches):
        t0 = time.perf_counter()
        start.record()
        loss = graphed.step(*batch, check=True)
        end.record()
        torch.cuda.synchronize()
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1e3)
            device_times.append(start.elapsed_time(end))
        losses.append(loss.item())
    peak = torch.cuda.max_memory_allocated() / 1e9
    graphed.close()
    del graphed, opt
    model.cpu()
    torch.cuda.empty_cache()
    return statistics.median(times), peak, times, device_times, build_s, losses


def peak_text(peak):
    return "" if peak is None else f"  {peak:5.1f} GB peak"


def task_batches(config_name, batch, n, device):
    """`n` training batches of `batch` episodes of an experiment config's task, each as packed rows
    and padded rows (aligned to 8 positions on CUDA, as the Trainer does), on `device`; and the
    config's training sizes."""
    config = load_config(config_name)
    task, sizes = make_task(config), config["sizes"]["train"]
    rng = np.random.default_rng(0)
    multiple = 8 if device.type == "cuda" else 1
    packed, padded, real = [], [], []
    for _ in range(n):
        transcript, _ = task.trajectories(rng, [sizes[1]] * batch, train=True)
        tokens, mask, lengths = transcript.tokens, transcript.loss_mask, transcript.lengths
        packed.append(tuple(t.to(device) for t in pack_batch(tokens, mask, lengths, multiple)))
        padded.append(tuple(t.to(device) for t in pad_batch(tokens, mask, multiple)))
        real.append(int(lengths.sum()))
    return packed, padded, real, sizes


def task_rows(args, models, device):
    """The task-batch comparison: ours packed, ours padded, mamba_ssm padded, per task."""
    rows = []
    for name in args.tasks:
        packed, padded, real, sizes = task_batches(name, args.task_batch, args.warmup + args.steps, device)
        timed = slice(args.warmup, None)
        row = {"task": name, "train_sizes": sizes, "episodes_per_step": args.task_batch,
               "pack_episodes": PACK_EPISODES,
               "real_tokens_per_step": statistics.mean(real[timed]),
               "packed_rows_x_width": [list(b[0].shape) for b in packed[timed]],
               "padded_rows_x_width": [list(b[0].shape) for b in padded[timed]]}
        row["padded_tokens_per_real_token"] = statistics.mean(
            b[0].numel() / r for b, r in zip(padded[timed], real[timed]))
        row["packed_tokens_per_real_token"] = statistics.mean(
            b[0].numel() / r for b, r in zip(packed[timed], real[timed]))
        variants = [("ssm_tools_packed", models["ssm_tools"], packed), ("ssm_tools_padded", models["ssm_tools"], padded)]
        if "mamba_ssm" in models:
            variants.append(("mamba_ssm_padded", models["mamba_ssm"], padded))
        for key, model, batches in variants:
            for other in models.values():
                other.cpu()
            ms, peak, times = measure(model, batches, args.warmup, device)
            row[f"{key}_step_ms"], row[f"{key}_peak_memory_GB"], row[f"{key}_step_ms_all"] = ms, peak, times
            row[f"{key}_real_tokens_per_s"] = row["real_tokens_per_step"] / ms * 1e3
            print(f"task {name} {key:>17}: {ms:8.1f} ms/step{peak_text(peak)}", flush=True)
        row["speedup_packed_vs_padded"] = row["ssm_tools_padded_step_ms"] / row["ssm_tools_packed_step_ms"]
        if "mamba_ssm" in models:
            row["speedup_packed_vs_mamba_ssm"] = row["mamba_ssm_padded_step_ms"] / row["ssm_tools_packed_step_ms"]
            row["speedup_padded_vs_mamba_ssm"] = row["mamba_ssm_padded_step_ms"] / row["ssm_tools_padded_step_ms"]
            row["memory_ratio_packed_vs_mamba_ssm"] = (row["ssm_tools_packed_peak_memory_GB"]
                                                       / row["mamba_ssm_padded_peak_memory_GB"])
        if args.profile and name == args.tasks[0]:
            profile_table(models["ssm_tools"], packed[0], Path(args.profile).with_suffix(".packed.txt"))
        print(f"task {name}: packed x{row['speedup_packed_vs_padded']:.2f} vs padded"
              + (f", x{row['speedup_packed_vs_mamba_ssm']:.2f} vs mamba_ssm" if "mamba_ssm" in models else ""),
              flush=True)
        rows.append(row)
    return rows


def profile_table(model, batch, path):
    from torch.profiler import ProfilerActivity, profile
    model.cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    train_step(model, opt, *batch)
    # Input shapes too: the second table tells which tensors the copies and casts move.
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as p:
        train_step(model, opt, *batch)
        torch.cuda.synchronize()
    with open(path, "w") as f:
        for by_shape, rows in ((False, 60), (True, 60)):
            averages = p.key_averages(group_by_input_shape=by_shape)
            try:
                f.write(averages.table(sort_by="self_device_time_total", row_limit=rows, max_name_column_width=70,
                                       max_shapes_column_width=90) + "\n")
            except (AttributeError, KeyError):  # torch without the device_* names
                f.write(averages.table(sort_by="self_cuda_time_total", row_limit=rows, max_name_column_width=70,
                                       max_shapes_column_width=90) + "\n")
    opt.zero_grad(set_to_none=True)
    model.cpu()
    torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seqlens", type=int, nargs="*", default=[216, 640], help="model input lengths")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--tasks", nargs="*", default=["addition", "multiplication_nx2"],
                    help="experiment configs whose training batches are timed packed and padded")
    ap.add_argument("--task-batch", type=int, default=128, help="episodes per task batch")
    ap.add_argument("--device", default="cuda", help="cuda, or cpu for a dry run (no mamba_ssm)")
    ap.add_argument("--scale", default="paper", help="size preset of the Mamba")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per model and length")
    ap.add_argument("--profile", help="write a profiler table of our step at the first length here (and of the "
                                      "same step unfolded, suffix .unfolded.txt, and of the packed step of the "
                                      "first task, suffix .packed.txt)")
    ap.add_argument("--fold-rows", type=int, help="fold our rows this many at a time (default: the model's rule, "
                                                  "CUDA only); 1: never")
    ap.add_argument("--cuda-graph", action="store_true",
                    help="also time our step captured as one CUDA graph (CUDA only; fixed-length batches)")
    ap.add_argument("--out", default="results/bench_train_step.json")
    args = ap.parse_args()
    device = torch.device(args.device)
    if args.cuda_graph and device.type != "cuda":
        ap.error("--cuda-graph needs --device cuda")
    torch.manual_seed(0)
    ours = build_model("mamba", **dict(preset("mamba", args.scale), vocab_size=V.VOCAB_SIZE)).to(device)
    fold_rows = True if args.fold_rows is None else args.fold_rows
    ours.fold_rows = fold_rows
    theirs = mamba_ssm_model(ours) if device.type == "cuda" else None
    models = {"ssm_tools": ours, **({"mamba_ssm": theirs} if theirs is not None else {})}
    print("mamba_ssm:", mamba_ssm_baseline.version() if theirs is not None else "not available")
    gen = torch.Generator().manual_seed(0)
    result = {"model": {"name": "mamba", **preset("mamba", args.scale), "vocab_size": V.VOCAB_SIZE},
              "device": str(device), "batch": args.batch,
              "autocast": "bfloat16" if device.type == "cuda" else None,
              "optimizer": f"AdamW(fused={device.type == 'cuda'})", "fold_rows": fold_rows,
              **({"graphed_optimizer": "AdamW(fused=True, capturable=True)"} if args.cuda_graph else {}),
              "mamba_ssm_version": mamba_ssm_baseline.version() if theirs is not None else None,
              "parameters": {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()},
              "per_seqlen": []}
    for seqlen in args.seqlens:
        batches = []
        for _ in range(args.warmup + args.steps):
            tokens = torch.randint(0, V.VOCAB_SIZE, (args.batch, seqlen + 1), generator=gen)
            batches.append((tokens.to(device), torch.ones_like(tokens, dtype=torch.bool).to(device)))
        row = {"seqlen": seqlen, "tokens_per_step": args.batch * seqlen}
        if theirs is not None and seqlen == args.seqlens[0]:
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                a, b = ours.cuda()(batches[0][0][:8, :-1]).float(), theirs.cuda()(batches[0][0][:8, :-1]).float()
            result["logits_rel_diff_vs_mamba_ssm"] = ((a - b).norm() / b.norm()).item()
            theirs.cpu()
        row["ssm_tools_fold_factor"] = fold = ours.fold_for(args.batch, seqlen, device)
        variants = list(models.items()) + ([("ssm_tools_unfolded", ours)] if fold > 1 else [])
        for name, model in variants:
            for other in models.values():
                other.cpu()
            ours.fold_rows = False if name == "ssm_tools_unfolded" else fold_rows
            ms, peak, times = measure(model, batches, args.warmup, device)
            row[f"{name}_step_ms"], row[f"{name}_peak_memory_GB"] = ms, peak
            row[f"{name}_tokens_per_s"] = args.batch * seqlen / ms * 1e3
            row[f"{name}_step_ms_all"] = times
            print(f"seqlen {seqlen} {name:>18}: {ms:7.1f} ms/step{peak_text(peak)}", flush=True)
        ours.fold_rows = fold_rows
        if args.cuda_graph:
            for other in models.values():
                other.cpu()
            ms, peak, times, device_times, build_s, losses = measure_graphed(ours, batches, args.warmup, device)
            row.update({"ssm_tools_graphed_step_ms": ms, "ssm_tools_graphed_peak_memory_GB": peak,
                        "ssm_tools_graphed_tokens_per_s": args.batch * seqlen / ms * 1e3,
                        "ssm_tools_graphed_step_ms_all": times, "ssm_tools_graphed_device_ms_all": device_times,
                        "ssm_tools_graphed_device_ms": statistics.median(device_times),
                        "ssm_tools_graphed_build_s": build_s, "ssm_tools_graphed_losses": losses,
                        "speedup_graphed_vs_eager": row["ssm_tools_step_ms"] / ms})
            print(f"seqlen {seqlen} {'ssm_tools_graphed':>18}: {ms:7.1f} ms/step{peak_text(peak)} (GPU "
                  f"{row['ssm_tools_graphed_device_ms']:.1f} ms; warm-up + capture {build_s:.1f} s), "
                  f"x{row['speedup_graphed_vs_eager']:.3f} against eager", flush=True)
            if theirs is not None:
                row["speedup_graphed_vs_mamba_ssm"] = row["mamba_ssm_step_ms"] / ms
        if fold > 1:
            row["speedup_folded_vs_unfolded"] = row["ssm_tools_unfolded_step_ms"] / row["ssm_tools_step_ms"]
            print(f"seqlen {seqlen}: rows folded {fold} at a time, x{row['speedup_folded_vs_unfolded']:.3f} "
                  "against unfolded", flush=True)
        if theirs is not None:
            row["speedup_step_vs_mamba_ssm"] = row["mamba_ssm_step_ms"] / row["ssm_tools_step_ms"]
            row["memory_ratio_vs_mamba_ssm"] = row["ssm_tools_peak_memory_GB"] / row["mamba_ssm_peak_memory_GB"]
            print(f"seqlen {seqlen}: x{row['speedup_step_vs_mamba_ssm']:.2f} step, "
                  f"memory ours/theirs {row['memory_ratio_vs_mamba_ssm']:.2f}", flush=True)
        result["per_seqlen"].append(row)
        if args.profile and seqlen == args.seqlens[0]:
            profile_table(ours, batches[0], args.profile)
            if fold > 1:
                ours.fold_rows = False
                profile_table(ours, batches[0], Path(args.profile).with_suffix(".unfolded.txt"))
                ours.fold_rows = fold_rows
    write_result(args.out, result)  # the fixed lengths kept should the task batches fail
    ours.fold_rows = True  # task batches: the model's own rule (their row counts need not divide by --fold-rows)
    result["task_batches"] = task_rows(args, models, device)
    write_result(args.out, result)


if __name__ == "__main__":
    main()
