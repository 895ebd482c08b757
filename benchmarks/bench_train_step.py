"""One training step of the paper-scale Mamba (24 x 768, vocab 128) against mamba_ssm's
MambaLMHeadModel (Mamba1 blocks, causal_conv1d, fused add + RMSNorm, residual in float32), side by
side in one process: same weights (ours copied into theirs; the logits' relative difference is
reported), same token batches, batch 128, bf16 autocast, fused AdamW, the same masked loss. Per input
length: median step time, tokens/s, peak memory (each model alone on the GPU: the other is on the
CPU meanwhile) and the ratios speedup_step_vs_mamba_ssm / memory_ratio_vs_mamba_ssm (ours / theirs).
Optionally a profiler table of our step at the first length (--profile FILE).

    python3 benchmarks/bench_train_step.py [--seqlens 216 640] [--out results/bench_train_step.json]

Needs a GPU; mamba_ssm comes from benchmarks/mamba_ssm_baseline.py (installed, or built from the
sources benchmarks/fetch_mamba_ssm.sh fetches: MAMBA_SSM_PKG, CAUSAL_CONV1D_PKG, MAMBA_SSM_SRC).
Without it only our step is timed.
"""
import argparse
import statistics
import time

import torch

import mamba_ssm_baseline
from _results import write_result  # benchmarks/_results.py (run as a script: its folder is on sys.path)
from ssm_tools import vocab as V
from ssm_tools.models import build_model, preset
from ssm_tools.train import masked_loss


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


def train_step(model, opt, tokens, mask):
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = masked_loss(model, tokens, mask)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def measure(model, batches, warmup):
    """Median step time (ms) over batches[warmup:] and the peak memory of the steps (GB)."""
    model.cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for i, (tokens, mask) in enumerate(batches):
        t0 = time.perf_counter()
        train_step(model, opt, tokens, mask)
        torch.cuda.synchronize()
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    peak = torch.cuda.max_memory_allocated() / 1e9
    opt.zero_grad(set_to_none=True)
    del opt
    model.cpu()
    torch.cuda.empty_cache()
    return statistics.median(times), peak, times


def profile_table(model, batch, path):
    from torch.profiler import ProfilerActivity, profile
    model.cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    train_step(model, opt, *batch)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
        train_step(model, opt, *batch)
        torch.cuda.synchronize()
    averages = p.key_averages()
    try:
        table = averages.table(sort_by="self_device_time_total", row_limit=30, max_name_column_width=70)
    except (AttributeError, KeyError):  # torch without the device_* names
        table = averages.table(sort_by="self_cuda_time_total", row_limit=30, max_name_column_width=70)
    with open(path, "w") as f:
        f.write(table)
    opt.zero_grad(set_to_none=True)
    model.cpu()
    torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seqlens", type=int, nargs="+", default=[216, 640], help="model input lengths")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per model and length")
    ap.add_argument("--profile", help="write a profiler table of our step at the first length here")
    ap.add_argument("--out", default="results/bench_train_step.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    ours = build_model("mamba", **dict(preset("mamba", "paper"), vocab_size=V.VOCAB_SIZE)).cuda()
    theirs = mamba_ssm_model(ours)
    models = {"ssm_tools": ours, **({"mamba_ssm": theirs} if theirs is not None else {})}
    print("mamba_ssm:", mamba_ssm_baseline.version() if theirs is not None else "not available")
    gen = torch.Generator().manual_seed(0)
    result = {"model": {"name": "mamba", **preset("mamba", "paper"), "vocab_size": V.VOCAB_SIZE},
              "batch": args.batch, "autocast": "bfloat16", "optimizer": "AdamW(fused=True)",
              "mamba_ssm_version": mamba_ssm_baseline.version() if theirs is not None else None,
              "parameters": {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()},
              "per_seqlen": []}
    for seqlen in args.seqlens:
        batches = []
        for _ in range(args.warmup + args.steps):
            tokens = torch.randint(0, V.VOCAB_SIZE, (args.batch, seqlen + 1), generator=gen)
            batches.append((tokens.cuda(), torch.ones_like(tokens, dtype=torch.bool).cuda()))
        row = {"seqlen": seqlen, "tokens_per_step": args.batch * seqlen}
        if theirs is not None and seqlen == args.seqlens[0]:
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                a, b = ours.cuda()(batches[0][0][:8, :-1]).float(), theirs.cuda()(batches[0][0][:8, :-1]).float()
            result["logits_rel_diff_vs_mamba_ssm"] = ((a - b).norm() / b.norm()).item()
            theirs.cpu()
        for name, model in models.items():
            for other in models.values():
                other.cpu()
            ms, peak, times = measure(model, batches, args.warmup)
            row[f"{name}_step_ms"], row[f"{name}_peak_memory_GB"] = ms, peak
            row[f"{name}_tokens_per_s"] = args.batch * seqlen / ms * 1e3
            row[f"{name}_step_ms_all"] = times
            print(f"seqlen {seqlen} {name:>10}: {ms:7.1f} ms/step  {peak:5.1f} GB peak", flush=True)
        if theirs is not None:
            row["speedup_step_vs_mamba_ssm"] = row["mamba_ssm_step_ms"] / row["ssm_tools_step_ms"]
            row["memory_ratio_vs_mamba_ssm"] = row["ssm_tools_peak_memory_GB"] / row["mamba_ssm_peak_memory_GB"]
            print(f"seqlen {seqlen}: x{row['speedup_step_vs_mamba_ssm']:.2f} step, "
                  f"memory ours/theirs {row['memory_ratio_vs_mamba_ssm']:.2f}", flush=True)
        result["per_seqlen"].append(row)
        if args.profile and seqlen == args.seqlens[0]:
            profile_table(ours, batches[0], args.profile)
    write_result(args.out, result)


if __name__ == "__main__":
    main()
