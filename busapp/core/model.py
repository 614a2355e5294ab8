"""Declaring models: the :class:`Model` base, the :func:`model` decorator, field rules and
the registry the bus names models by. No I/O.

The public face is :mod:`busapp.models`, which also holds Commissaire's own models.
"""

from __future__ import annotations

import datetime
import json
import typing
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import attrs

from busapp.core.convert import converter
from busapp.errors import UnknownModelError, ValidationError


#: Timestamp format of Commissaire's records (naive UTC, as it stored them).
DATE_FORMAT = "%Y-%m-%dT%H:%M:%S.%f"


#: The range of an ``int`` field: signed 64-bit.
INT_MIN, INT_MAX = -(2**63), 2**63 - 1

#: Every declared model, by class name (what ``model_type_name`` and events carry).
_REGISTRY: dict[str, type[Model]] = {}


def formatted_dt(when: datetime.datetime | None = None) -> str:
    """``when`` (default: now, UTC) in :data:`DATE_FORMAT`, as Commissaire wrote timestamps."""
    when = when or datetime.datetime.now(datetime.UTC)
    return when.strftime(DATE_FORMAT)


# -- value rules: callables returning an error text, or None when the value is fine ----

Rule = Callable[[Any], "str | None"]


def one_of(*choices: Any) -> Rule:
    """Rule: the value must be one of ``choices``."""
    def check(value: Any) -> str | None:
        if value in choices:
            return None
        return f"must be one of {', '.join(map(repr, choices))}; got {value!r}"
    return check


def non_empty(value: Any) -> str | None:
    """Rule: the value must not be empty."""
    return None if value else "must not be empty"


def date_format(fmt: str = DATE_FORMAT) -> Rule:
    """Rule: the value must be a timestamp string in ``fmt``."""
    def check(value: Any) -> str | None:
        try:
            datetime.datetime.strptime(value, fmt)
        except (TypeError, ValueError):
            return f"must be a timestamp like {formatted_dt()!r} (format {fmt!r}); got {value!r}"
        return None
    return check


def field(default: Any = attrs.NOTHING, *, factory: Callable[[], Any] | None = None,
          rule: Rule | None = None, save_rule: Rule | None = None, transient: bool = False,
          ) -> Any:
    """Declare a model field.

    Args:
        default / factory: as in :func:`attrs.field`.
        rule: checked whenever an instance is built.
        save_rule: checked only before the record is saved (Commissaire's
            ``ClusterDeploy.version`` may be empty in a lookup, not in a save).
        transient: computed on the instance, never stored nor serialised.
    """
    meta = {"rule": rule, "save_rule": save_rule, "transient": transient}
    return attrs.field(default=default, factory=factory, metadata=meta, eq=not transient)


# -- the base classes --------------------------------------------------------------------

class Model:
    """Base of every model. Declare subclasses with :func:`model`."""

    __slots__ = ()
    # Set on each subclass by @model (attrs.define); declared so the type checker knows
    # every model class is an attrs class. Not tuple[attrs.Attribute[Any], ...]: resolving
    # a subclass's type hints evaluates this one too, and Attribute is not subscriptable.
    __attrs_attrs__: ClassVar[tuple[Any, ...]]
    #: Name of the primary-key field (None: the model cannot be stored).
    _primary_key: ClassVar[str | None] = None
    #: Fields left out of storage events and of ``to_dict(secure=False)``.
    _hidden: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def new(cls, **kwargs: Any) -> Any:
        """Build an instance from JSON-shaped keyword values (defaults fill the rest)."""
        return cls.from_dict(kwargs)

    @classmethod
    def from_dict(cls, data: Any) -> Any:
        """Build an instance from a JSON object; raises :class:`ValidationError`."""
        if isinstance(data, cls):
            return data
        if not isinstance(data, Mapping):
            raise ValidationError(cls.__name__, None, f"must be a JSON object, got {_kind(data)}")
        fields = attrs.fields_dict(cls)
        unknown = [k for k in data if k not in fields]
        if unknown:
            raise ValidationError(
                cls.__name__, str(unknown[0]),
                f"unknown field; {cls.__name__} has: {', '.join(fields)}")
        missing = [n for n, f in fields.items() if n not in data and f.default is attrs.NOTHING]
        if missing:
            raise ValidationError(cls.__name__, missing[0], "is required")
        return cls(**data)

    def __attrs_post_init__(self) -> None:
        self.validate()

    def validate(self, *, for_save: bool = False) -> None:
        """Check every field's type and rule (and save rules with ``for_save``).

        Converts values in place where JSON allows it (``3.0`` -> ``3``).
        """
        name = type(self).__name__
        for f in attrs.fields(type(self)):
            value = _checked(getattr(self, f.name), f.type, f"{name}.{f.name}")
            object.__setattr__(self, f.name, value)
            rules = [f.metadata.get("rule"), f.metadata.get("save_rule") if for_save else None]
            if f.name == self._primary_key:
                rules.append(_pk_rule)
            for rule in filter(None, rules):
                problem = rule(value)
                if problem:
                    raise ValidationError(name, f.name, problem)

    @property
    def primary_key(self) -> Any:
        """The value of the primary-key field (None for a model without one)."""
        return None if self._primary_key is None else getattr(self, self._primary_key)

    def to_dict(self, secure: bool = True) -> Any:
        """JSON-shaped data; ``secure=False`` leaves hidden fields out (as events do)."""
        return {
            f.name: converter.unstructure(getattr(self, f.name))
            for f in attrs.fields(type(self))
            if not f.metadata.get("transient") and (secure or f.name not in self._hidden)
        }

    def to_json(self, secure: bool = False) -> str:
        """JSON text; hidden fields are left out unless ``secure`` (Commissaire's default)."""
        return json.dumps(self.to_dict(secure=secure), ensure_ascii=False)


class SecretModel(Model):
    """A model holding secrets (Commissaire kept these in Custodia)."""

    __slots__ = ()
    _key_container: ClassVar[str | None] = None


class ListModel(Model):
    """A model wrapping one list of another model; serialises to a JSON array."""

    __slots__ = ()
    _list_attr: ClassVar[str]
    _list_class: ClassVar[type[Model]]

    @classmethod
    def from_dict(cls, data: Any) -> Any:
        """Build from a JSON array of items (or ``{list_attr: [...]}``)."""
        if isinstance(data, list):
            data = {cls._list_attr: data}
        return super().from_dict(data)

    @property
    def items(self) -> list:
        """The wrapped list."""
        return getattr(self, self._list_attr)

    def to_dict(self, secure: bool = True) -> Any:
        """A JSON array of the items' dicts."""
        return [item.to_dict(secure=secure) for item in self.items]


def _pk_rule(value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        return "is the primary key and must be a non-empty string"
    return None


def _kind(value: Any) -> str:
    kinds = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
             int: "a number", float: "a number", type(None): "null"}
    return kinds.get(type(value), type(value).__name__)


def _checked(value: Any, tp: Any, path: str) -> Any:
    """``value`` converted to ``tp`` by the converter.

    Raises:
        ValidationError: naming ``path``, on a mismatch.
    """
    origin, args = typing.get_origin(tp) or tp, typing.get_args(tp)
    if origin in (list, dict):
        if not isinstance(value, origin):
            model_name, _, rest = path.partition(".")
            expected = "an array" if origin is list else "an object"
            raise ValidationError(model_name, rest, f"expected {expected}, got {_kind(value)}")
        if origin is list and args:
            return [_checked(v, args[0], f"{path}[{i}]") for i, v in enumerate(value)]
        if origin is dict and len(args) == 2:
            return {_checked(k, args[0], path): _checked(v, args[1], f"{path}[{k!r}]")
                    for k, v in value.items()}
        return value
    if tp is Any:
        return value
    try:
        value = converter.structure(value, tp)
    except ValidationError as exc:  # a nested model: keep the outer path
        model_name, _, rest = path.partition(".")
        where = f"{rest}.{exc.field}" if exc.field else rest
        raise ValidationError(model_name, where, exc.rule) from None
    except Exception as exc:  # noqa: BLE001 - any converter failure is a bad value
        model_name, _, rest = path.partition(".")
        raise ValidationError(model_name, rest, str(exc) or type(exc).__name__) from None
    if type(value) is int and not INT_MIN <= value <= INT_MAX:  # int, or int in a union
        model_name, _, rest = path.partition(".")
        # str() of a huge int is slow, and refused past 4300 digits
        shown = str(value) if abs(value) < 10**40 else f"an integer of {value.bit_length()} bits"
        raise ValidationError(model_name, rest, f"must fit in a signed 64-bit integer "
                                                f"(-2**63 .. 2**63-1); got {shown}")
    return value


# -- declaring models -------------------------------------------------------------------

def model(cls: type | None = None, *, primary_key: str | None = None,
          hidden: tuple[str, ...] = ()) -> Any:
    """Declare a model: make ``cls`` an attrs class and register it under its class name.

    Args:
        primary_key: the field that identifies a stored record.
        hidden: fields left out of storage events and ``to_dict(secure=False)``.

    Example::

        @model(primary_key="name")
        class Widget(Model):
            name: str
            size: int = 0
    """
    def wrap(klass: type) -> type:
        return _declare(klass, primary_key, tuple(hidden))
    return wrap if cls is None else wrap(cls)


def _declare(klass: type, primary_key: str | None, hidden: tuple[str, ...]) -> type:
    if not issubclass(klass, Model):
        raise TypeError(f"@model needs a subclass of busapp.models.Model; "
                        f"declare it as 'class {klass.__name__}(Model): ...'")
    new_cls = attrs.define(klass, slots=True)
    attrs.resolve_types(new_cls)
    names = attrs.fields_dict(new_cls)
    for name in filter(None, (primary_key, *hidden)):
        if name not in names:
            raise ValueError(f"{klass.__name__} has no field {name!r}; fields: {', '.join(names)}")
    new_cls._primary_key = primary_key
    new_cls._hidden = frozenset(hidden)
    if issubclass(new_cls, ListModel):
        _declare_list(new_cls)
    old = _REGISTRY.get(klass.__name__)
    if old is not None and ((old.__module__, old.__qualname__)
                            != (klass.__module__, klass.__qualname__)):
        raise ValueError(f"a model named {klass.__name__!r} is already declared in "
                         f"{old.__module__}; model names are global on the bus, pick another name")
    _REGISTRY[klass.__name__] = new_cls
    return new_cls


def _declare_list(cls: type[ListModel]) -> None:
    fields = attrs.fields(cls)
    item = typing.get_args(fields[0].type) if len(fields) == 1 else ()
    if len(fields) != 1 or typing.get_origin(fields[0].type) is not list or not item:
        raise TypeError(f"list model {cls.__name__} must have exactly one field typed "
                        "list[SomeModel]")
    cls._list_attr, cls._list_class = fields[0].name, item[0]


def get_model_class(name: str) -> type[Model]:
    """The model registered as ``name``.

    Raises:
        UnknownModelError: listing the known ones.
    """
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        known = ", ".join(sorted(_REGISTRY))
        raise UnknownModelError(
            f"unknown model type {name!r}; known: {known}. Declare it with @busapp.models.model "
            f"in a module the storage service imports") from None


def model_names() -> list[str]:
    """Names of every registered model, sorted."""
    return sorted(_REGISTRY)


def list_model_for(item_cls: type[Model]) -> type[ListModel] | None:
    """The registered list model whose items are ``item_cls`` (None if there is none)."""
    for cls in _REGISTRY.values():
        if issubclass(cls, ListModel) and cls._list_class is item_cls:
            return cls
    return None


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, Model)


converter.register_structure_hook_func(_is_model, lambda data, tp: tp.from_dict(data))
converter.register_unstructure_hook_func(_is_model, lambda inst: inst.to_dict())
