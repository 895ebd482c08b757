"""The README's examples work as written: the Python example runs (in a temporary folder), its
`ssm-tools` commands parse, and every results file it quotes exists."""
import re
import shlex
from pathlib import Path

from ssm_tools.cli import parser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), re.S)


def test_readme_example_runs(tmp_path, monkeypatch, capsys):
    (example,) = blocks("python")
    monkeypatch.chdir(tmp_path)
    exec(compile(example, str(README), "exec"), {"__name__": "__readme__"})
    assert "correct:" in capsys.readouterr().out
    assert (tmp_path / "runs" / "readme" / "checkpoint.pt").is_file()


def test_readme_commands_parse():
    commands = [shlex.split(line, comments=True) for block in blocks("bash") for line in block.splitlines()]
    commands = [c for c in commands if c and c[0] == "ssm-tools"]
    assert len(commands) >= 4
    for command in commands:
        parser().parse_args(command[1:])  # an unknown option or value exits


def test_the_results_files_the_readme_quotes_exist():
    text = README.read_text()
    quoted = re.findall(r"results/[\w./-]*\w", text)
    quoted += [f"results/{name}" for name in re.findall(r"`((?:bench_|gpu/)[\w./-]+\.(?:json|txt))`", text)]
    assert len(quoted) >= 15
    assert [path for path in quoted if not (ROOT / path).exists()] == []
