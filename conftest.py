"""Collects the code blocks of README.md and docs/ as tests: see docs/_blocks.py."""

from docs._blocks import sybil

pytest_collect_file = sybil.pytest()
