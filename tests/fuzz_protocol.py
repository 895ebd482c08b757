"""Differential fuzzing of the dispatch loop with atheris: arbitrary prompts, model scripts and limits
go through the C++ loop (replay, 2 threads) and through the plain-Python reference loop over the same
tools; the transcripts must agree token by token, stay within max_len and the vocabulary.

    python tests/fuzz_protocol.py -max_total_time=30      (run by .ci/native_checks.sh)
"""
import sys

import atheris

from ssm_tools.env import Env, ToolSpec, replay
from ssm_tools.reference import ReferenceParser, replay_reference
from ssm_tools.tools import Calculator, PointerMemory, SearchMemory, TapeMemory
from ssm_tools.vocab import VOCAB_SIZE

# Coverage feedback from the reference parser's branches (the C++ side is not instrumented: it is
# built by g++; .ci/native_checks.sh fuzzes it separately under ASan/UBSan). Instrumenting only these
# functions keeps torch & co. uninstrumented and start-up fast.
for _name, _fn in list(vars(ReferenceParser).items()):
    if callable(_fn):
        setattr(ReferenceParser, _name, atheris.instrument_func(_fn))

BATCH = 2


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    max_len = fdp.ConsumeIntInRange(1, 300)
    limits = dict(max_len=max_len, max_call_tokens=fdp.ConsumeIntInRange(1, 32),
                  max_answer_tokens=fdp.ConsumeIntInRange(16, 64))
    cells, lines, response = fdp.ConsumeIntInRange(1, 40), fdp.ConsumeIntInRange(1, 6), fdp.ConsumeIntInRange(16, 48)
    pointers = fdp.ConsumeIntInRange(1, 4)
    prompts = [[t % VOCAB_SIZE for t in fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, min(16, max_len)))] or [0]
               for _ in range(BATCH)]
    scripts = [[t % VOCAB_SIZE for t in fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 200))] for _ in range(BATCH)]
    specs = [ToolSpec("pointer_memory", num_pointers=pointers, max_cells=cells),
             ToolSpec("tape_memory", num_pointers=pointers, max_cells=cells),
             ToolSpec("search_memory", max_lines=lines, max_response_tokens=response), ToolSpec("calculator")]

    def make_tools():
        return [PointerMemory(pointers, cells), TapeMemory(pointers, cells), SearchMemory(lines, response),
                Calculator()]

    got = replay(Env(specs, batch_size=BATCH, num_threads=2, **limits), prompts, scripts, seed=1)
    want = replay_reference(make_tools, prompts, scripts, seed=1, **limits)
    for i in range(BATCH):
        tokens, mask = got.episode(i)
        assert (tokens, mask) == want.episode(i), (got.text(i), want.text(i))
        assert len(tokens) <= max_len and all(0 <= t < VOCAB_SIZE for t in tokens)
    assert got.done.tolist() == want.done.tolist()


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
