"""Which line of code launches each ATen op of one Mamba training step (bf16 autocast, fused AdamW),
counted on the CPU through a dispatch mode: the ops the Python code, autograd and the optimizer
dispatch, with the first frame in ssm_tools (or this script) that led to each. The Python path is
the CUDA step's (autocast on the CPU casts the same ops), so the call counts of the GPU profiler
table can be attributed to lines; what our C++ ops do inside (their own casts and zero fills) is
not seen here and differs by backend (csrc/ops/*_cuda.cpp). Counts are per step of a small model
with --layers layers; the per-layer part scales to the paper model's 24:
    python benchmarks/count_train_step_ops.py [--layers 2] [--out results/train_step_op_counts.json]"""
import argparse, collections, json, sys, traceback
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from ssm_tools.models import build_model
from ssm_tools.train import masked_loss

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--layers", type=int, default=2)
ap.add_argument("--out", default="")
args = ap.parse_args()
torch.manual_seed(0)
m = build_model("mamba", vocab_size=16, d_model=64, n_layers=args.layers)
opt = torch.optim.AdamW(m.parameters(), lr=1e-4, fused=True)
tok = torch.randint(0, 16, (4, 33))
mask = torch.ones_like(tok, dtype=torch.bool)
# Ops that launch no kernel on a GPU (views, metadata).
VIEWS = {"view", "_unsafe_view", "t", "transpose", "expand", "unsqueeze", "split", "slice", "select", "detach",
         "alias", "as_strided", "permute", "reshape", "split_with_sizes", "squeeze", "lift_fresh", "_to_copy.noop"}


class Count(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name not in VIEWS:
            frames = [f for f in traceback.extract_stack()[:-1]
                      if ("ssm_tools" in f.filename or "benchmarks" in f.filename) and "count_train_step" not in f.filename]
            where = f"{frames[-1].filename.split('python/')[-1]}:{frames[-1].lineno} {frames[-1].line.strip()[:60]}" \
                if frames else "autograd engine / optimizer"
            dt = [str(a.dtype).replace("torch.", "") for a in args if isinstance(a, torch.Tensor)]
            if name == "_to_copy":
                dt.append("->" + str(kwargs.get("dtype")).replace("torch.", ""))
            self.counts[(name, where, " ".join(dt))] += 1
        return func(*args, **(kwargs or {}))


def step():
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = masked_loss(m, tok, mask)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


step()
with Count() as c:
    step()
rows = sorted(c.counts.items(), key=lambda kv: (kv[0][1], kv[0][0]))
for (name, where, dt), n in rows:
    print(f"{n:4d}  {name:28s} {where:90s} {dt}")
print("total", sum(c.counts.values()), "copies (_to_copy, copy_, clone)",
      sum(n for (name, _, _), n in rows if name in ("_to_copy", "copy_", "clone")))
if args.out:
    json.dump({"command": " ".join(["python"] + sys.argv), "layers": args.layers, "torch": torch.__version__,
               "rows": [dict(op=k[0], where=k[1], dtypes=k[2], calls=n) for k, n in rows]}, open(args.out, "w"), indent=1)
