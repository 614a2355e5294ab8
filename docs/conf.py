"""Sphinx configuration of busapp's documentation (built by ``.ci/run`` with -W).

Why Sphinx + furo + MyST rather than mkdocs-material + mkdocstrings: MkDocs itself has had
no release since 1.6.1 (August 2024), and both mkdocs-material and mkdocstrings announced
maintenance mode in November 2025 (their authors moved to Zensical), while Sphinx (9.0.4,
December 2025), furo (2025.12.19) and myst-parser (5.x, 2026, Sphinx 9 support) are
released and maintained; attrs and structlog, whose docs busapp's follow, use the same
three. MyST keeps the pages in Markdown, autodoc reads the docstrings busapp already writes
(Google style, through napoleon), and sphinx-click documents every CLI command from click
itself. Every code block of these pages runs as a test: see ``docs/_blocks.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))

import busapp  # noqa: E402

project = "busapp"
author = "the busapp authors"
copyright = "2026, the busapp authors"
release = version = busapp.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx_click",
    "busapp_envvars",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["README.md", "_build"]

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False

html_theme = "furo"
html_title = f"busapp {release}"
