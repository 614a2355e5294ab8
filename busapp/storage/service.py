"""The storage service: an :class:`~busapp.App` named ``storage`` over a backend chosen by URL.

Bus methods (routing keys ``storage.<method>``), with Commissaire's params:

- ``save(model_type_name, model_json_data, expect_version=None)``: store one
  model (a JSON object) or several (an array); returns what was stored. With
  ``expect_version`` (one model only) the save is a compare-and-set: it writes
  only if the stored record is still at that version (0: there is none yet),
  else error -20002 (Conflict). Without it, the last writer wins.
- ``get(model_type_name, model_json_data)``: the stored record(s) with those
  primary keys; a missing one is error -20000 (StorageLookupError).
- ``get_versioned(model_type_name, model_json_data)``: as ``get``, each
  record as ``{"model": {...}, "version": N}``. A record is at version 1 when
  created and one more on every save that changes it.
- ``delete(model_type_name, model_json_data)``: remove them; returns null.
- ``list(model_type_name)``: every record of ``Hosts`` (or ``Host``): a JSON array.
- ``list_store_handlers()``: the backend in use, in Commissaire's shape.

With a keyring (``make_app(keyring=...)``, ``busapp storage --keyring FILE``) every
call must be signed (:mod:`busapp.security`), and ``allow`` limits model types to
key ids: ``make_app(allow={"HostCreds": {"investigator", "ops"}})`` (``busapp storage
--allow HostCreds=investigator,ops``) lets only those keys read or write ``HostCreds``
(``allow_read`` adds readers only); any other key gets -32002 (Forbidden). Types not
listed are open to every key of the keyring.

Invalid data or an unknown type is error -32602 naming the field. After each
write is committed, the service publishes ``notify.storage.<Class>.<event>``
through the injected ``bus`` (``created``, ``updated`` or ``deleted``); a save
that changes nothing publishes nothing, so a handler that saves on ``updated``
cannot loop forever.

Run it with ``busapp storage --store URL`` or ``make_app(url).run(broker)``.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Iterable, Mapping
from typing import Any

import structlog

from busapp import config
from busapp.app import App
from busapp.errors import Forbidden, InternalError, InvalidParams, StorageLookupError
from busapp.models import (
    ListModel,
    Model,
    UnknownModelError,
    ValidationError,
    get_model_class,
    model_names,
)
from busapp.storage.backends import UNCHANGED, Backend, open_backend, resolve_store_url
from busapp.storage.events import encode_event, routing_key

log = structlog.get_logger("busapp.storage")

class Store:
    """The backend of one storage App, opened on first use (in each worker process)."""

    def __init__(self, url: str | None = None) -> None:
        self._url = url
        self._backend: Backend | None = None
        self._lock = threading.Lock()

    @property
    def backend(self) -> Backend:
        with self._lock:
            if self._backend is None:
                self._backend = open_backend(resolve_store_url(self._url))
            return self._backend

    def close(self) -> None:
        """Close the backend's connections (it reopens on next use)."""
        if self._backend is not None:
            self._backend.close()


def _model_class(model_type_name: str) -> type[Model]:
    try:
        return get_model_class(model_type_name)
    except UnknownModelError as exc:
        raise InvalidParams(str(exc), data={"param": "model_type_name",
                                            "known": model_names()}) from None


def _storable(model_type_name: str) -> type[Model]:
    cls = _model_class(model_type_name)
    if issubclass(cls, ListModel):
        raise InvalidParams(
            f"{model_type_name} is a list model; send model_type_name "
            f"{cls._list_class.__name__!r} with an array of records",
            data={"param": "model_type_name"})
    if cls._primary_key is None:
        raise InvalidParams(f"{model_type_name} has no primary key, so it cannot be stored",
                            data={"param": "model_type_name"})
    return cls


def _parse(model_type_name: str, model_json_data: Any, *, for_save: bool = False,
           ) -> tuple[type[Model], list[Model], bool]:
    """``(class, models, was_a_list)``; every item is built before anything is written."""
    cls = _storable(model_type_name)
    many = isinstance(model_json_data, list)
    items = model_json_data if many else [model_json_data]
    models = []
    for index, item in enumerate(items):
        try:
            model = cls.from_dict(item)
            if for_save:
                model.validate(for_save=True)
        except ValidationError as exc:
            where = f"model_json_data[{index}]" if many else "model_json_data"
            raise InvalidParams(
                f"invalid {model_type_name} in {where}: {exc}",
                data={"param": "model_json_data", "model_type_name": model_type_name,
                      "field": exc.field, "rule": exc.rule, "index": index if many else None},
            ) from None
        models.append(model)
    return cls, models, many


def _stored(cls: type[Model], record: dict[str, Any]) -> Model:
    try:
        return cls.from_dict(record)
    except ValidationError as exc:
        raise InternalError(f"a stored {cls.__name__} no longer fits the model: {exc}; "
                            f"migrate the record or relax the model",
                            data={"record": record}) from None


def _not_found(cls: type[Model], missing: list[Model], data: Any) -> StorageLookupError:
    keys = ", ".join(repr(m.primary_key) for m in missing)
    return StorageLookupError(
        f"no {cls.__name__} with {cls._primary_key} {keys} in storage",
        data={"model_type_name": cls.__name__, "model_json_data": data})


def _lookup(backend: Backend, model_type_name: str, model_json_data: Any,
            ) -> tuple[type[Model], list[tuple[dict[str, Any], int]], bool]:
    """``(class, [(record, version)...], was_a_list)``; StorageLookupError names any missing key."""
    cls, models, many = _parse(model_type_name, model_json_data)
    found = [backend.get_versioned(cls.__name__, m.primary_key) for m in models]
    missing = [m for m, f in zip(models, found, strict=True) if f is None]
    if missing:
        raise _not_found(cls, missing, model_json_data)
    return cls, [f for f in found if f is not None], many


def _check_expect_version(expect_version: int | None, many: bool) -> None:
    if expect_version is None:
        return
    if many:
        raise InvalidParams("expect_version applies to one model: send model_json_data as one "
                            "JSON object, or save the list without expect_version",
                            data={"param": "expect_version"})
    if expect_version < 0:
        raise InvalidParams(f"expect_version must be >= 0 (0: the record must not exist yet), "
                            f"got {expect_version}", data={"param": "expect_version"})


def _publish(bus: Any, event: str, model: Model) -> None:
    try:
        bus.publish(routing_key(model, event), encode_event(event, model), persistent=True)
    except Exception as exc:  # noqa: BLE001 - the write stands; say loudly that no event went out
        log.error("storage event not published; subscribers miss this change",
                  change=event, model=type(model).__name__, key=model.primary_key, exc_info=exc)


class Access:
    """Which key ids may read and write which model types (only with a keyring)."""

    def __init__(self, keyring: Any, allow: Mapping[str, Iterable[str]] | None,
                 allow_read: Mapping[str, Iterable[str]] | None) -> None:
        if (allow or allow_read) and keyring is None:
            raise ValueError("allow/allow_read limit key ids, so the storage service needs a "
                             "keyring (--keyring FILE or $BUSAPP_KEYRING)")
        self.writers = self._table(keyring, allow)
        self.readers = {name: ids | self.writers.get(name, frozenset())
                        for name, ids in self._table(keyring, allow_read).items()}
        for name, ids in self.writers.items():
            self.readers.setdefault(name, ids)

    @staticmethod
    def _table(keyring: Any,
               rules: Mapping[str, Iterable[str]] | None) -> dict[str, frozenset[str]]:
        table = {}
        for type_name, ids in (rules or {}).items():
            cls = _model_class(type_name)
            if issubclass(cls, ListModel):
                cls = cls._list_class
            table[cls.__name__] = keyring.check_allow(ids, f"storage allow {type_name!r}")
        return table

    def check(self, message: Any, cls: type[Model], *, write: bool) -> None:
        """Raise Forbidden if the caller's key may not read (or write) ``cls``."""
        allowed = (self.writers if write else self.readers).get(cls.__name__)
        caller = getattr(message, "caller", None)
        if allowed is not None and caller not in allowed:
            access = "write" if write else "read"
            raise Forbidden(f"key {caller!r} may not {access} {cls.__name__}",
                            data={"key": caller, "model_type_name": cls.__name__,
                                  "access": access})


def import_models(modules: Iterable[str] | None = None) -> None:
    """Import the modules declaring your own models (default: ``$BUSAPP_STORAGE_MODELS``).

    The storage service stores only the model types it knows: the built-ins,
    and those declared in these modules (a comma-separated list in the variable).
    """
    if modules is None:
        modules = config.get("storage_models")
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            where = config.env_name("storage_models")
            raise ImportError(f"cannot import model module {module!r} for the storage service: "
                              f"{exc}; check ${where} or the models argument") from exc


def make_app(store_url: str | None = None, *, name: str = "storage",
             models: Iterable[str] | None = None,
             allow: Mapping[str, Iterable[str]] | None = None,
             allow_read: Mapping[str, Iterable[str]] | None = None, **app_kwargs: Any) -> App:
    """A storage service App on ``store_url`` (default ``$BUSAPP_STORE_URL``, else SQLite).

    ``models`` names modules declaring your own models (see :func:`import_models`).
    ``allow``/``allow_read``: ``{model type: key ids}`` that may read and write / only read
    it (needs ``keyring=``; see the module docstring).
    ``name`` and ``app_kwargs`` (``exchange``, ``queue``, ``keyring``...) go to
    :class:`~busapp.App`.
    Nothing is opened until the first call, in the worker process that serves it.
    """
    import_models(models)
    app_kwargs.setdefault("max_body", 16 * 1024 * 1024)  # records of a few MB must fit
    app = App(name, **app_kwargs)
    store = app.store = Store(store_url)  # type: ignore[attr-defined]
    access = app.access = Access(app.keyring, allow, allow_read)  # type: ignore[attr-defined]

    @app.method()
    def save(model_type_name: str, model_json_data: Any, bus: Any, message: Any,
             expect_version: int | None = None) -> Any:
        """Store one model or a list; returns what was stored (Conflict if ``expect_version``
        is stale)."""
        access.check(message, _storable(model_type_name), write=True)
        cls, models, many = _parse(model_type_name, model_json_data, for_save=True)
        _check_expect_version(expect_version, many)
        backend = store.backend
        for model in models:
            outcome = backend.save(cls.__name__, model.primary_key, model.to_dict(),
                                   expect_version=expect_version)
            if outcome != UNCHANGED:
                _publish(bus, outcome, model)
        result = [m.to_dict() for m in models]
        return result if many else result[0]

    @app.method()
    def get(model_type_name: str, model_json_data: Any, message: Any) -> Any:
        """The stored records with the given primary keys (StorageLookupError if one is missing)."""
        access.check(message, _storable(model_type_name), write=False)
        cls, found, many = _lookup(store.backend, model_type_name, model_json_data)
        result = [_stored(cls, record).to_dict() for record, _ in found]
        return result if many else result[0]

    @app.method()
    def get_versioned(model_type_name: str, model_json_data: Any, message: Any) -> Any:
        """As ``get``, each record as ``{"model": {...}, "version": N}``."""
        access.check(message, _storable(model_type_name), write=False)
        cls, found, many = _lookup(store.backend, model_type_name, model_json_data)
        result = [{"model": _stored(cls, record).to_dict(), "version": version}
                  for record, version in found]
        return result if many else result[0]

    @app.method()
    def delete(model_type_name: str, model_json_data: Any, bus: Any, message: Any) -> None:
        """Remove the records with the given primary keys (StorageLookupError names any missing)."""
        access.check(message, _storable(model_type_name), write=True)
        cls, models, _ = _parse(model_type_name, model_json_data)
        backend = store.backend
        missing = []
        for model in models:
            record = backend.delete(cls.__name__, model.primary_key)
            if record is None:
                missing.append(model)
                continue
            try:
                gone = cls.from_dict(record)
            except ValidationError:
                gone = model
            _publish(bus, "deleted", gone)
        if missing:
            raise _not_found(cls, missing, model_json_data)

    @app.method("list")
    def list_(model_type_name: str, message: Any) -> list[Any]:
        """Every record of a type: ``Hosts`` (as Commissaire sent it) or ``Host``; ``[]`` if
        none."""
        cls = _model_class(model_type_name)
        item_cls = cls._list_class if issubclass(cls, ListModel) else _storable(model_type_name)
        access.check(message, item_cls, write=False)
        return [_stored(item_cls, r).to_dict() for r in store.backend.list(item_cls.__name__)]

    @app.method()
    def list_store_handlers() -> list[dict[str, Any]]:
        """The backend in use, as Commissaire's storage service described its handlers."""
        backend = store.backend
        storable = [n for n in model_names()
                    if not issubclass(get_model_class(n), ListModel)
                    and get_model_class(n)._primary_key is not None]
        return [{"handler_type": backend.handler_type, "config": backend.describe(),
                 "model_types": storable}]

    return app


def __getattr__(name: str) -> Any:
    """``app``: the storage service on ``$BUSAPP_STORE_URL`` (else
    ``./.busapp/storage.sqlite3``), made on first use, so importing this module imports no
    model module of ``$BUSAPP_STORAGE_MODELS`` (``busapp storage`` finds them first)."""
    if name == "app":
        made = globals()["app"] = make_app()
        return made
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
