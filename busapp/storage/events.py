"""Storage change events: routing keys and bodies (no I/O).

An event is published on the bus's topic exchange with routing key
``notify.storage.<ModelClass>.<event>`` and a plain JSON body (not JSON-RPC)::

    {"event": "created", "class": "Host", "model": {"address": "10.0.0.5", ...}}

The model is its safe form: hidden fields (``Cluster.hostset``,
``HostCreds.ssh_priv_key``) are left out. Subscribers bind
``notify.storage.{Class|*}.{event|*}``.
"""

from __future__ import annotations

import json
from typing import Any

from busapp.models import Model, UnknownModelError, ValidationError, get_model_class

#: The events the storage service publishes.
EVENTS = ("created", "updated", "deleted")

#: Routing-key prefix of every storage event.
PREFIX = "notify.storage"


def _class_name(model: type[Model] | Model | str) -> str:
    if isinstance(model, str):
        return model
    if isinstance(model, type):
        return model.__name__
    return type(model).__name__


def routing_key(model: type[Model] | Model | str, event: str) -> str:
    """``notify.storage.<Class>.<event>`` for a model, its class, or a class name."""
    if event not in EVENTS:
        raise ValueError(f"event must be one of {', '.join(EVENTS)}; got {event!r}")
    return f"{PREFIX}.{_class_name(model)}.{event}"


def binding_key(model: type[Model] | str | None = None, event: str | None = None) -> str:
    """The key to bind for events of ``model`` (None: any) and ``event`` (None or ``*``: any)."""
    if event not in (None, "*", *EVENTS):
        raise ValueError(f"event must be one of {', '.join(EVENTS)}, '*' or None; got {event!r}")
    return f"{PREFIX}.{'*' if model is None else _class_name(model)}.{event or '*'}"


def encode_event(event: str, model: Model) -> dict[str, Any]:
    """The event body for ``model`` (hidden fields left out)."""
    if event not in EVENTS:
        raise ValueError(f"event must be one of {', '.join(EVENTS)}; got {event!r}")
    return {"event": event, "class": type(model).__name__, "model": model.to_dict(secure=False)}


def decode_event(body: Any) -> tuple[str, Model]:
    """``(event, model)`` from an event body (a dict, or JSON text or bytes holding one).

    Raises:
        ValueError: the body is not a storage event, names an unknown model
            class (declare it in this process), or its model is invalid.
    """
    if isinstance(body, (bytes, bytearray)):
        body = body.decode("utf-8")
    if isinstance(body, str):
        body = json.loads(body)
    if not isinstance(body, dict) or not {"event", "class", "model"} <= body.keys():
        raise ValueError(f"not a storage event (want an object with event, class and model): "
                         f"{body!r:.200}")
    event = body["event"]
    if event not in EVENTS:
        raise ValueError(f"storage event {event!r} is not one of {', '.join(EVENTS)}")
    try:
        cls = get_model_class(body["class"])
        return event, cls.from_dict(body["model"])
    except UnknownModelError as exc:
        raise ValueError(str(exc)) from None
    except ValidationError as exc:
        raise ValueError(f"storage event carries an invalid model: {exc}") from None
