"""`busapp routes --format openrpc|json`: the OpenRPC 1.3 document, checked against the OpenRPC
meta-schema, and its JSON Schemas checked against values busapp accepts and refuses."""

from __future__ import annotations

import datetime
import enum
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Literal, Optional

import attrs
import jsonschema
import pytest
import referencing
import referencing.jsonschema

from busapp import App
from busapp.models import Host
from busapp.errors import Forbidden
from busapp.ops.openrpc import ERRORS, describe, openrpc_document
from busapp.service import CommissaireService

DATA = Path(__file__).parent / "data" / "openrpc"


def meta_validator() -> jsonschema.Draft7Validator:
    """A validator of OpenRPC documents that needs no network (both meta-schemas are vendored)."""
    meta = json.loads((DATA / "openrpc-meta-schema-1.14.9.json").read_text())
    tools = json.loads((DATA / "json-schema-tools-meta-schema-1.8.0.json").read_text())
    resource = referencing.Resource(tools, specification=referencing.jsonschema.DRAFT7)
    registry = referencing.Registry().with_resources(
        [("https://meta.json-schema.tools", resource),
         ("https://meta.json-schema.tools/", resource)])
    return jsonschema.Draft7Validator(meta, registry=registry)


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


@attrs.define
class Point:
    """A point on the plane."""

    x: int
    y: int = 0


@attrs.define
class Segment:
    start: Point
    end: Point
    label: Optional[str] = None  # noqa: UP045 - the typing.Optional spelling is described too


def typed_app() -> App:
    """An App whose methods use every kind of hint the document describes."""
    app = App("shapes")

    @app.method()
    def add(x: int, y: int = 2) -> int:
        """Add two integers.

        The second one defaults to 2."""
        return x + y

    @app.method()
    def length(segment: Segment, scale: float = 1.0) -> float:
        return scale

    @app.method()
    def tag(points: list[Point], names: dict[str, int], mode: Literal["a", "b"] = "a",
            colour: Colour = Colour.RED, pair: tuple[int, str] | None = None) -> list[str]:
        return []

    @app.method()
    def stamp(when: datetime.datetime, host: Host, anything: Any = None) -> None:
        return None

    @app.method()
    def untyped(a, b=3):  # no hints: any JSON value
        return a

    return app


def schema_of(doc: dict[str, Any], method: str, param: str) -> dict[str, Any]:
    """The schema of ``param`` of ``method``, resolvable on its own (components attached)."""
    [found] = [m for m in doc["methods"] if m["name"] == method]
    [descriptor] = [p for p in found["params"] if p["name"] == param]
    return {**descriptor["schema"], "components": doc["components"]}


def test_document_validates_against_the_openrpc_meta_schema() -> None:
    """The document of an App with models, lists, optionals,
    literals and enums is valid OpenRPC 1.3."""
    doc = openrpc_document(typed_app())
    meta_validator().validate(doc)
    assert doc["openrpc"].startswith("1.3.")
    assert [m["name"] for m in doc["methods"]] == ["add", "length", "stamp", "tag", "untyped"]


def test_params_results_and_defaults_come_from_the_type_hints() -> None:
    """Each param's schema, required flag and default, and the result's schema, follow the hints."""
    doc = openrpc_document(typed_app())
    [add] = [m for m in doc["methods"] if m["name"] == "add"]
    assert add["params"] == [{"name": "x", "schema": {"type": "integer"}, "required": True},
                             {"name": "y", "schema": {"type": "integer", "default": 2}}]
    assert add["result"]["schema"] == {"type": "integer"}
    assert add["summary"] == "Add two integers." and add["x-busapp-routing-key"] == "shapes.add"
    [tag] = [m for m in doc["methods"] if m["name"] == "tag"]
    schemas = {p["name"]: p["schema"] for p in tag["params"]}
    assert schemas["points"] == {"type": "array", "items": {"$ref": "#/components/schemas/Point"}}
    assert schemas["names"] == {"type": "object", "additionalProperties": {"type": "integer"}}
    assert schemas["mode"] == {"enum": ["a", "b"], "default": "a"}
    assert schemas["colour"] == {"enum": ["red", "blue"]}
    assert schemas["pair"]["anyOf"][1] == {"type": "null"}
    [untyped] = [m for m in doc["methods"] if m["name"] == "untyped"]
    assert untyped["params"][0] == {"name": "a", "schema": {}, "required": True}


def test_attrs_models_are_components_and_match_what_busapp_accepts() -> None:
    """attrs classes become components;
    the schema accepts what the converter accepts and refuses the rest."""
    doc = openrpc_document(typed_app())
    components = doc["components"]["schemas"]
    assert components["Point"]["required"] == ["x"] and components["Point"]["description"]
    assert components["Segment"]["properties"]["start"] == {"$ref": "#/components/schemas/Point"}
    assert "Host" in components
    segment = jsonschema.Draft7Validator(schema_of(doc, "length", "segment"))
    jsonschema.Draft7Validator.check_schema(segment.schema)
    assert segment.is_valid({"start": {"x": 1}, "end": {"x": 2, "y": 3}})
    assert segment.is_valid({"start": {"x": 1}, "end": {"x": 2}, "label": None})
    assert not segment.is_valid({"start": {"x": "1"}, "end": {"x": 2}})
    assert not segment.is_valid({"start": {"x": 1}})
    assert not segment.is_valid({"start": {"x": 1}, "end": {"x": 2}, "colour": "red"})


def test_every_method_lists_the_wire_error_codes() -> None:
    """Each method refers to the error codes of the wire contract, read from the error classes
    and defined once as components."""
    doc = openrpc_document(typed_app())
    codes = {e["code"] for e in doc["components"]["errors"].values()}
    assert codes == {-32700, -32600, -32601, -32602, -32603, -32001, -32002, -20000, -20001,
                     -20002}
    assert doc["components"]["errors"]["Forbidden"]["code"] == Forbidden.code
    for method in doc["methods"]:
        assert [e["$ref"].rsplit("/", 1)[1] for e in method["errors"]] == list(ERRORS)


def test_commissaire_service_class_has_a_document_too() -> None:
    """A CommissaireService's on_<name> methods are described like an App's, without the message."""
    class Adder(CommissaireService):
        def on_add(self, message: Any, x: int, y: int = 1) -> int:
            return x + y

    service = Adder("ex", "memory://")
    doc = openrpc_document(service)
    meta_validator().validate(doc)
    [add] = doc["methods"]
    assert [p["name"] for p in add["params"]] == ["x", "y"]
    assert add["x-busapp-routing-key"] == "adder.add"
    assert describe(service)["methods"][0]["params"][1] == {
        "name": "y", "required": False, "type": "int", "default": 1}


@pytest.mark.parametrize("fmt", ["openrpc", "json"])
def test_routes_command_prints_the_document(tmp_path: Path, fmt: str) -> None:
    """`busapp routes MODULE:APP --format openrpc` prints a valid document;
    `--format json` the table as data."""
    module = tmp_path / "svc_routes.py"
    module.write_text(textwrap.dedent('''
        from __future__ import annotations
        import attrs
        from busapp import App
        from busapp.models import Host

        app = App("geo")

        @attrs.define
        class Point:
            x: int
            y: int = 0

        @app.method()
        def move(p: Point, by: list[int] | None = None) -> Point:
            """Move a point."""
            return p

        @app.on_storage_event(Host, "created")
        def seen(event, model) -> None:
            pass
    '''))
    command = [sys.executable, "-m", "busapp", "routes", f"{module}:app", "--format", fmt]
    out = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    if fmt == "openrpc":
        meta_validator().validate(doc)
        [move] = doc["methods"]
        assert move["result"]["schema"] == {"$ref": "#/components/schemas/Point"}
        point = doc["components"]["schemas"]["Point"]
        assert point["properties"]["y"] == {"type": "integer", "default": 0}
    else:
        assert doc["methods"][0]["routing_key"] == "geo.move"
        assert doc["methods"][0]["params"][0] == {"name": "p", "required": True, "type": "Point"}
        assert doc["storage_events"][0]["binding"] == "notify.storage.Host.created"
