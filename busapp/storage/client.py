"""StorageClient: read and write models through the storage service, and hear of changes.

Works over any bus object with ``call`` (a :class:`~busapp.bus.Client`, a
:class:`~busapp.service.CommissaireService`, or the ``bus`` injected in an App
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
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from busapp.errors import RemoteProcedureCallError
from busapp.models import Cluster, Host, ListModel, Model, Network, ValidationError, list_model_for
from busapp.storage.events import binding_key, decode_event

log = structlog.get_logger("busapp.storage.client")

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
            raise TypeError(f"{self.__name__} takes (body, message) from the bus")
        *head, body, message = args
        event, model = decode_event(body)
        return self.func(*head, event, model, message)


def get_uniform_model_type(models: Sequence[Model]) -> type[Model]:
    """The one model class of ``models``; TypeError if they mix classes or are not models."""
    classes = {type(m) for m in models}
    if len(classes) != 1 or not issubclass(next(iter(classes)), Model):
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
        except RemoteProcedureCallError as exc:
            log.warning(f'{type(self.bus).__name__}: Unable to {op} {cls.__name__} "{what}": {exc}')
            raise

    # -- one model -------------------------------------------------------------

    def get(self, model: Model) -> Any:
        """The stored record with ``model``'s primary key (StorageLookupError if none)."""
        cls = type(model)
        result = self._call("get", cls, model.primary_key, model_json_data=model.to_dict())
        return cls.from_dict(result)

    def save(self, model: Model) -> Any:
        """Validate, store, and return the record as stored."""
        cls = type(model)
        self._validated(model)
        result = self._call("save", cls, model.primary_key, model_json_data=model.to_dict())
        return cls.from_dict(result)

    def delete(self, model: Model) -> None:
        """Remove the record with ``model``'s primary key (StorageLookupError if none)."""
        self._call("delete", type(model), model.primary_key, model_json_data=model.to_dict())

    # -- many models of one class ----------------------------------------------

    def get_many(self, models: Sequence[Model]) -> list[Any]:
        """``get`` for each model, in one call."""
        if not models:
            return []
        cls = get_uniform_model_type(models)
        result = self._call("get", cls, _keys(models), model_json_data=[m.to_dict() for m in models])
        return [cls.from_dict(item) for item in result]

    def save_many(self, models: Sequence[Model]) -> list[Any]:
        """``save`` for each model, in one call (all are validated before any is sent)."""
        if not models:
            return []
        cls = get_uniform_model_type(models)
        for model in models:
            self._validated(model)
        result = self._call("save", cls, _keys(models), model_json_data=[m.to_dict() for m in models])
        return [cls.from_dict(item) for item in result]

    def delete_many(self, models: Sequence[Model]) -> None:
        """``delete`` for each model, in one call."""
        if models:
            cls = get_uniform_model_type(models)
            self._call("delete", cls, _keys(models), model_json_data=[m.to_dict() for m in models])

    def list(self, model_class: type[Model]) -> Any:
        """Every stored record of a type.

        ``list(Hosts)`` returns a ``Hosts`` (records in ``.hosts``), as
        Commissaire's did; ``list(Host)`` returns a plain ``list[Host]``.
        """
        if not (isinstance(model_class, type) and issubclass(model_class, Model)):
            raise TypeError(f"list() takes a model class such as Host or Hosts, got {model_class!r}")
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
