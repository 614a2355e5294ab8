"""What a dead worker leaves on the broker, removed by the manager that outlived it."""

from __future__ import annotations

from busapp.entrypoints.control import control_queue
from busapp.transport import is_redis, open_transport


def forget_worker(url: str, exchange: str, service: str, pid: int) -> None:
    """Delete the control queue of worker ``pid`` (on this host), killed before it could.

    RabbitMQ deletes an auto-delete queue when its consumer's connection dies; Redis
    keeps the list and its bindings, and every later status broadcast would add to it.
    """
    if not is_redis(url):
        return
    spec = control_queue(service, pid, number=0)
    transport = open_transport(url)
    transport.connect()
    try:
        transport.declare_queue(exchange, spec)  # kombu unbinds only the bindings it declared
    finally:
        transport.close(delete_queue=spec.name)
