"""Set-up in two commands: the `all` extra holds every other one, and CI runs the README's install and test lines."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _extras() -> dict[str, list[str]]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]


def _section(title: str) -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    return readme.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def _commands(text: str, start: str) -> list[str]:
    """The lines of bash blocks (or of a script) that start with `start`, comments dropped."""
    return [line.split("#", 1)[0].strip() for line in text.splitlines() if line.strip().startswith(start)]


def test_the_all_extra_holds_every_other_extra():
    extras = _extras()
    [spec] = extras["all"]
    named = set(re.fullmatch(r"attnviz\[([\w,-]+)\]", spec).group(1).split(","))
    assert named == set(extras) - {"all"}


def test_ci_installs_and_tests_as_the_readme_says():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    install = _commands(_section("Install"), "pip install -e")
    assert install and set(install) == {'pip install -e ".[all]"'}
    assert _commands(ci, "pip install") == install[:1]       # nothing CI installs that the README does not say
    test_line = _commands(_section("Tests"), "python -m pytest")[0]
    assert _commands(ci, "python -m pytest") == [test_line] == ["python -m pytest -q"]
