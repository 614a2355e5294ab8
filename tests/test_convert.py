"""busapp.core.convert: the types the OpenRPC document promises convert both ways on a real call,
and an annotation busapp cannot convert is refused when the function is registered."""

from __future__ import annotations

import base64
import datetime
import decimal
import enum
import json
import random
import string
import uuid
from typing import Any, Literal

import attrs
import jsonschema
import pytest

from busapp import App
from busapp.errors import InvalidParams
from busapp.models import Model, model
from busapp.ops.openrpc import openrpc_document


class Colour(enum.Enum):
    RED = "red"
    GREEN = "green"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


@attrs.define
class Point:
    x: int
    y: float
    label: str | None = None


@attrs.define
class Shape:
    name: str
    points: list[Point]
    created: datetime.datetime
    colour: Colour
    tags: frozenset[str] = frozenset()
    parent: Shape | None = None


@model(primary_key="name")
class RoundTripGadget(Model):
    name: str
    made: datetime.date
    batch: uuid.UUID
    price: decimal.Decimal = decimal.Decimal("0")


#: One echo method per type: ``{method name: annotation}``.
TYPES: dict[str, Any] = {
    "when": datetime.datetime, "day": datetime.date, "clock": datetime.time,
    "ident": uuid.UUID, "money": decimal.Decimal, "colour": Colour, "level": Level,
    "blob": bytes, "pair": tuple[int, str], "floats": tuple[float, ...], "unique": set[int],
    "frozen": frozenset[str], "point": Point, "shape": Shape, "gadget": RoundTripGadget,
    "maybe_day": datetime.date | None, "either": int | str,
    "mixed": uuid.UUID | decimal.Decimal | None,
    "days": list[datetime.date], "by_id": dict[uuid.UUID, Point], "choice": Literal["a", "b", 3],
    "nested": dict[str, list[tuple[Colour, datetime.datetime]]], "optional_shape": Shape | None,
}


#: ``{method name: the value its handler last received}``.
RECEIVED: dict[str, Any] = {}


def _echo(name: str, hint: Any) -> Any:
    def echo(value: Any) -> Any:
        RECEIVED[name] = value
        return value

    echo.__name__ = name
    echo.__annotations__ = {"value": hint, "return": hint}
    return echo


def wide_app() -> App:
    app = App("wide")
    for name, hint in TYPES.items():
        app.add_method(_echo(name, hint), name)

    @app.method()
    def record(when: datetime.datetime, day: datetime.date, ids: list[uuid.UUID],
               price: decimal.Decimal = decimal.Decimal("1.00")
               ) -> tuple[datetime.datetime, datetime.date, list[uuid.UUID], decimal.Decimal]:
        return when, day, ids, price

    return app


# -- a value from a JSON Schema ----------------------------------------------------------

class Generator:
    """Makes a JSON value that a schema describes, in the canonical text of each format."""

    def __init__(self, components: dict[str, Any], seed: int) -> None:
        self.components = components
        self.rnd = random.Random(seed)

    def value(self, schema: dict[str, Any], depth: int = 0) -> Any:
        rnd = self.rnd
        if "$ref" in schema:
            return self.value(self.components[schema["$ref"].rsplit("/", 1)[-1]], depth + 1)
        if "anyOf" in schema:
            options = schema["anyOf"]
            if depth > 3:  # keep recursive models finite: prefer null
                options = [o for o in options if o.get("type") == "null"] or options
            return self.value(rnd.choice(options), depth)
        if "enum" in schema:
            return rnd.choice(schema["enum"])
        kind = schema.get("type")
        if kind is None:
            return rnd.choice([None, True, 7, 2.5, "any"])
        return getattr(self, f"_{kind}")(schema, depth)

    def _null(self, schema: dict, depth: int) -> None:
        return None

    def _boolean(self, schema: dict, depth: int) -> bool:
        return self.rnd.random() < 0.5

    def _integer(self, schema: dict, depth: int) -> int:
        return self.rnd.randint(-(2**40), 2**40)

    def _number(self, schema: dict, depth: int) -> float:
        return self.rnd.randint(-(10**6), 10**6) + 0.25

    def _string(self, schema: dict, depth: int) -> str:
        rnd = self.rnd
        if schema.get("contentEncoding") == "base64":
            return base64.b64encode(rnd.randbytes(rnd.randint(0, 40))).decode()
        offset = datetime.timezone(datetime.timedelta(minutes=rnd.randint(-12 * 60, 14 * 60)))
        moment = datetime.datetime(rnd.randint(1, 9999), rnd.randint(1, 12), rnd.randint(1, 28),
                                   rnd.randint(0, 23), rnd.randint(0, 59), rnd.randint(0, 59),
                                   rnd.choice([0, rnd.randint(1, 999999)]), tzinfo=offset)
        formats = {"date-time": moment.isoformat, "date": moment.date().isoformat,
                   "time": lambda: moment.timetz().isoformat(),
                   "uuid": lambda: str(uuid.UUID(int=rnd.getrandbits(128))),
                   "decimal": lambda: str(decimal.Decimal(rnd.randint(-10**9, 10**9))
                                          .scaleb(-rnd.randint(0, 4)))}
        if "format" in schema:
            return formats[schema["format"]]()
        length = rnd.randint(schema.get("minLength", 0), 12)
        return "".join(rnd.choice(string.printable + "éß€漢") for _ in range(length))

    def _array(self, schema: dict, depth: int) -> list:
        items = schema.get("items", {})
        if isinstance(items, list):
            return [self.value(s, depth + 1) for s in items]
        count = self.rnd.randint(0, 4 if depth < 3 else 0)
        made = [self.value(items, depth + 1) for _ in range(count)]
        if schema.get("uniqueItems"):
            made = list({json.dumps(v, sort_keys=True): v for v in made}.values())
        return made

    def _object(self, schema: dict, depth: int) -> dict:
        out = {}
        required = schema.get("required", [])
        for key, sub in schema.get("properties", {}).items():
            if key in required or self.rnd.random() < 0.5:
                out[key] = self.value(sub, depth + 1)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            keys = schema.get("propertyNames", {"type": "string"})
            for _ in range(self.rnd.randint(0, 3 if depth < 3 else 0)):
                out[self.value(keys, depth + 1)] = self.value(extra, depth + 1)
        return out


def same(schema: dict[str, Any], components: dict[str, Any], sent: Any, got: Any) -> bool:
    """``got`` is ``sent`` as JSON, order aside where the schema says the items are a set."""
    if "$ref" in schema:
        schema = components[schema["$ref"].rsplit("/", 1)[-1]]
    if schema.get("uniqueItems"):
        return sorted(map(json.dumps, sent)) == sorted(map(json.dumps, got))
    if "anyOf" in schema:
        return any(same(s, components, sent, got) for s in schema["anyOf"])
    if isinstance(sent, dict) and isinstance(got, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        return sent.keys() <= got.keys() and all(
            same(props.get(k, extra if isinstance(extra, dict) else {}), components, v, got[k])
            for k, v in sent.items())
    if isinstance(sent, list) and isinstance(got, list) and len(sent) == len(got):
        items = schema.get("items", {})
        subs = items if isinstance(items, list) else [items] * len(sent)
        return all(same(s, components, a, b) for s, a, b in zip(subs, sent, got, strict=True))
    return json.dumps(sent) == json.dumps(got)


# -- the tests -----------------------------------------------------------------------------

def test_every_advertised_schema_round_trips_through_a_call() -> None:
    """A value generated from each param schema of the OpenRPC document comes back equal, and
    valid against the result schema, from a real call on the test client."""
    app = wide_app()
    doc = openrpc_document(app)
    components = doc["components"]["schemas"]
    checked = 0
    with app.test_client() as client:
        for seed in range(25):
            make = Generator(components, seed)
            for method in doc["methods"]:
                params = {p["name"]: make.value(p["schema"]) for p in method["params"]
                          if p.get("required") or seed % 2}
                result = client.call(method["name"], **params)
                schema = method["result"]["schema"]
                validator = jsonschema.Draft7Validator(
                    {**schema, "components": doc["components"]},
                    format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)
                validator.validate(result)
                if method["name"] != "record":
                    assert same(schema, components, params["value"], result), \
                        (method["name"], params, result)
                checked += 1
    assert checked == 25 * len(doc["methods"])


@pytest.mark.parametrize("method, built", [
    ("when", datetime.datetime), ("day", datetime.date), ("clock", datetime.time),
    ("ident", uuid.UUID), ("money", decimal.Decimal), ("colour", Colour), ("blob", bytes),
    ("pair", tuple), ("unique", set), ("frozen", frozenset), ("shape", Shape),
    ("gadget", RoundTripGadget),
])
def test_handlers_receive_built_values(method: str, built: type) -> None:
    """The handler gets the annotated type (a datetime, a Shape...), not the JSON it came as."""
    app = wide_app()
    doc = openrpc_document(app)
    schema = next(m for m in doc["methods"] if m["name"] == method)["params"][0]["schema"]
    value = Generator(doc["components"]["schemas"], 1).value(schema)
    app.test_client().call(method, value)
    assert isinstance(RECEIVED[method], built)


def test_every_type_of_the_wide_app_is_advertised_with_a_schema() -> None:
    """No param of the wide App is described as "anything" ({}): each round trip tests a type."""
    doc = openrpc_document(wide_app())
    assert all(p["schema"] for m in doc["methods"] for p in m["params"])


def test_a_returned_datetime_becomes_iso_text_with_its_offset() -> None:
    """A handler returning a datetime answers ISO 8601 text, the time zone kept (not -32603)."""
    app = App("clock")

    @app.method()
    def now() -> datetime.datetime:
        return datetime.datetime(2024, 5, 1, 12, 30, tzinfo=datetime.timezone(
            datetime.timedelta(hours=2)))

    assert app.test_client().call("now") == "2024-05-01T12:30:00+02:00"


def test_a_date_param_is_built_from_iso_text() -> None:
    """``d: datetime.date`` receives a date from "2024-05-01", as the schema's format: date says."""
    app = App("cal")

    @app.method()
    def weekday(d: datetime.date) -> int:
        return d.isoweekday()

    assert app.test_client().call("weekday", "2024-05-01") == 3


def test_a_python_caller_may_pass_a_datetime() -> None:
    """The client writes a datetime param as ISO text, so a Python caller need not convert it."""
    app = App("cal")

    @app.method()
    def shift(when: datetime.datetime, days: int) -> datetime.datetime:
        return when + datetime.timedelta(days=days)

    start = datetime.datetime(2024, 1, 31, 8, tzinfo=datetime.UTC)
    assert app.test_client().call("shift", start, 1) == "2024-02-01T08:00:00+00:00"


@pytest.mark.parametrize("hint, sent", [
    (datetime.date, "2024-05-01T10:00:00"), (datetime.date, 20240501), (uuid.UUID, "nope"),
    (decimal.Decimal, 1.1), (decimal.Decimal, "NaN"), (bytes, "not base64!"), (Colour, "blue"),
    (int, "3"), (str, 3),
])
def test_a_wrong_value_is_invalid_params_naming_the_parameter(hint: Any, sent: Any) -> None:
    """A value that does not convert to the annotation is -32602 naming the parameter."""
    app = App("strict")
    app.add_method(_echo("take", hint), "take")
    with pytest.raises(InvalidParams, match="parameter 'value' of take"):
        app.test_client().call("take", sent)


def test_an_unconvertible_annotation_is_refused_at_registration() -> None:
    """``x: complex`` raises ValueError at @app.method(), naming the parameter and the type."""
    app = App("bad")
    with pytest.raises(ValueError, match=r"parameter 'x' of area\(\) is annotated complex"):
        @app.method()
        def area(x: complex) -> float:
            return abs(x)
    assert "area" not in app.methods


def test_an_unconvertible_type_inside_a_model_is_refused_naming_the_field() -> None:
    """A model field busapp cannot convert is named when a method taking the model registers."""
    @attrs.define
    class Odd:
        lock: complex

    app = App("bad")
    with pytest.raises(ValueError, match="field 'lock' of Odd"):
        app.add_method(_echo("odd", Odd), "odd")


def test_an_unconvertible_return_annotation_is_refused_at_registration() -> None:
    """A return annotation busapp cannot turn into JSON raises ValueError at registration."""
    app = App("bad")
    with pytest.raises(ValueError, match=r"return annotation of lock\(\)"):
        @app.method()
        def lock() -> complex:
            return 1j


def test_a_dependency_registered_first_may_have_any_annotation() -> None:
    """A parameter that is a registered dependency is not a wire param: its type is not checked."""
    app = App("deps")

    class Pool:
        size = 3

    @app.dependency("pool")
    def make_pool() -> Pool:
        return Pool()

    @app.method()
    def size(pool: Pool) -> int:
        return pool.size

    assert app.test_client().call("size") == 3


def test_an_unresolvable_annotation_is_refused_naming_it() -> None:
    """An annotation naming a type that does not exist is refused at registration, named."""
    app = App("bad")

    def handler(x: NoSuchType) -> int:  # type: ignore[name-defined] # noqa: F821
        return 1

    with pytest.raises(ValueError, match="parameter 'x' of handler.*NoSuchType"):
        app.add_method(handler)
