"""Find what ``busapp run MODULE[:APP]`` should serve: an App or a CommissaireService class.

``MODULE`` is a dotted module name or a file path; ``APP`` (after the first
``:``) names an attribute: an :class:`~busapp.core.app.App`, a
:class:`~busapp.runtime.service.CommissaireService` subclass, or a factory function
returning an App. Every failure raises :class:`click.UsageError` (exit 2)
saying what was wrong and what to do; the three lookup failures (no such
module, an ImportError raised inside it, no App in it) read differently.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

import attrs
import click

from busapp.app import App
from busapp.runtime.service import CommissaireService


@attrs.define
class Target:
    """What to serve: an App, or a CommissaireService subclass (``app`` is None then)."""

    spec: str
    module: ModuleType
    app: App | None
    service_class: type[CommissaireService]
    #: Directory whose .py files ``--reload`` watches.
    root: Path

    @property
    def label(self) -> str:
        return self.app.name if self.app is not None else self.service_class.__name__


def load_target(spec: str) -> Target:
    """Import ``MODULE[:APP]`` and return what it names.

    Raises:
        click.UsageError: the module is missing or fails to import, or holds no App, or
            several (then pick one with ``:APP``).
    """
    module, attr, root = _load(spec)
    return _target(spec, _find(module, attr), module, root)


def load_targets(spec: str) -> list[Target]:
    """What ``busapp run MODULE[:APP]`` serves: what ``:APP`` names, else every App of the
    module (in the order they were defined), else its one service class.

    Raises:
        click.UsageError: as :func:`load_target`.
    """
    module, attr, root = _load(spec)
    apps = list({id(a): (n, a) for n, a in vars(module).items() if isinstance(a, App)}.values())
    if attr is not None or len(apps) < 2:
        return [_target(spec, _find(module, attr), module, root)]
    module_part = spec.partition(":")[0]
    return [_target(f"{module_part}:{name}", app, module, root) for name, app in apps]


def _load(spec: str) -> tuple[ModuleType, str | None, Path]:
    """The module ``spec`` names, its ``:APP`` part (None if left out), the watch root."""
    module_part, _, attr = spec.partition(":")
    if not module_part:
        raise click.UsageError(f"{spec!r} names no module; use MODULE[:APP], "
                               "e.g. examples/simpleservice.py:app")
    name, root = _prepare_import(module_part)
    return _import(name, module_part), attr.strip() or None, root


def _target(spec: str, obj: Any, module: ModuleType, root: Path) -> Target:
    if isinstance(obj, App):
        return Target(spec, module, obj, obj.service_class, root)
    return Target(spec, module, None, obj, root)


def import_module(spec: str) -> ModuleType:
    """Import the dotted module (or file path) ``spec`` as ``busapp run`` does: the current
    directory is searched too.

    Raises:
        click.UsageError: the module is missing (one line) or raised while importing (its
            traceback is printed first).
    """
    name, _ = _prepare_import(spec)
    return _import(name, spec)


def _is_path(text: str) -> bool:
    return text.endswith(".py") or os.sep in text or "/" in text or os.path.exists(text)


def _prepare_import(module_part: str) -> tuple[str, Path]:
    """Put the right directory on ``sys.path``; return the dotted name to import and the
    watch root."""
    if not _is_path(module_part):
        cwd = os.getcwd()
        if cwd not in sys.path and "" not in sys.path:
            sys.path.insert(0, cwd)
        return module_part, Path(cwd)
    path = Path(module_part).resolve()
    if path.is_dir():
        path = path / "__init__.py"
    if not path.exists():
        raise click.UsageError(
            f"no module file {module_part!r} (looked for {path}); check the path, "
            "or give a dotted module name importable from here"
        )
    parts = [] if path.name == "__init__.py" else [path.stem]
    directory = path.parent
    # a file inside a package: import it as package.module
    while (directory / "__init__.py").exists():
        parts.insert(0, directory.name)
        directory = directory.parent
    if str(directory) not in sys.path:
        sys.path.insert(0, str(directory))
    return ".".join(parts), directory


def _import(name: str, shown: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
            raise click.UsageError(
                f"could not import {shown!r}: there is no module {exc.name!r}; "
                "check the spelling, run busapp from the project's directory, or give a file path "
                "(e.g. examples/simpleservice.py)"
            ) from None
        raise _raised_inside(shown, exc) from None
    except Exception as exc:  # noqa: BLE001 - any error in the user's module is a usage error
        raise _raised_inside(shown, exc) from None


def _raised_inside(shown: str, exc: BaseException) -> click.UsageError:
    click.echo(traceback.format_exc(), err=True, nl=False)
    what = "an ImportError" if isinstance(exc, ImportError) else f"a {type(exc).__name__}"
    hint = ("install the missing package or fix the import" if isinstance(exc, ImportError)
            else "fix the error")
    return click.UsageError(
        f"module {shown!r} was found, but {what} was raised while importing it: {exc} "
        f"(traceback above); {hint}"
    )


def _find(module: ModuleType, attr: str | None) -> Any:
    if attr is not None:
        return _by_name(module, attr)
    candidate = getattr(module, "app", None)
    if isinstance(candidate, App):
        return candidate
    apps = {k: v for k, v in vars(module).items() if isinstance(v, App)}
    if len(apps) == 1:
        return next(iter(apps.values()))
    if len(apps) > 1:
        names = ", ".join(sorted(apps))
        raise click.UsageError(f"module {module.__name__!r} has several Apps ({names}); "
                               f"pick one with {module.__name__}:NAME")
    services = _service_classes(module)
    if len(services) == 1:
        return services[0]
    found = f" (service classes: {', '.join(c.__name__ for c in services)})" if services else ""
    raise click.UsageError(
        f"no App found in module {module.__name__!r}{found}; define app = App('name') in it, "
        f"or name one with {module.__name__}:NAME"
    )


def _by_name(module: ModuleType, attr: str) -> Any:
    if not attr.isidentifier():
        raise click.UsageError(f"{attr!r} is not an attribute name; use MODULE:NAME, "
                               "e.g. mymodule:app")
    if not hasattr(module, attr):
        known = sorted(k for k, v in vars(module).items()
                       if isinstance(v, App) or _is_service_class(v))
        raise click.UsageError(
            f"no App named {attr!r} in module {module.__name__!r}; "
            f"found: {', '.join(known) or 'no App or service class'}"
        )
    obj = getattr(module, attr)
    if isinstance(obj, App) or _is_service_class(obj):
        return obj
    if callable(obj) and not inspect.isclass(obj):  # an app factory: create_app()
        made = obj()
        if isinstance(made, App):
            return made
    raise click.UsageError(
        f"{module.__name__}:{attr} is a {type(obj).__name__}, not an App or CommissaireService "
        "subclass; point at the App object (app = App('name'))"
    )


def _is_service_class(obj: Any) -> bool:
    return (inspect.isclass(obj) and issubclass(obj, CommissaireService)
            and not obj.__dict__.get("_busapp_framework"))


def _service_classes(module: ModuleType) -> list[type]:
    return [v for v in vars(module).values()
            if _is_service_class(v) and v.__module__ == module.__name__]
