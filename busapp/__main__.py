"""``python -m busapp``: the busapp command line."""

from __future__ import annotations

from busapp.cli.main import main

if __name__ == "__main__":
    main()
