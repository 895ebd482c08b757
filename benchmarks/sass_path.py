"""Instruction counts of one path through a kernel's SASS (`cuobjdump -sass` text), to compare kernel
versions without a GPU:

    nvcc -std=c++17 -O3 --use_fast_math --expt-relaxed-constexpr -gencode arch=compute_90,code=sm_90 \
        -Icsrc -c csrc/kernels/selective_scan_bwd.cu -o bwd.o && cuobjdump -sass bwd.o > bwd.sass
    python benchmarks/sass_path.py loops bwd.sass kernelI13__nv_bfloat16Lb0ELb1E
    python benchmarks/sass_path.py walk bwd.sass kernelI13__nv_bfloat16Lb0ELb1E 6aa0 7d10 [7cd0,7db0:1]

`loops` lists the backward branches (loops) of the first kernel whose name contains the pattern, with
their size and the shuffles, MUFU, local loads/stores and barriers inside. `walk` follows one path
from START to END (hex addresses): unconditional branches are taken, conditional ones are not unless
listed in TAKEN (ADDR or ADDR:times), BRA.DIV (the divergent fallback) never is; it prints the number
of instructions on the path and a histogram of their opcodes. A branch that only some lanes take
runs both sides for the warp, so list it as not taken to count warp instructions.
(cuobjdump and nvdisasm come with the CUDA toolkit, or as the nvidia-cuda-cuobjdump and
nvidia-cuda-nvdisasm wheels where the toolkit lacks them.)
"""
from __future__ import annotations

import collections
import re
import sys

INSTRUCTION = re.compile(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?);")
BRANCH = re.compile(r"\bBRA(\.DIV)?\s+(?:UR\d+,\s*)?(?:!?U?P\d,\s*)?0x([0-9a-f]+)")


def kernel_instructions(path: str, pattern: str) -> list[tuple[int, str]]:
    """(address, instruction text) of the first kernel whose name contains `pattern`."""
    for function in open(path).read().split("Function : ")[1:]:
        if pattern in function.split("\n", 1)[0]:
            return [(int(m.group(1), 16), m.group(2).strip())
                    for m in map(INSTRUCTION.match, function.split("\n")) if m]
    sys.exit(f"no kernel matching {pattern!r} in {path}")


def opcode(text: str) -> str:
    """The opcode without predicate guard and modifiers: '@!P0 FFMA.FTZ R1, ...' -> 'FFMA'."""
    return re.sub(r"^@!?U?P\w+\s+", "", text).split()[0].split(".")[0]


def branch_target(text: str) -> tuple[int, bool] | None:
    """(target, is BRA.DIV) of a branch instruction, else None."""
    if opcode(text) != "BRA":
        return None
    m = BRANCH.search(text)
    return (int(m.group(2), 16), bool(m.group(1))) if m else None


def loops(instructions: list[tuple[int, str]]) -> None:
    for address, text in instructions:
        branch = branch_target(text)
        if branch and branch[0] < address:
            body = [opcode(t) for a, t in instructions if branch[0] <= a <= address]
            count = collections.Counter(body)
            print(f"loop {branch[0]:#x}-{address:#x}: {len(body)} instructions, SHFL {count['SHFL']}, "
                  f"MUFU {count['MUFU']}, LDL {count['LDL']}, STL {count['STL']}, BAR {count['BAR']}")


def walk(instructions: list[tuple[int, str]], start: int, end: int, taken: dict[int, int]) -> None:
    order = [a for a, _ in instructions]
    text = dict(instructions)
    following = {a: b for a, b in zip(order, order[1:])}
    path, pc = [], start
    while pc != end:
        if pc not in text or len(path) > 100_000:
            sys.exit(f"walk left the kernel or looped at {pc:#x}")
        path.append(opcode(text[pc]))
        branch = branch_target(text[pc])
        guarded = text[pc].startswith("@")
        if branch and not branch[1] and (not guarded or taken.get(pc, 0) > 0):
            if guarded:
                taken[pc] -= 1
            pc = branch[0]
        else:
            pc = following[pc]
    count = collections.Counter(path)
    print(len(path), sorted(count.items(), key=lambda kv: -kv[1]))


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[0] not in ("loops", "walk"):
        sys.exit(__doc__)
    instructions = kernel_instructions(argv[1], argv[2])
    if argv[0] == "loops":
        loops(instructions)
        return
    taken = {}
    for item in (argv[5].split(",") if len(argv) > 5 and argv[5] else []):
        address, _, times = item.partition(":")
        taken[int(address, 16)] = int(times) if times else 1 << 30
    walk(instructions, int(argv[3], 16), int(argv[4], 16), taken)


if __name__ == "__main__":
    main(sys.argv[1:])
