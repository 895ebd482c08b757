"""Where the time of one paper-scale Mamba training step goes on a GPU (data, step, profiler table,
decode step). Diagnostic, run on the device machine:
    python3 benchmarks/profile_train_step_gpu.py > results/gpu/train_step_profile.txt
results/gpu/train_step_profile.txt holds its output (H100). Other tasks' steps (batch 128 at the
largest training size): `python3 benchmarks/profile_train_step_gpu.py multiplication_nx2`.

The step is timed two ways in the same run: the batch padded to an input length that is a multiple
of 8 (what the Trainer does on a GPU, `train.pad_batch`) or not. The profiler table is of the first
(the default). The side-by-side step against mamba_ssm is benchmarks/bench_train_step.py."""
import statistics, sys, time, tomllib, torch, numpy as np
from pathlib import Path
from ssm_tools.tasks import get_task
from ssm_tools.models import preset, build_model
from ssm_tools.train import masked_loss, pad_batch
from ssm_tools import vocab as V


config = tomllib.loads((Path(__file__).parents[1] / "tasks" / f"{sys.argv[1] if len(sys.argv) > 1 else 'addition'}.toml").read_text())
task = get_task(config["task"]["name"], config["task"]["mode"], **config["task"].get("options", {}))
size = config["sizes"]["train"][1]
print("task", config["task"], "size", size)
m = build_model("mamba", **dict(preset("mamba", "paper"), vocab_size=V.VOCAB_SIZE)).cuda()
opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
rng = np.random.default_rng(0)
def data(pad=True):
    tr, _ = task.trajectories(rng, [size] * 128, train=True)
    tok, mask = pad_batch(tr.tokens, tr.loss_mask, 8) if pad else (tr.tokens, tr.loss_mask)
    return tok.cuda(), mask.cuda()
def step(tok, mask):
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = masked_loss(m, tok, mask)
    opt.zero_grad(); loss.backward(); opt.step()
t0 = time.perf_counter(); d = [data() for _ in range(5)]; t1 = time.perf_counter()
print("data per step ms", (t1 - t0) / 5 * 1e3, "shape", d[0][0].shape)
times = {}
for pad in (True, False):
    batches = [data(pad) for _ in range(6)]
    for x in batches[:2]: step(*x)  # warm-up (cuBLAS algorithm choice)
    torch.cuda.synchronize()
    ms = []
    for x in batches[2:]:
        t = time.perf_counter(); step(*x); torch.cuda.synchronize(); ms.append((time.perf_counter() - t) * 1e3)
    times[pad] = statistics.median(ms)
    print(f"train step ms {times[pad]:.1f}  input length {batches[0][0].shape[1] - 1}"
          f" ({'padded to a multiple of 8' if pad else 'unpadded'})")
print("speedup of padding:", round(times[False] / times[True], 3))
from torch.profiler import profile, ProfilerActivity
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
    step(*d[0]); torch.cuda.synchronize()
print(p.key_averages().table(sort_by="cuda_time_total", row_limit=15, max_name_column_width=60))
# decode speed
from ssm_tools.evaluate import greedy_policy
pol = greedy_policy(m.eval(), 100, "cuda")
tok = torch.ones(100, dtype=torch.long)
for _ in range(5): pol(tok)
torch.cuda.synchronize(); t0 = time.perf_counter()
for _ in range(50): pol(tok)
torch.cuda.synchronize(); print("decode step ms (batch 100)", (time.perf_counter() - t0) / 50 * 1e3)
