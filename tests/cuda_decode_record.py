"""Records a few greedy decode steps of a two-layer Mamba of the paper's shape on the GPU, eager and
graphed, at batches 1, 100 and 1001, in float32 and with bf16 matmul weights, into one file
(`python tests/cuda_decode_record.py OUT.pt SEED`, SEED seeding the weights and tokens): the eager
logits, the graph's tokens, and both final states. tests/test_cuda_models.py runs it in two
processes, with and without programmatic launches (SSM_TOOLS_PROGRAMMATIC_LAUNCH, read once per
process), and compares the files bitwise."""
import sys

import torch

from ssm_tools.evaluate import greedy_policy
from ssm_tools.models import build_model, preset
from ssm_tools.vocab import VOCAB_SIZE

BATCHES = (1, 100, 1001)  # 1001: past the benchmark's largest batch (1000)
STEPS = 6


def record(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    base = build_model("mamba", vocab_size=VOCAB_SIZE, **dict(preset("mamba", "paper"), n_layers=2)).cuda().eval()
    with torch.no_grad():  # logits spread out: greedy tokens that vary between rows and steps
        base.norm_f.weight.mul_(30.0)
    out = {}
    for precision, model in (("float32", base), ("bfloat16", base.decode_copy(torch.bfloat16))):
        for batch in BATCHES:
            tokens = torch.randint(0, VOCAB_SIZE, (STEPS, batch), generator=torch.Generator().manual_seed(seed + batch))
            key = f"{precision}_{batch}"
            state, logits = model.init_state(batch, "cuda"), []
            graphed = greedy_policy(model, batch, "cuda")
            argmax = []
            with torch.no_grad():
                for t in tokens:
                    step_logits, state = model.step(t.cuda(), state)
                    logits.append(step_logits.float().cpu())
                    argmax.append(graphed(t))
            out[f"{key}_logits"] = torch.stack(logits)
            out[f"{key}_graph_tokens"] = torch.stack(argmax)
            for i, (conv, ssm) in enumerate(state):
                out[f"{key}_conv{i}"], out[f"{key}_ssm{i}"] = conv.cpu(), ssm.cpu()
            for i, (conv, ssm) in enumerate(graphed.state):
                out[f"{key}_graph_conv{i}"], out[f"{key}_graph_ssm{i}"] = conv.cpu(), ssm.cpu()
    return out


if __name__ == "__main__":
    torch.save(record(int(sys.argv[2])), sys.argv[1])
