"""busapp's version (one home: the package, its status answers and its metadata read it)."""

__version__ = "0.1.0"
