"""One greedy decode step of the paper-scale Mamba (24 x 768), as the interactive evaluation runs it
(`evaluate.greedy_policy`: tokens to the GPU, one replayed CUDA graph, argmax back to the host; the two
copies are nodes of the graph), at batch 1, 100 and 1,000. Variants, side by side in one run:
  * model: the model's step (ops.add_rms_norm, in_proj, ops.causal_conv1d_update, x_proj,
    ops.mamba_state_update, out_proj: 6 kernels a layer; the last residual add inside the final
    norm), with float32 matmuls, TF32 ones (greedy_policy's precision "tf32": cuBLAS's TF32 kernels
    captured in the graph) and bfloat16 weights ("bfloat16": a copy of the model with bf16 matmul
    weights, as trained under autocast);
  * unfused: the step as it was before the decode kernels (residual add and norm apart, conv state
    concatenated, conv as a multiply-sum, dt_proj and B/C copies, selective_state_update), float32
    and TF32: the baseline of the ratios speedup_model_vs_unfused_*.
Also the graph replay alone (back to back, no host work between them; the graph's two copies
included), each fast variant's argmax agreement with float32 on the same inputs, the CUDA kernels one
step launches per variant (torch.profiler over eager steps at --profile-batch: what the graph holds,
bar its two copies; and, where the profiler sees inside graphs, the kernels of one replay), and what
the step time means for a 10,000-digit addition episode (its length extrapolated from the 1,000-digit
one, linear in digits).

    python3 benchmarks/bench_decode.py [--batches 1 100 1000] [--out results/bench_decode.json]

With SSM_TOOLS_PROGRAMMATIC_LAUNCH=0 in the environment the decode kernels are launched plainly
(recorded as "programmatic_launch"): the same step without programmatic dependent launch.
"""
import argparse
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from _results import write_result  # benchmarks/_results.py (run as a script: its folder is on sys.path)
from ssm_tools import ops
from ssm_tools import vocab as V
from ssm_tools.evaluate import greedy_policy, greedy_step
from ssm_tools.models import build_model, preset
from ssm_tools.models.base import LanguageModel
from ssm_tools.models.mamba import Mamba, MambaMixer
from ssm_tools.tasks import get_task


def unfused_step(self, h, state):
    """MambaMixer.step before the decode kernels (the baseline)."""
    conv_state, ssm_state = state
    x, z = self.in_proj(h).chunk(2, dim=-1)
    conv_state = torch.cat([conv_state[..., 1:], x.unsqueeze(-1)], dim=-1)
    x = F.silu((conv_state * self.conv1d.weight[:, 0, :]).sum(-1) + self.conv1d.bias)
    dt, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
    y = ops.selective_state_update(ssm_state, x, F.linear(dt, self.dt_proj.weight), -torch.exp(self.A_log), B, C,
                                   self.D, z, dt_bias=self.dt_proj.bias, dt_softplus=True)
    return self.out_proj(y), (conv_state, ssm_state)


def unfused_body_step(self, x, state):
    """Mamba.body_step before ops.add_rms_norm (the baseline)."""
    new_state = []
    for norm, mixer, layer_state in zip(self.norms, self.mixers, state):
        out, layer_state = mixer.step(norm(x), layer_state)
        x = x + out
        new_state.append(layer_state)
    return x, new_state


# name: (MambaMixer.step, Mamba.step_unchecked, Mamba.body_step, precision); the class attributes
# are set before each variant's graph is captured, so the graph holds that variant's kernels.
VARIANTS = {
    "model_fp32": (MambaMixer.step, Mamba.step_unchecked, Mamba.body_step, "float32"),
    "model_tf32": (MambaMixer.step, Mamba.step_unchecked, Mamba.body_step, "tf32"),
    "model_bf16": (MambaMixer.step, Mamba.step_unchecked, Mamba.body_step, "bfloat16"),
    "unfused_fp32": (unfused_step, LanguageModel.step_unchecked, unfused_body_step, "float32"),
    "unfused_tf32": (unfused_step, LanguageModel.step_unchecked, unfused_body_step, "tf32"),
}


def use_variant(key):
    MambaMixer.step, Mamba.step_unchecked, Mamba.body_step = VARIANTS[key][:3]


def time_policy(model, batch, precision, calls):
    policy = greedy_policy(model, batch, "cuda", precision=precision)
    tokens = torch.randint(0, V.VOCAB_SIZE, (batch,))
    for _ in range(5):
        policy(tokens)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        policy(tokens)
    step_ms = (time.perf_counter() - t0) / calls * 1e3
    t0 = time.perf_counter()
    for _ in range(calls):
        policy.graph.replay()
    torch.cuda.synchronize()
    replay_ms = (time.perf_counter() - t0) / calls * 1e3
    return step_ms, replay_ms, policy


def cuda_kernels(fn, repeats):
    """({kernel name: launches per call}, {kernel name: its device microseconds per call}) of `fn`
    under torch.profiler, copies and memsets apart."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(repeats):
            fn()
        torch.cuda.synchronize()
    counts, micros = {}, {}
    for e in prof.events():
        if e.device_type == DeviceType.CUDA:
            name = "memcpy/memset" if e.name.startswith(("Memcpy", "Memset")) else e.name
            counts[name] = counts.get(name, 0) + 1
            micros[name] = micros.get(name, 0.0) + e.time_range.elapsed_us()
    order = sorted(counts, key=lambda k: -micros[k])
    return {k: counts[k] / repeats for k in order}, {k: micros[k] / repeats for k in order}


def variant_kernels(model, key, tokens, repeats):
    """One variant's kernels: of an eager greedy step (the graph's kernels, bar its two copies) and
    of a graph replay (none where the profiler does not see inside graphs), with the time the GPU
    spends in them: the replay's time less its kernels' is what the gaps between them cost (launch,
    dispatch, the wait for the previous kernel), which programmatic launches shorten."""
    use_variant(key)
    batch = tokens.shape[0]
    policy = greedy_policy(model, batch, "cuda", precision=VARIANTS[key][3])
    state = policy.model.init_state(batch, "cuda")
    with torch.no_grad():
        eager, eager_us = cuda_kernels(lambda: greedy_step(policy.model, tokens, state), repeats)
    graph, graph_us = cuda_kernels(policy.graph.replay, repeats)

    def kernels_only(d):
        return sum(v for k, v in d.items() if k != "memcpy/memset")

    return {"eager_step_kernels": kernels_only(eager), "graph_replay_kernels": kernels_only(graph),
            "graph_replay_copies": graph.get("memcpy/memset", 0),
            "eager_step_kernel_us": kernels_only(eager_us), "graph_replay_kernel_us": kernels_only(graph_us),
            "eager_step_by_name": eager, "eager_step_us_by_name": eager_us}


def kernel_counts(model, batch, repeats=3):
    tokens = torch.randint(0, V.VOCAB_SIZE, (batch,), device="cuda")
    out = {key: variant_kernels(model, key, tokens, repeats) for key in VARIANTS}
    use_variant("model_fp32")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 100, 1000])
    ap.add_argument("--calls", type=int, default=100)
    ap.add_argument("--profile-batch", type=int, default=100, help="batch of the kernel counts (0: none)")
    ap.add_argument("--out", default="results/bench_decode.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = build_model("mamba", **dict(preset("mamba", "paper"), vocab_size=V.VOCAB_SIZE)).cuda().eval()
    rows = []
    for batch in args.batches:
        row = {"batch": batch}
        policies = {}
        for key in VARIANTS:
            use_variant(key)
            row[f"{key}_step_ms"], row[f"{key}_replay_ms"], policies[key] = time_policy(model, batch, VARIANTS[key][3],
                                                                                          args.calls)
            row[f"{key}_host_ms"] = row[f"{key}_step_ms"] - row[f"{key}_replay_ms"]
        use_variant("model_fp32")
        # The variants decode the same tokens from the initial state: the argmax of each against float32.
        tokens = torch.randint(0, V.VOCAB_SIZE, (batch,))
        for p in policies.values():
            for t0, t in zip(p.state, p.model.init_state(batch, "cuda")):
                for old, new in zip(t0, t):
                    old.copy_(new)
        outs = {k: p(tokens) for k, p in policies.items()}
        row["argmax_agreement_model_vs_unfused_fp32"] = float((outs["model_fp32"] == outs["unfused_fp32"]).float().mean())
        for fast in ("tf32", "bf16"):
            row[f"argmax_agreement_{fast}_vs_fp32"] = float((outs[f"model_{fast}"] == outs["model_fp32"]).float().mean())
        for prec in ("fp32", "tf32"):
            row[f"speedup_model_vs_unfused_{prec}"] = row[f"unfused_{prec}_step_ms"] / row[f"model_{prec}_step_ms"]
        row["speedup_model_bf16_vs_unfused_fp32"] = row["unfused_fp32_step_ms"] / row["model_bf16_step_ms"]
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
        rows.append(row)
        del policies
        torch.cuda.empty_cache()
    task = get_task("addition")
    tr, _ = task.trajectories(np.random.default_rng(0), [1000], train=False)
    tokens_1000 = int(tr.lengths[0])
    result = {"model": {"name": "mamba", **preset("mamba", "paper"), "vocab_size": V.VOCAB_SIZE},
              "calls": args.calls, "per_batch": rows,
              # Our decode kernels launched programmatically (on sm_90 code; run_gpu_decode.sh runs
              # this benchmark again with SSM_TOOLS_PROGRAMMATIC_LAUNCH=0 for the plain launches).
              "programmatic_launch": os.environ.get("SSM_TOOLS_PROGRAMMATIC_LAUNCH", "1") != "0",
              "addition_tokens_1000_digits": tokens_1000}
    at100 = next((r for r in rows if r["batch"] == 100), None)
    if at100 is not None:
        est_tokens = tokens_1000 * 10
        result["addition_10000_digits_estimate"] = {
            "tokens_per_episode": est_tokens,
            **{f"decode_s_batch_100_{k}": est_tokens * at100[f"{k}_step_ms"] / 1e3
               for k in VARIANTS}}
    if args.profile_batch:
        try:  # the counts are a diagnostic: a profiler failure must not lose the timings above
            result["kernels_per_step"] = {"batch": args.profile_batch, **kernel_counts(model, args.profile_batch)}
        except Exception as exc:  # noqa: BLE001
            result["kernels_per_step"] = {"error": f"{type(exc).__name__}: {exc}"}
        for key, counts in result["kernels_per_step"].items():
            if isinstance(counts, dict):
                print(key, {k: v for k, v in counts.items()
                            if k not in ("eager_step_by_name", "eager_step_us_by_name")}, flush=True)
    write_result(args.out, result)


if __name__ == "__main__":
    main()
