"""Collects the code blocks of README.md and docs/ as tests: see docs/_blocks.py."""

try:
    from docs._blocks import finish_stopping, sybil
except ModuleNotFoundError as exc:  # a venv made before sybil joined the test extra
    raise ImportError(f"{exc}; install the test extra again: pip install -e '.[test]'") from exc

pytest_collect_file = sybil.pytest()


def pytest_sessionfinish() -> None:
    """Let the services the pages started finish stopping before pytest exits."""
    finish_stopping()
