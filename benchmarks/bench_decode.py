"""One greedy decode step of the paper-scale Mamba (24 x 768), as the interactive evaluation runs it
(`evaluate.greedy_policy`: tokens to the GPU, one replayed CUDA graph, argmax back to the host), at
batch 1, 100 and 1,000. Variants, side by side in one run:
  * fused: the model's step (ops.add_rms_norm, ops.causal_conv1d_update, ops.mamba_state_update and
    the three projections: 6 kernels a layer), with float32 matmuls, TF32 ones (greedy_policy's
    precision "tf32": cuBLAS's TF32 kernels captured in the graph) and bfloat16 weights ("bfloat16":
    a copy of the model with bf16 matmul weights, as trained under autocast);
  * unfused: the step as it was before the fused kernels (residual add and norm apart, conv state
    concatenated, conv as a multiply-sum, dt_proj and B/C copies, selective_state_update), float32
    and TF32: the baseline of the ratios speedup_fused_vs_unfused_*.
Also the graph replay alone (no host copies), each fast variant's argmax agreement with float32 on
the same inputs, and what the step time means for a 10,000-digit addition episode (its length
extrapolated from the 1,000-digit one, linear in digits).

    python3 benchmarks/bench_decode.py [--batches 1 100 1000] [--out results/bench_decode.json]
"""
import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from _results import write_result  # benchmarks/_results.py (run as a script: its folder is on sys.path)
from ssm_tools import ops
from ssm_tools import vocab as V
from ssm_tools.evaluate import greedy_policy
from ssm_tools.models import build_model, preset
from ssm_tools.models.mamba import Mamba, MambaMixer
from ssm_tools.tasks import get_task


def unfused_step(self, h, state):
    """MambaMixer.step before the fused decode kernels (the baseline)."""
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


VARIANTS = {  # name: (MambaMixer.step, Mamba.body_step, precision)
    "fused_fp32": (MambaMixer.step, Mamba.body_step, "float32"),
    "fused_tf32": (MambaMixer.step, Mamba.body_step, "tf32"),
    "fused_bf16": (MambaMixer.step, Mamba.body_step, "bfloat16"),
    "unfused_fp32": (unfused_step, unfused_body_step, "float32"),
    "unfused_tf32": (unfused_step, unfused_body_step, "tf32"),
}


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


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 100, 1000])
    ap.add_argument("--calls", type=int, default=100)
    ap.add_argument("--out", default="results/bench_decode.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = build_model("mamba", **dict(preset("mamba", "paper"), vocab_size=V.VOCAB_SIZE)).cuda().eval()
    rows = []
    for batch in args.batches:
        row = {"batch": batch}
        policies = {}
        for key, (step, body_step, precision) in VARIANTS.items():
            MambaMixer.step, Mamba.body_step = step, body_step  # the graph captures the variant's kernels
            row[f"{key}_step_ms"], row[f"{key}_replay_ms"], policies[key] = time_policy(model, batch, precision,
                                                                                          args.calls)
        MambaMixer.step, Mamba.body_step = VARIANTS["fused_fp32"][:2]
        # The variants decode the same tokens from the initial state: the argmax of each against float32.
        tokens = torch.randint(0, V.VOCAB_SIZE, (batch,))
        for p in policies.values():
            for t0, t in zip(p.state, p.model.init_state(batch, "cuda")):
                for old, new in zip(t0, t):
                    old.copy_(new)
        outs = {k: p(tokens) for k, p in policies.items()}
        row["argmax_agreement_fused_vs_unfused_fp32"] = float((outs["fused_fp32"] == outs["unfused_fp32"]).float().mean())
        for fast in ("tf32", "bf16"):
            row[f"argmax_agreement_{fast}_vs_fp32"] = float((outs[f"fused_{fast}"] == outs["fused_fp32"]).float().mean())
        for prec in ("fp32", "tf32"):
            row[f"speedup_fused_vs_unfused_{prec}"] = row[f"unfused_{prec}_step_ms"] / row[f"fused_{prec}_step_ms"]
        row["speedup_fused_bf16_vs_unfused_fp32"] = row["unfused_fp32_step_ms"] / row["fused_bf16_step_ms"]
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
        rows.append(row)
        del policies
        torch.cuda.empty_cache()
    task = get_task("addition")
    tr, _ = task.trajectories(np.random.default_rng(0), [1000], train=False)
    tokens_1000 = int(tr.lengths[0])
    result = {"model": {"name": "mamba", **preset("mamba", "paper"), "vocab_size": V.VOCAB_SIZE},
              "calls": args.calls, "per_batch": rows,
              "addition_tokens_1000_digits": tokens_1000}
    at100 = next((r for r in rows if r["batch"] == 100), None)
    if at100 is not None:
        est_tokens = tokens_1000 * 10
        result["addition_10000_digits_estimate"] = {
            "tokens_per_episode": est_tokens,
            **{f"decode_s_batch_100_{k}": est_tokens * at100[f"{k}_step_ms"] / 1e3
               for k in VARIANTS}}
    write_result(args.out, result)


if __name__ == "__main__":
    main()
