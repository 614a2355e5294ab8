"""``busapp routes --format json|openrpc``: a service's methods as data, and as OpenRPC 1.3.

OpenRPC is the schema standard made for JSON-RPC. The document lists each method
with its params and result as JSON Schema (draft 7, which OpenRPC 1.3 uses), built
from the handler's type hints: ``int``, ``float``, ``str``, ``bool``, ``None``,
``list[X]``, ``set[X]``, ``dict[str, X]``, ``tuple[...]``, unions and ``Optional[X]``,
``Literal``, enums, dates and times, UUID, Decimal, bytes, and attrs classes (busapp
models among them) as schema components referenced by ``$ref``; parameter defaults
become ``default``. Every method lists the error codes of the wire contract. No I/O.

Each schema says what :mod:`busapp.core.convert` accepts and returns for that type
(a test generates values from every schema of a wide App and round-trips them).

No library is used for the mapping: the ones that generate JSON Schema from type
hints know dataclasses or their own models, not attrs classes, and this one follows
busapp's converter (strict JSON scalars, list models as arrays).
"""

from __future__ import annotations

import collections.abc
import datetime
import decimal
import enum
import inspect
import json
import pathlib
import typing
import uuid
from typing import Any

import attrs

from busapp import errors
from busapp._version import __version__
from busapp.core.app import App
from busapp.core.convert import is_union

#: attrs.Factory is a class at run time (typed as an overloaded function).
_FACTORY: type = attrs.Factory  # type: ignore[assignment]

#: The OpenRPC version of the documents made here.
OPENRPC_VERSION = "1.3.2"

#: The error codes of the wire, as OpenRPC error components: read from the error classes.
ERRORS: dict[str, dict[str, Any]] = {
    cls.__name__: {"code": cls.code, "message": errors.summary(cls)}
    for cls in errors.wire_errors()}

_SIMPLE: dict[Any, dict[str, Any]] = {
    bool: {"type": "boolean"},
    int: {"type": "integer"},
    float: {"type": "number"},
    str: {"type": "string"},
    type(None): {"type": "null"},
    list: {"type": "array"},
    dict: {"type": "object"},
    datetime.datetime: {"type": "string", "format": "date-time"},
    datetime.date: {"type": "string", "format": "date"},
    datetime.time: {"type": "string", "format": "time"},
    uuid.UUID: {"type": "string", "format": "uuid"},
    decimal.Decimal: {"type": "string", "format": "decimal",
                      "pattern": r"^\s*[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?\s*$"},
    bytes: {"type": "string", "contentEncoding": "base64"},
    pathlib.Path: {"type": "string"},
}
_ARRAYS = (list, set, frozenset, collections.abc.Sequence, collections.abc.Set,
           collections.abc.MutableSequence, collections.abc.Iterable)
_MAPPINGS = (dict, collections.abc.Mapping, collections.abc.MutableMapping)


class Schemas:
    """Builds JSON Schemas from type hints, collecting attrs classes as components."""

    def __init__(self) -> None:
        #: ``{class name: schema}``, the document's ``components.schemas``.
        self.components: dict[str, dict[str, Any]] = {}

    def of(self, hint: Any) -> dict[str, Any]:
        """The JSON Schema of values of type ``hint`` (``{}``: anything)."""
        if hint is Any or hint is inspect.Parameter.empty or hint is typing.Any:
            return {}
        if hint is None:
            hint = type(None)
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if origin is typing.Annotated:
            return self.of(args[0])
        if is_union(hint):
            return {"anyOf": [self.of(a) for a in args]}
        if origin is typing.Literal:
            return {"enum": list(args)}
        if origin is tuple:
            if len(args) == 2 and args[1] is Ellipsis:
                return {"type": "array", "items": self.of(args[0])}
            return {"type": "array", "items": [self.of(a) for a in args],
                    "minItems": len(args), "maxItems": len(args)}
        if origin in _ARRAYS:
            schema: dict[str, Any] = {"type": "array", "items": self.of(args[0]) if args else {}}
            if origin in (set, frozenset, collections.abc.Set):
                schema["uniqueItems"] = True
            return schema
        if origin in _MAPPINGS:
            schema = {"type": "object", "additionalProperties": self.of(args[1]) if args else {}}
            if args and args[0] not in (str, Any):  # keys that are strings of a kind
                schema["propertyNames"] = self.of(args[0])
            return schema
        if isinstance(hint, type):
            return self._of_class(hint)
        return {}

    def _of_class(self, cls: type) -> dict[str, Any]:
        if cls in _SIMPLE:
            return dict(_SIMPLE[cls])
        if issubclass(cls, enum.Enum):
            return {"enum": [m.value for m in cls]}
        if attrs.has(cls):
            return self._component(cls)
        return {}

    def _component(self, cls: type) -> dict[str, Any]:
        name = cls.__name__
        ref = {"$ref": f"#/components/schemas/{name}"}
        if name in self.components:
            return ref
        self.components[name] = {}  # placeholder: a model may refer to itself
        list_attr = getattr(cls, "_list_attr", None)
        if list_attr is not None:  # a busapp list model: a JSON array of its items
            self.components[name] = {"title": name, "type": "array",
                                     "items": self.of(getattr(cls, "_list_class", Any))}
            return ref
        hints = _hints(cls)
        properties: dict[str, Any] = {}
        required = []
        for field in attrs.fields(cls):
            if not field.init:
                continue
            key = field.alias or field.name
            declared = field.type if isinstance(field.type, type) else Any
            prop = self.of(hints.get(field.name, declared))
            if field.name == getattr(cls, "_primary_key", None):  # a model's key: non-empty
                prop = dict(prop, minLength=1)
            if field.default is attrs.NOTHING:
                required.append(key)
            elif not isinstance(field.default, _FACTORY) and _jsonable(field.default):
                prop = dict(prop, default=field.default)
            properties[key] = prop
        schema: dict[str, Any] = {"title": name, "type": "object", "properties": properties,
                                  "additionalProperties": False}
        if required:
            schema["required"] = required
        doc = inspect.getdoc(cls)
        if doc and doc != inspect.getdoc(cls.__mro__[1]):
            schema["description"] = doc
        self.components[name] = schema
        return ref


def _hints(obj: Any) -> dict[str, Any]:
    try:
        return typing.get_type_hints(obj, include_extras=True)
    except Exception:  # noqa: BLE001 - unresolvable annotations: describe them as "anything"
        return {}


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _summary(func: Any) -> tuple[str | None, str | None]:
    doc = inspect.getdoc(inspect.unwrap(getattr(func, "__func__", func)))
    if not doc:
        return None, None
    return doc.splitlines()[0], doc


def method_object(name: str, handler: Any, schemas: Schemas, routing_key: str) -> dict[str, Any]:
    """One OpenRPC method object for ``handler`` (a :class:`busapp.core.dispatch.Handler`)."""
    params = []
    for p in handler.params:
        descriptor: dict[str, Any] = {"name": p.name,
                                      "schema": schemas.of(handler.hints.get(p.name, Any))}
        if p.default is inspect.Parameter.empty:
            descriptor["required"] = True
        elif _jsonable(p.default):
            descriptor["schema"] = dict(descriptor["schema"], default=p.default)
        params.append(descriptor)
    function = inspect.unwrap(getattr(handler.func, "__func__", handler.func))
    returns = _hints(function).get("return", Any)
    method: dict[str, Any] = {
        "name": name,
        "params": params,
        "result": {"name": "result", "schema": schemas.of(returns)},
        "paramStructure": "either",
        "errors": [{"$ref": f"#/components/errors/{e}"} for e in ERRORS],
        "x-busapp-routing-key": routing_key,
    }
    summary, description = _summary(handler.func)
    if summary:
        method["summary"] = summary
    if description and description != summary:
        method["description"] = description
    return method


def _methods(source: Any) -> tuple[list[tuple[str, Any, str]], dict[str, Any]]:
    """``[(name, handler, routing key)]`` and the document's ``info``, for an App or a service."""
    if isinstance(source, App):
        app = source
        methods = [(name, h, app.routing_key_for(name)) for name, h in sorted(app.methods.items())]
        info = {"title": app.name, "x-busapp-exchange": app.exchange,
                "x-busapp-queue": app.queue, "x-busapp-binding": app.routing_key}
        return methods, info
    service = source
    binding = service.routing_keys[0] if service.routing_keys else f"{service.service_name}.*"
    prefix = binding[:-2] if binding.endswith(".*") else service.service_name
    methods = [(name, h, f"{prefix}.{name}") for name, h in sorted(service.handlers.items())]
    info = {"title": service.service_name, "x-busapp-exchange": service.exchange_name,
            "x-busapp-queue": service.service_name, "x-busapp-binding": binding}
    return methods, info


def openrpc_document(source: Any) -> dict[str, Any]:
    """The OpenRPC 1.3 document of ``source``: an :class:`~busapp.App`, or a service instance."""
    methods, info = _methods(source)
    schemas = Schemas()
    doc: dict[str, Any] = {
        "openrpc": OPENRPC_VERSION,
        "info": {**info, "version": __version__,
                 "description": "JSON-RPC 2.0 over a message bus: publish the request on the "
                                "topic exchange with the method's routing key "
                                "(x-busapp-routing-key) and a reply_to queue."},
        "methods": [method_object(name, h, schemas, key) for name, h, key in methods],
    }
    if isinstance(source, App) and source.event_handlers:
        doc["x-busapp-events"] = [event_object(h, schemas) for h in source.event_handlers]
    if isinstance(source, App) and source.timers:
        doc["x-busapp-timers"] = [timer_object(t) for _, t in sorted(source.timers.items())]
    doc["components"] = {"schemas": schemas.components, "errors": dict(ERRORS)}
    return doc


def event_object(entry: Any, schemas: Schemas) -> dict[str, Any]:
    """An event handler as ``x-busapp-events`` lists it: its pattern, binding, delivery and
    the payload it reads as a JSON Schema object (keys it does not declare are ignored)."""
    handler = entry.handler
    properties = {p.name: {**schemas.of(handler.hints.get(p.name, Any)),
                           **({"default": p.default} if p.default is not inspect.Parameter.empty
                              and _jsonable(p.default) else {})}
                  for p in handler.params}
    required = [p.name for p in handler.params if p.default is inspect.Parameter.empty]
    payload: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        payload["required"] = required
    described: dict[str, Any] = {
        "pattern": entry.pattern, "x-busapp-binding": entry.binding_key,
        "function": _function_name(entry.func), "broadcast": entry.broadcast,
        "retries": entry.retries, "payload": payload}
    summary, _ = _summary(entry.func)
    if summary:
        described["summary"] = summary
    return described


def timer_object(timer: Any) -> dict[str, Any]:
    """A timer as ``x-busapp-timers`` lists it."""
    schedule = timer.schedule
    when = {"every": schedule.every} if schedule.every is not None else {"cron": schedule.cron}
    return {"name": timer.name, "function": _function_name(timer.func), **when,
            "eager": timer.eager}


def describe(source: Any) -> dict[str, Any]:
    """``busapp routes --format json`` of ``source`` (an App or a service instance): routing
    keys, functions, params and storage events."""
    methods, info = _methods(source)
    out: dict[str, Any] = {
        "service": info["title"], "exchange": info["x-busapp-exchange"],
        "queue": info["x-busapp-queue"], "binding": info["x-busapp-binding"], "methods": [],
        "storage_events": [],
    }
    for name, handler, key in methods:
        params = []
        for p in handler.params:
            entry: dict[str, Any] = {"name": p.name,
                                     "required": p.default is inspect.Parameter.empty}
            if p.name in handler.hints:
                entry["type"] = _type_name(handler.hints[p.name])
            if p.default is not inspect.Parameter.empty:
                entry["default"] = p.default if _jsonable(p.default) else repr(p.default)
            params.append(entry)
        out["methods"].append({"name": name, "routing_key": key,
                               "function": _function_name(handler.func), "params": params})
    for handler_entry in getattr(source, "storage_handlers", ()):
        out["storage_events"].append({"binding": handler_entry.binding_key,
                                      "function": _function_name(handler_entry.func)})
    if isinstance(source, App):
        schemas = Schemas()
        out["events"] = [event_object(h, schemas) for h in source.event_handlers]
        out["timers"] = [timer_object(t) for _, t in sorted(source.timers.items())]
    return out


def _type_name(hint: Any) -> str:
    if isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "")


def _function_name(func: Any) -> str:
    func = getattr(func, "__func__", func)
    return f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', repr(func))}"
