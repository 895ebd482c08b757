"""The tests leave the checkout as they found it (after `make test`, `make reproduce` finds no run
of the tests under runs/, and `git status --porcelain --ignored` shows nothing the tests made).
conftest.py records the tree when the session starts and runs the check after every other test."""
import os

from conftest import CHECK_NAME, ROOT, tree_changes, tree_state


def test_the_tests_leave_the_checkout_as_they_found_it(tree_at_start):
    assert tree_changes(tree_at_start, tree_state(ROOT)) == []


assert test_the_tests_leave_the_checkout_as_they_found_it.__name__ == CHECK_NAME


def test_tree_changes_sees_added_changed_and_removed_files_in_any_folder(tmp_path):
    for folder in ("runs/old", "results", ".venv", "build", "python/pkg/__pycache__"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / ".venv" / "pyvenv.cfg").write_text("")
    for path in ("runs/old/log.csv", "results/curve.json", "python/pkg/__pycache__/m.pyc", "build/x.o"):
        (tmp_path / path).write_text("1")
    before = tree_state(tmp_path)
    (tmp_path / "runs/old/checkpoint.pt").write_text("new")  # inside a folder that already existed
    (tmp_path / "results/curve.json").write_text("22")
    os.remove(tmp_path / "runs/old/log.csv")
    # The environment, the build tree and bytecode are not the tests' doing.
    (tmp_path / ".venv/x.py").write_text("")
    (tmp_path / "build/y.o").write_text("")
    (tmp_path / "python/pkg/__pycache__/n.pyc").write_text("")
    assert tree_changes(before, tree_state(tmp_path)) == [
        "added runs/old/checkpoint.pt", "changed results/curve.json", "removed runs/old/log.csv"]
