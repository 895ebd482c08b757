"""How far the bf16-autocast training gradients of a small Mamba are from float64's (same weights,
same batch, the masked loss), per norm / in_proj / out_proj weight: the relative L2 error. A check
that a change to the training step's arithmetic keeps its precision (compare the output of two
checkouts; CPU autocast, the Python path of the CUDA step):
    python benchmarks/precision_train_grads.py [--out results/precision_train_grads.json]
Seed 5; d_model 64, 3 layers, d_state 8, batch 4 x 120 tokens, 80% of positions in the loss."""
import argparse, copy, json, sys
import torch
from ssm_tools.models import build_model
from ssm_tools.train import masked_loss

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--out", default="")
args = ap.parse_args()
torch.manual_seed(5)
m = build_model("mamba", vocab_size=40, d_model=64, n_layers=3, d_state=8)
with torch.no_grad():
    for p in m.parameters():  # off the initialisation (norm weights of ones)
        p.add_(0.1 * torch.randn_like(p))
tok = torch.randint(0, 40, (4, 120))
mask = torch.rand(4, 120) < 0.8
m64 = copy.deepcopy(m).double()
loss64 = masked_loss(m64, tok, mask)
g64 = torch.autograd.grad(loss64, list(m64.parameters()))
with torch.autocast("cpu", dtype=torch.bfloat16):
    loss = masked_loss(m, tok, mask)
g = torch.autograd.grad(loss, list(m.parameters()))
errors = {n: ((a.double() - b).norm() / b.norm()).item() for (n, _), a, b in zip(m.named_parameters(), g, g64)
          if "norms" in n or "in_proj" in n or "out_proj" in n}
result = {"command": " ".join(["python"] + sys.argv), "seed": 5, "loss_bf16": loss.item(), "loss_float64": loss64.item(),
          "relative_error": errors}
print(json.dumps(result, indent=1))
if args.out:
    json.dump(result, open(args.out, "w"), indent=1)
