"""One small case of each CUDA kernel (forward, backward, decode step), for compute-sanitizer's
memcheck and racecheck (benchmarks/run_gpu.sh). Several chunks with a partial last one and 10 dims
per group (a full backward block of 8 dims and a partial one pooling dB/dC), every option on: input-dependent B with
constant C in float32, then constant B with input-dependent C in bf16 on packed rows (seq_idx) with
the forward split into segments of one chunk (SSM_TOOLS_SCAN_SEGMENT), then both input-dependent in bf16
on rows packed at a 216-position period (the training step's folded rows: the backward kernel it runs,
B/C of a chunk loaded at once), with rows not 16-byte aligned at dstate 8 and aligned at dstate 16 (its
16-byte loads); then decode with groups. Exits non-zero if an output is not finite."""
import os

import torch

import ssm_tools._C  # noqa: F401  (registers the ops)

OPS = torch.ops.ssm_tools


def main():
    dev = "cuda"
    batch, dim, groups = 1, 20, 2
    for dtype, variable_B, variable_C, seqlen, dstate, starts in (
            (torch.float32, True, False, 2100, 8, None),
            (torch.bfloat16, False, True, 2100, 8, (1, 64, 255, 256, 700, 2099)),
            (torch.bfloat16, True, True, 2100, 8, range(216, 2100, 216)),
            (torch.bfloat16, True, True, 2160, 16, range(216, 2160, 216))):
        u, z, dout = (torch.randn(batch, dim, seqlen, device=dev).to(dtype) for _ in range(3))
        delta = (torch.randn(batch, dim, seqlen, device=dev) - 1).to(dtype)
        A = -(torch.rand(dim, dstate, device=dev) + 0.5)
        B = torch.randn(batch, groups, dstate, seqlen, device=dev).to(dtype) if variable_B else \
            torch.randn(dim, dstate, device=dev)
        C = torch.randn(batch, groups, dstate, seqlen, device=dev).to(dtype) if variable_C else \
            torch.randn(dim, dstate, device=dev)
        D, bias = torch.randn(dim, device=dev), torch.randn(dim, device=dev)
        seq_idx = None
        if starts is not None:
            os.environ["SSM_TOOLS_SCAN_SEGMENT"] = "256"
            seq_idx = torch.zeros(batch, seqlen, dtype=torch.int32, device=dev)
            for t in starts:
                seq_idx[:, t:] += 1
        out, last, saved = OPS.selective_scan_fwd(u, delta, A, B, C, D, z, bias, True, seq_idx)
        grads = OPS.selective_scan_bwd(dout, torch.randn_like(last), u, delta, A, B, C, D, z, bias, True, saved,
                                       seq_idx)
        state = torch.randn(batch, dim, dstate, device=dev)
        B_step, C_step = (torch.randn(batch, groups, dstate, device=dev) for _ in range(2))
        y = OPS.selective_state_update(state, u[..., 0], delta[..., 0], A, B_step, C_step, D, z[..., 0], bias, True)
        torch.cuda.synchronize()
        for t in (out, last, saved, y, state, *grads):
            assert torch.isfinite(t.float()).all()
    print("sanitize case: ok")


if __name__ == "__main__":
    main()
