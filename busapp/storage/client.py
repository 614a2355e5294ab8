"""StorageClient: read and write models through the storage service, and hear of changes.

Works over any bus object with ``call`` (a :class:`~busapp.client.sync.Client`, a
:class:`~busapp.runtime.service.CommissaireService`, or the ``bus`` injected in an App
handler). ``register_callback`` also needs ``subscribe``, which only a
CommissaireService has::

    class MyService(CommissaireService):
        def __init__(self, exchange_name, connection_url, qkwargs=None):
            super().__init__(exchange_name, connection_url, qkwargs)
            self.storage = StorageClient(self)
            self.storage.register_callback(self.host_created_cb, Host, NOTIFY_EVENT_CREATED)

        @NotifyCallback
        def host_created_cb(self, event, model, message):
            ...

Plain saves are last-writer-wins. To change a record that others may be
changing too (read-modify-write), read its version and save with it: the save
fails with :class:`~busapp.errors.Conflict` if someone saved in between::

    host, version = storage.get_versioned(Host.new(address="10.0.0.1"))
    host.cpus += 1
    storage.save(host, expect_version=version)   # Conflict: get it again and retry

or let :meth:`StorageClient.update` run that loop::

    storage.update(Host.new(address="10.0.0.1"), lambda h: attrs.evolve(h, cpus=h.cpus + 1))
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from busapp.errors import Conflict, RemoteProcedureCallError
from busapp.log import get_logger
from busapp.models import Cluster, Host, ListModel, Model, Network, ValidationError, list_model_for
from busapp.storage.events import binding_key, decode_event

log = get_logger("busapp.storage.client")

NOTIFY_EVENT_ANY = None
NOTIFY_EVENT_CREATED = "created"
NOTIFY_EVENT_DELETED = "deleted"
NOTIFY_EVENT_UPDATED = "updated"

#: Name of the storage service (its routing keys are ``storage.<method>``).
STORAGE_SERVICE = "storage"


class NotifyCallback:
    """Decorate ``f(self, event, model, message)`` to receive raw storage notifications.

    The decorated callable takes what the bus delivers, ``(body, message)``,
    decodes the event and calls ``f`` with the event name and the model instance.
    """

    def __init__(self, func: Callable[..., Any]) -> None:
        self.func = func
        functools.update_wrapper(self, func)

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        return self if obj is None else types.MethodType(self, obj)

    def __call__(self, *args: Any) -> Any:
        if len(args) < 2:
            raise TypeError(f"{self.func.__name__} takes (body, message) from the bus")
        *head, body, message = args
        event, model = decode_event(body)
        return self.func(*head, event, model, message)


def _model_class_of(model: Any, op: str) -> type[Model]:
    """``type(model)``; a TypeError that says how to get a model when ``model`` is not one."""
    if isinstance(model, Model):
        return type(model)
    kind = "a dict" if isinstance(model, Mapping) else f"a {type(model).__name__}"
    raise TypeError(
        f"storage.{op}() takes a model instance such as Host.new(address=...), got {kind}. "
        f"In a bus handler, annotate the parameter with its model class "
        f"(def on_do_something(self, message, host: Host)) so it arrives as a Host, "
        f"or build one with Host.from_dict(data)")


def get_uniform_model_type(models: Sequence[Model], op: str = "save_many") -> type[Model]:
    """The one model class of ``models``; TypeError if they mix classes or are not models."""
    for model in models:
        _model_class_of(model, op)
    classes = {type(m) for m in models}
    if len(classes) != 1:
        names = ", ".join(sorted(c.__name__ for c in classes)) or "nothing"
        raise TypeError(f"models must all be of one Model class; got {names}")
    return classes.pop()


class StorageClient:
    """Model instances in and out of the storage service.

    Args:
        bus: anything with ``call(routing_key, *args, timeout=None, **kwargs)``.
        service: the storage service's name (routing keys ``<service>.<method>``).
        timeout: seconds each call waits (None: the bus's default).
    """

    def __init__(self, bus: Any, *, service: str = STORAGE_SERVICE, timeout: float | None = None):
        self.bus = bus
        self.service = service
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"<StorageClient service={self.service!r} bus={self.bus!r}>"

    def _call(self, op: str, cls: type[Model], what: Any, **params: Any) -> Any:
        try:
            return self.bus.call(f"{self.service}.{op}", model_type_name=cls.__name__,
                                 timeout=self.timeout, **params)
        except Conflict as exc:  # expected under contention: the caller retries, not a failure
            log.debug(f"{type(self.bus).__name__}: {op} {cls.__name__} \"{what}\" "
                      f"lost a race: {exc}")
            raise
        except RemoteProcedureCallError as exc:
            log.warning(f'{type(self.bus).__name__}: Unable to {op} {cls.__name__} "{what}": {exc}')
            raise

    # -- one model -------------------------------------------------------------

    def get(self, model: Model) -> Any:
        """The stored record with ``model``'s primary key (StorageLookupError if none)."""
        cls = _model_class_of(model, "get")
        result = self._call("get", cls, model.primary_key, model_json_data=model.to_dict())
        return cls.from_dict(result)

    def get_versioned(self, model: Model) -> tuple[Any, int]:
        """``(record, version)`` for ``model``'s primary key, to save back with ``expect_version``.

        A record is at version 1 when created and one more on every save
        that changes it. StorageLookupError if there is no record.
        """
        cls = _model_class_of(model, "get_versioned")
        result = self._call("get_versioned", cls, model.primary_key,
                            model_json_data=model.to_dict())
        return cls.from_dict(result["model"]), result["version"]

    def save(self, model: Model, *, expect_version: int | None = None) -> Any:
        """Validate, store, and return the record as stored.

        Args:
            model: the model instance to store.
            expect_version: store only if the stored record is still at this
                version (from :meth:`get_versioned`; 0: only if there is no
                record yet). None (the default): the last writer wins.

        Raises:
            Conflict: ``expect_version`` is not the stored version; someone
                else saved first. Get the record again and redo the change.
        """
        cls = _model_class_of(model, "save")
        self._validated(model)
        params: dict[str, Any] = {"model_json_data": model.to_dict()}
        if expect_version is not None:  # Commissaire's storage service knows no such param
            params["expect_version"] = expect_version
        result = self._call("save", cls, model.primary_key, **params)
        return cls.from_dict(result)

    def update(self, model: Model, change: Callable[[Any], Any], *, attempts: int = 100) -> Any:
        """Read-modify-write without losing concurrent updates; returns the record as saved.

        Gets the record with ``model``'s primary key, saves ``change(record)``
        with the version read, and starts again from the read when another
        writer got in first. ``change`` may modify the record in place (then
        return None) or return a new instance; it may run several times.

        Raises:
            Conflict: still losing the race after ``attempts`` tries.
            StorageLookupError: there is no such record.
        """
        if attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {attempts}")
        for attempt in range(1, attempts + 1):
            record, version = self.get_versioned(model)
            changed = change(record)
            try:
                return self.save(record if changed is None else changed, expect_version=version)
            except Conflict:
                if attempt == attempts:
                    raise
        raise AssertionError("unreachable")

    def delete(self, model: Model) -> None:
        """Remove the record with ``model``'s primary key (StorageLookupError if none)."""
        self._call("delete", _model_class_of(model, "delete"), model.primary_key,
                   model_json_data=model.to_dict())

    # -- many models of one class ----------------------------------------------

    def get_many(self, models: Sequence[Model]) -> list[Any]:
        """``get`` for each model, in one call."""
        if not models:
            return []
        cls = get_uniform_model_type(models, "get_many")
        result = self._call("get", cls, _keys(models),
                            model_json_data=[m.to_dict() for m in models])
        return [cls.from_dict(item) for item in result]

    def save_many(self, models: Sequence[Model]) -> list[Any]:
        """``save`` for each model, in one call (all are validated before any is sent)."""
        if not models:
            return []
        cls = get_uniform_model_type(models)
        for model in models:
            self._validated(model)
        result = self._call("save", cls, _keys(models),
                            model_json_data=[m.to_dict() for m in models])
        return [cls.from_dict(item) for item in result]

    def delete_many(self, models: Sequence[Model]) -> None:
        """``delete`` for each model, in one call."""
        if models:
            cls = get_uniform_model_type(models, "delete_many")
            self._call("delete", cls, _keys(models), model_json_data=[m.to_dict() for m in models])

    def list(self, model_class: type[Model]) -> Any:
        """Every stored record of a type.

        ``list(Hosts)`` returns a ``Hosts`` (records in ``.hosts``), as
        Commissaire's did; ``list(Host)`` returns a plain ``list[Host]``.
        """
        if not (isinstance(model_class, type) and issubclass(model_class, Model)):
            raise TypeError("list() takes a model class such as Host or Hosts, "
                            f"got {model_class!r}")
        list_cls: type[ListModel] | None
        if issubclass(model_class, ListModel):
            list_cls, item_cls = model_class, model_class._list_class
        else:
            list_cls, item_cls = list_model_for(model_class), model_class
        try:
            items = [item_cls.from_dict(d) for d in self._call("list", list_cls or item_cls, "*")]
        except ValidationError as exc:
            log.warning(f'{type(self.bus).__name__}: Unable to list {model_class.__name__}: {exc}')
            raise
        if issubclass(model_class, ListModel):
            return model_class.new(**{model_class._list_attr: items})
        return items

    # -- Commissaire's shorthands ----------------------------------------------

    def get_host(self, address: str) -> Host:
        """``get(Host.new(address=address))``."""
        return self.get(Host.new(address=address))

    def get_cluster(self, name: str) -> Cluster:
        """``get(Cluster.new(name=name))``."""
        return self.get(Cluster.new(name=name))

    def get_network(self, name: str) -> Network:
        """``get(Network.new(name=name))``."""
        return self.get(Network.new(name=name))

    # -- notifications ---------------------------------------------------------

    def register_callback(self, callback: Callable[..., Any], model_type: type[Model] | None = None,
                          event: str | None = NOTIFY_EVENT_ANY) -> None:
        """Have ``callback(body, message)`` run on storage events of ``model_type`` and ``event``.

        Decorate it with :class:`NotifyCallback` to receive ``(event, model, message)``.
        Each event reaches one worker of the service: the queue is named after the
        service, the subscription and the callback, and shared by its workers.
        """
        subscribe = getattr(self.bus, "subscribe", None)
        if subscribe is None:
            raise TypeError(
                f"register_callback needs a bus that can subscribe (a CommissaireService), not "
                f"{type(self.bus).__name__}; in an App use @app.on_storage_event(Model, event)")
        event = None if event == "*" else event
        key = binding_key(model_type, event)  # validates event
        name = getattr(callback, "__name__", type(callback).__name__)
        model_name = model_type.__name__ if model_type is not None else "any"
        queue = f"{self.bus.service_name}.notify.{model_name}.{event or 'any'}.{name}"
        subscribe(key, callback, queue_name=queue)

    @staticmethod
    def _validated(model: Model) -> None:
        try:
            model.validate(for_save=True)
        except ValidationError as exc:
            log.warning(f'StorageClient: Unable to save {type(model).__name__} '
                        f'"{model.primary_key}": {exc}')
            raise


def _keys(models: Sequence[Model]) -> str:
    return ", ".join(str(m.primary_key) for m in models)
