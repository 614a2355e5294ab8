"""Collects the code blocks of README.md and docs/ as tests: see docs/_blocks.py."""

from docs._blocks import finish_stopping, sybil

pytest_collect_file = sybil.pytest()


def pytest_sessionfinish() -> None:
    """Let the services the pages started finish stopping before pytest exits."""
    finish_stopping()
