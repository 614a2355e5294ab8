"""The documentation stays in step with the code: variables, links, and the block runner.

The code blocks themselves run as tests of their own (``docs/_blocks.py``, collected by
the root ``conftest.py``).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from sybil import Document

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "docs" / "_ext"))

from busapp_envvars import OTHER, TESTS, rows  # noqa: E402

from docs import _blocks  # noqa: E402

BUSAPP_NAME = re.compile(r"\bBUSAPP_[A-Z][A-Z0-9_]*[A-Z0-9]\b")


def _names_in(folder: str) -> set[str]:
    found: set[str] = set()
    for path in (ROOT / folder).rglob("*.py"):
        found |= set(BUSAPP_NAME.findall(path.read_text()))
    return found


def test_every_variable_the_package_names_is_in_the_reference() -> None:
    """Each BUSAPP_* name under busapp/ is a row of the generated settings table."""
    documented = {name.strip("`") for name, _, _ in rows("settings")}
    assert _names_in("busapp") - documented == set()


def test_the_written_rows_name_variables_that_are_read() -> None:
    """The test-suite rows name variables tests/ reads; the others, names busapp/ uses."""
    assert {v.name for v in TESTS} - _names_in("tests") == set()
    source = "".join(p.read_text() for p in (ROOT / "busapp").rglob("*.py"))
    assert [v.name for v in OTHER if v.name not in source] == []


def test_links_of_readme_and_docs_resolve() -> None:
    """Every relative Markdown link in README.md and docs/ names a file that exists."""
    link = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
    broken = []
    for page in [ROOT / "README.md", *(ROOT / "docs").rglob("*.md")]:
        for target in link.findall(page.read_text()):
            if "://" not in target and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert broken == []


def test_files_the_pages_name_exist() -> None:
    """Every examples/, tests/ or benchmarks/ file README.md and docs/ name exists."""
    named = re.compile(r"\b(?:examples|tests|benchmarks)/[\w/]+\.py\b")
    missing = {f"{page.relative_to(ROOT)}: {path}"
               for page in [ROOT / "README.md", *(ROOT / "docs").rglob("*.md")]
               for path in named.findall(page.read_text()) if not (ROOT / path).exists()}
    assert missing == set()


def _regions(text: str) -> list:
    document = Document(text, str(ROOT / "docs" / "page.md"))
    return list(_blocks.BlockParser()(document))


def test_a_block_in_an_unknown_language_fails_the_page() -> None:
    """A fenced block that is neither run nor data is refused when the page is parsed."""
    with pytest.raises(ValueError, match="'ruby' block is neither run nor data"):
        _regions("# page\n\n```ruby\nputs 1\n```\n")


def test_a_block_without_a_language_fails_the_page() -> None:
    """An unlabelled fenced block is refused too: every block says what it is."""
    with pytest.raises(ValueError, match="neither run nor data"):
        _regions("# page\n\n```\nsomething\n```\n")


def test_console_output_with_wildcards_matches_only_what_it_says() -> None:
    """``...`` lines and ``...`` in a line are wildcards; other text must be equal."""
    assert _blocks.matches(["a ... c", "...", "end"], ["a b c", "x", "y", "end"])
    assert not _blocks.matches(["a ... c"], ["a b d"])
    assert not _blocks.matches(["hello"], ["hello", "extra"])


def test_serving_commands_are_recognised_by_the_busapp_subcommand() -> None:
    """busapp run and busapp storage (any path to busapp) serve; other commands do not."""
    assert _blocks.is_serving(".venv/bin/busapp run examples/simpleservice.py:app -w 3")
    assert _blocks.is_serving("busapp storage --store memory://")
    assert not _blocks.is_serving("busapp call simple.add 1 2")
    assert not _blocks.is_serving("echo busapp run")
