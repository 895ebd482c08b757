"""One small case of each Mamba-block CUDA kernel other than the scan (causal conv1d forward and
backward, its decode update, the block's SSM decode step, the decode's add + RMSNorm, the training
backward's rms_norm and rms_norm_bwd, transpose_cat), one fused layer's forward and backward and a
two-layer model's under autocast (also with its rows folded), for compute-sanitizer's memcheck and
racecheck (benchmarks/run_gpu_train_decode.sh, run_gpu_decode.sh).
Rows of several conv chunks (300 positions), widths 4, 3 and 8, bf16, float32 and float16, the conv
(and its backward with dx token-major, causal_conv1d_bwd_cat)
also on packed rows (seq_idx) and on rows that are not 16-byte aligned (37 positions, x one element
into its storage: the scalar loads).
Exits non-zero if an output is not finite."""
import torch

import ssm_tools.ops as ops
from ssm_tools.models import build_model
from ssm_tools.models.mamba import MambaMixer

OPS = torch.ops.ssm_tools


def main():
    dev = "cuda"
    outs = []
    for dtype, width, seqlen, offset in ((torch.bfloat16, 4, 300, 0), (torch.float32, 3, 300, 0),
                                         (torch.float16, 8, 37, 1)):
        x = torch.randn(2 * 12 * seqlen + offset, device=dev).to(dtype)[offset:].view(2, 12, seqlen)
        w, b = torch.randn(12, width, device=dev), torch.randn(12, device=dev)
        seq_idx = (torch.arange(seqlen, device=dev) // 7).to(torch.int32).expand(2, seqlen).contiguous()
        for packed in (None, seq_idx):
            outs.append(OPS.causal_conv1d_fwd(x, w, b, True, packed))
            outs.extend(OPS.causal_conv1d_bwd(torch.randn_like(x), x, w, b, True, packed))
            # dx token-major beside a transposed part (12 + 5 columns: one element at a time).
            outs.extend(OPS.causal_conv1d_bwd_cat(torch.randn_like(x), x, w, b, True, packed,
                                                  [torch.randn(2, 5, seqlen, device=dev).to(dtype)]))
        # 16-byte vectors along the channels (64 + 64 columns), a part-full position tile (216), 35
        # batch rows looping over the 32 batch blocks.
        x2 = torch.randn(35, 64, 216, device=dev).to(dtype)
        outs.extend(OPS.causal_conv1d_bwd_cat(torch.randn_like(x2), x2, torch.randn(64, width, device=dev),
                                              torch.randn(64, device=dev), True, None, [torch.randn_like(x2)]))
        state = torch.randn(2, 12, width, device=dev)
        xz = torch.randn(2, 24, device=dev).to(dtype)
        outs.append(ops.causal_conv1d_update(state, xz[:, :12], w, b, silu=True))
        ssm = torch.randn(2, 12, 16, device=dev)
        xdbl = torch.randn(2, 40, device=dev).to(dtype)[:, :3 + 32]
        outs.append(ops.mamba_state_update(ssm, xz[:, :12], xdbl, torch.randn(12, 3, device=dev),
                                           torch.randn(12, device=dev), torch.randn(12, 16, device=dev),
                                           torch.randn(12, device=dev), xz[:, 12:]))
        # The state update's other paths: dstate 7 (scalar), no D or z; 200 rows of 200 channels
        # (many blocks); dstate 130 (a warp a channel, two passes).
        for batch, dim, dstate, gate in ((5, 100, 7, False), (200, 200, 16, True), (3, 20, 130, True)):
            xz2 = torch.randn(batch, 2 * dim, device=dev).to(dtype)
            D, z = (torch.randn(dim, device=dev), xz2[:, dim:]) if gate else (None, None)
            outs.append(ops.mamba_state_update(torch.randn(batch, dim, dstate, device=dev), xz2[:, :dim],
                                               torch.randn(batch, 5 + 2 * dstate, device=dev).to(dtype),
                                               torch.randn(dim, 5, device=dev), torch.randn(dim, device=dev),
                                               torch.randn(dim, dstate, device=dev), D, z))
        outs.append(OPS.transpose_cat([x, torch.randn(2, 5, seqlen, device=dev).to(dtype)]))
        # 16-byte vectors both ways (216 positions, 136 columns), a part-full last tile of rows (72).
        outs.append(OPS.transpose_cat([torch.randn(2, c, 216, device=dev).to(dtype) for c in (64, 72)]))
        stream = torch.randn(3, 300, device=dev)  # 300: more than one pass of the norm's 256 threads
        for residual in (None, torch.randn(3, 300, device=dev).to(dtype)):
            outs.extend(ops.add_rms_norm(stream, residual, torch.randn(300, device=dev), None, dtype))
        # The final norm: a residual of the matmul dtype, the output in float32.
        outs.extend(ops.add_rms_norm(stream, torch.randn(3, 300, device=dev).to(dtype), torch.randn(300, device=dev),
                                     None, torch.float32))
        # Training's row count (the warp-a-row kernel): 4-element vectors, a lane past the row's end.
        rows = torch.randn(4096, 300, device=dev)
        outs.extend(ops.add_rms_norm(rows, torch.randn(4096, 300, device=dev).to(dtype), torch.randn(300, device=dev),
                                     None, dtype))
        # The training backward's norm: rms_norm (both kernels, with and without a weight) and rms_norm_bwd
        # at 16-byte vectors (dim 300: every vector cached; 1000: past the cache) and one element at a
        # time (dim 37), with and without weight, grad_sum and the cast copy.
        for n_rows, dim in ((3, 300), (4096, 300), (8, 1000), (5, 37)):
            r = torch.randn(n_rows, dim, device=dev)
            w = torch.randn(dim, device=dev)
            outs.extend([OPS.rms_norm(r, w, 1e-6, dtype), OPS.rms_norm(r, None, 1e-6, dtype)])
            g = torch.randn(n_rows, dim, device=dev).to(dtype)
            outs.extend(OPS.rms_norm_bwd(g, r, w, 1e-6, torch.randn(n_rows, dim, device=dev), dtype))
            outs.extend(OPS.rms_norm_bwd(g, r, None, 1e-6, None, None))
    # Two layers under autocast: the layers' residual adds, their fused norm backward, the final norm;
    # then with the rows folded 3 at a time (the conv's rows split into channels, the scan's seq_idx),
    # and with a caller's seq_idx composed into the folded one.
    model = build_model("mamba", vocab_size=20, d_model=16, n_layers=2, d_state=4).to(dev)
    tokens = torch.randint(0, 20, (3, 70), device=dev)
    seq_idx = (torch.arange(70, device=dev) >= 30).int().expand(3, 70)
    for fold, seq in ((False, None), (3, None), (3, seq_idx)):
        model.fold_rows = fold
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(tokens, seq)
        outs.append(logits)
        outs.extend(torch.autograd.grad(logits.float().square().sum(), list(model.parameters())))
    mixer = MambaMixer(16).to(dev)
    h = torch.randn(3, 70, 16, device=dev, requires_grad=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = mixer(h, torch.nn.RMSNorm(16).to(dev))
    outs.append(out)
    outs.extend(torch.autograd.grad(out.float().square().sum(), [h, *mixer.parameters()]))
    torch.cuda.synchronize()
    bad = [i for i, t in enumerate(outs) if t.numel() and not torch.isfinite(t).all()]
    if bad:
        raise SystemExit(f"non-finite outputs: {bad}")
    print("ok")


if __name__ == "__main__":
    main()
