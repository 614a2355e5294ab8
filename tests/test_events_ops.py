"""Events and timers in the operations tools: busapp routes, OpenRPC, busapp status, metrics."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jsonschema

from busapp.cli.status import timer_rows
from busapp.ops import openrpc
from examples.shop import orders, shipping
from tests.test_openrpc import meta_validator

ROOT = Path(__file__).resolve().parent.parent


def routes(target: str) -> str:
    """``busapp routes TARGET``'s output (in a process of its own: loading a file by path
    adds modules a later test would find)."""
    done = subprocess.run([sys.executable, "-m", "busapp", "routes", target], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_routes_lists_event_handlers_and_timers() -> None:
    """busapp routes prints an App's event handlers (delivery, retries, params) and timers."""
    out = routes("examples/shop/shipping.py")
    assert any(line.split()[:3] == ["orders.*", "shop.shipping.forget", "every"]
               for line in out.splitlines()), out
    assert any(line.split()[:2] == ["billing.paid", "shop.shipping.ship"]
               for line in out.splitlines()), out
    timers = routes("examples/shop/orders.py")
    assert any(line.split() == ["sweep", "shop.orders.sweep", "every", "30s"]
               for line in timers.splitlines()), timers


def test_openrpc_lists_events_with_their_payload_schema() -> None:
    """x-busapp-events: each handler's pattern, binding and payload as JSON Schema; the
    document still validates against the OpenRPC meta-schema."""
    doc = openrpc.openrpc_document(shipping.app)
    meta_validator().validate(doc)
    forget = next(e for e in doc["x-busapp-events"] if e["function"].endswith("forget"))
    assert (forget["pattern"], forget["x-busapp-binding"], forget["broadcast"]) == (
        "orders.*", "busapp-event.orders.*", True)
    payload = jsonschema.Draft7Validator(forget["payload"])
    assert payload.is_valid({"order_id": "o-1", "more": 1})
    assert not payload.is_valid({"order_id": 5})


def test_openrpc_lists_timers() -> None:
    """x-busapp-timers: each timer's name, schedule and eagerness."""
    doc = openrpc.openrpc_document(orders.app)
    assert doc["x-busapp-timers"] == [{"name": "sweep", "function": "examples.shop.orders.sweep",
                                       "every": 30.0, "eager": False}]


def test_status_merges_the_timers_of_the_workers() -> None:
    """busapp status shows a timer once: its last run by any worker, its next by the holder."""
    workers = [
        {"service": "orders", "host": "h", "pid": 1, "timers": {"sweep": {
            "schedule": "every 30s", "holder": False, "last": "2026-01-01T00:00:00.000+00:00",
            "outcome": "error", "next": "2026-01-01T00:01:00.000+00:00"}}},
        {"service": "orders", "host": "h", "pid": 2, "timers": {"sweep": {
            "schedule": "every 30s", "holder": True, "last": "2026-01-01T00:00:30.000+00:00",
            "outcome": "ok", "next": "2026-01-01T00:01:00.000+00:00"}}},
    ]
    assert timer_rows(workers) == [("orders", "sweep", "every 30s", "2026-01-01T00:00:30.000+00:00",
                                    "ok", "2026-01-01T00:01:00.000+00:00", "h:2")]


def test_metrics_count_events_by_outcome_and_timer_runs() -> None:
    """The worker's recorder counts events per handler and outcome, and timer runs."""
    from prometheus_client import REGISTRY

    from busapp.ops.metrics import WorkerMetrics

    recorder = WorkerMetrics("metrics-test")
    for outcome in ("ok", "retried", "retried", "dead_lettered"):
        recorder.event_finished("bill", outcome, 0.01)
    recorder.timer_finished("sweep", False, 0.01)

    def value(name: str, **labels: str) -> float | None:
        return REGISTRY.get_sample_value(name, {"service": "metrics-test", **labels})

    assert value("busapp_events_total", handler="bill", outcome="retried") == 2
    assert value("busapp_events_total", handler="bill", outcome="dead_lettered") == 1
    assert value("busapp_timer_runs_total", timer="sweep", outcome="error") == 1
