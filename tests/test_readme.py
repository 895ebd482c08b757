"""The README's Python example runs as written (extracted from the README, executed in a temp dir)."""
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    section = README.read_text().split("## Python example", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_example_is_short():
    assert len(readme_example().strip().splitlines()) <= 20


def test_readme_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(readme_example(), str(README), "exec"), {"__name__": "__readme__"})
    assert "correct:" in capsys.readouterr().out
    assert (tmp_path / "runs" / "readme" / "checkpoint.pt").is_file()
