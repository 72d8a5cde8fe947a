"""docs/errors.md is the reference for failures: it names every error class and exit code the package has, the
README and docs/cli.md link to it, and a failing `--json` command leaves stdout empty as it says."""

import inspect
import re
from pathlib import Path

from ssmprune_cli import errors
from _runner import run

DOCS = Path(__file__).resolve().parents[2] / "docs"
CLASSES = [c for _, c in inspect.getmembers(errors, inspect.isclass)
           if issubclass(c, errors.SsmpruneError) and c is not errors.SsmpruneError]


def test_every_error_class_and_exit_code_is_documented():
    text = (DOCS / "errors.md").read_text()
    assert CLASSES and all(f"`{c.__name__}`" in text for c in CLASSES), [c.__name__ for c in CLASSES]
    codes = {0, 1} | {c.exit_code for c in CLASSES}
    table = set(int(m) for m in re.findall(r"^\| (\d+) \|", text, flags=re.M))
    assert codes <= table, codes - table
    for code in codes - {0}:
        assert re.search(rf"^## {code}\b", text, flags=re.M), f"no section for exit code {code}"


def test_readme_and_cli_doc_link_to_it():
    assert "(docs/errors.md)" in (DOCS.parent / "README.md").read_text()
    assert "(errors.md)" in (DOCS / "cli.md").read_text()


def test_a_failing_json_command_prints_one_error_line_and_nothing_on_stdout(tmp_path):
    res = run("analyze", tmp_path / "missing.pth", "--json")
    assert res.exit_code == 2 and res.stdout == ""
    assert res.stderr.strip().splitlines() == [f"error: no such file: {tmp_path / 'missing.pth'}"]
