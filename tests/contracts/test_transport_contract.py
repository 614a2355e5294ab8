"""The transport contract: memory, embedded, Redis and RabbitMQ behave the same.

Each test runs on every kind (``bus``), on every kind with a broker process
(``broker_bus``) or on every kind that can list bindings (``listing_bus``). Where the
kinds differ by design, the difference is in :data:`DIFFERS` and each kind's behaviour is
asserted, so a change on any side shows.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time

import kombu
import pytest

from busapp import names
from busapp.errors import BrokerUnavailable, NoRouteError
from busapp.transport import open_transport
from busapp.transport.base import QueueSpec
from busapp.transport.kombu_setup import requeue_dead_worker
from tests._private_brokers import free_port
from tests.contracts.conftest import Bus, consumed, depth_becomes, drain_for, drain_until

#: Where the kinds differ by design, per kind.
DIFFERS = {
    # A passive declare of a missing exchange: False, except on Redis, where an exchange
    # is local state and a passive declare declares it.
    "passive_finds_missing": {"memory": False, "embedded": True, "redis": True, "amqp": False},
    # bound_queues: RabbitMQ has no way to list bindings (without its management API).
    "lists_bindings": {"memory": True, "embedded": True, "redis": True, "amqp": False},
    # A body far over max_body: Redis moves its entry to <queue>.dead unread; RabbitMQ and
    # memory deliver it whole (the worker refuses it by size).
    "refuses_oversize": {"memory": False, "embedded": True, "redis": True, "amqp": False},
    # Per-message expiration: RabbitMQ drops an expired message; kombu's Redis transport
    # ignores the property (the worker drops expired requests by their deadline header).
    "expires_messages": {"memory": False, "embedded": False, "redis": False, "amqp": True},
    # Delayed messages come back by themselves on RabbitMQ (a TTL and a dead-letter target);
    # elsewhere a consumer's move_due() puts them back when due.
    "moves_due_itself": {"memory": False, "embedded": False, "redis": False, "amqp": True},
    # A lease outlives its holder's closed connection until its TTL on Redis (the broker
    # cannot tell whose key it is); RabbitMQ and memory end it with the connection.
    "lease_ends_with_connection": {"memory": True, "embedded": False, "redis": False,
                                   "amqp": True},
    # Releasing every lease of a process (``<host>.<pid>``) from another connection: a key
    # anyone may delete on Redis; on RabbitMQ only the holding connection can.
    "releases_for_others": {"memory": True, "embedded": True, "redis": True, "amqp": False},
}

#: A message that is not the body of a JSON-RPC call: the transport must not care.
BINARY = b"\x00\xff\xfe binary \xe9\x80 not utf-8 \x00"

#: Run as a consumer process: take one message from a queue, say so, wait to be killed.
#: It names itself as the owner of its unacked messages, as the manager names each worker.
CONSUMER = """
import os, sys
from busapp.transport import open_transport
from busapp.runtime.cleanup import mark_worker_process
mark_worker_process()
transport = open_transport(sys.argv[1])
transport.connect()
got = []
transport.consume(sys.argv[2], got.append)
while not got:
    transport.drain(0.05)
print("holding", flush=True)
sys.stdin.read()
"""


def routing_keys_reaching(bus: Bus, pattern: str, keys: list[str]) -> list[str]:
    """The routing keys, of ``keys`` published in order, that reach a queue bound to ``pattern``.

    A last message, bound to the queue too, marks the end: once it arrives, every earlier
    one that was routed has arrived (queues are FIFO).
    """
    transport = bus.open()
    queue = bus.queue(transport, "q", pattern, "end-of-test")
    got = consumed(transport, queue)
    for key in keys:
        bus.publish(transport, key)
    bus.publish(transport, "end-of-test")
    assert drain_until(transport, lambda: any(d.routing_key == "end-of-test" for d in got))
    return [d.routing_key or "" for d in got if d.routing_key != "end-of-test"]


# -- connect, close --------------------------------------------------------------------------


def test_connect_to_an_absent_broker_raises_broker_unavailable(broker_bus: Bus, tmp_path) -> None:
    """connect() to a broker that is not there raises BrokerUnavailable."""
    url = {"embedded": f"redis+socket://{tmp_path}/absent.sock",
           "redis": f"redis://127.0.0.1:{free_port()}/0",
           "amqp": f"amqp://guest:guest@127.0.0.1:{free_port()}//"}[broker_bus.kind]
    transport = open_transport(url)
    with pytest.raises(BrokerUnavailable):
        transport.connect()


def test_close_twice_is_harmless(bus: Bus) -> None:
    """close() on a closed transport does nothing."""
    transport = bus.open()
    transport.close()
    transport.close()


def test_close_deletes_the_queue_it_is_given(bus: Bus) -> None:
    """close(delete_queue=q) deletes q and its bindings: a request to its key finds no route."""
    transport = bus.open()
    bus.queue(transport, "gone", "gone.key")
    transport.close(delete_queue=bus.queues[-1])
    with pytest.raises(NoRouteError):
        bus.publish(bus.open(), "gone.key", reply_to="busapp.reply.test")


# -- exchanges -------------------------------------------------------------------------------


def test_declare_exchange_twice_is_harmless(bus: Bus) -> None:
    """Declaring an existing exchange again returns True."""
    transport = bus.open()
    assert transport.declare_exchange(bus.exchange) is True
    assert transport.declare_exchange(bus.exchange) is True


def test_passive_declare_finds_a_declared_exchange(bus: Bus) -> None:
    """A passive declare of an exchange declared elsewhere returns True."""
    bus.open().declare_exchange(bus.exchange)
    assert bus.open().declare_exchange(bus.exchange, passive=True) is True


def test_passive_declare_of_a_missing_exchange(bus: Bus) -> None:
    """A passive declare of a missing exchange returns False (Redis declares it: True)."""
    found = bus.open().declare_exchange(bus.exchange, passive=True)
    assert found is DIFFERS["passive_finds_missing"][bus.kind]


def test_transport_works_after_a_passive_declare_found_nothing(bus: Bus) -> None:
    """After a passive declare of a missing exchange, the same transport still publishes."""
    transport = bus.open()
    transport.declare_exchange(bus.exchange + "-missing", passive=True)
    queue = bus.queue(transport, "after", "after.key")
    bus.publish(transport, "after.key")
    assert depth_becomes(transport, queue, 1) == 1


# -- queues and bindings ---------------------------------------------------------------------


def test_star_matches_exactly_one_word(bus: Bus) -> None:
    """A binding 'svc.*' takes svc.a, not svc, svc.a.b or other.a."""
    keys = ["svc.a", "svc", "svc.a.b", "other.a", "svc.b"]
    assert routing_keys_reaching(bus, "svc.*", keys) == ["svc.a", "svc.b"]


def test_hash_matches_zero_or_more_words(bus: Bus) -> None:
    """A binding 'svc.#' takes svc, svc.a and svc.a.b, not other.a."""
    keys = ["svc", "svc.a", "svc.a.b", "other.a"]
    assert routing_keys_reaching(bus, "svc.#", keys) == ["svc", "svc.a", "svc.a.b"]


def test_exact_key_matches_only_itself(bus: Bus) -> None:
    """A binding without wildcards takes its own key only."""
    keys = ["svc.a", "svc.a.b", "svc", "svc.b"]
    assert routing_keys_reaching(bus, "svc.a", keys) == ["svc.a"]


def test_several_matching_bindings_deliver_one_copy(bus: Bus) -> None:
    """A queue bound with two keys that both match gets a message once."""
    transport = bus.open()
    queue = bus.queue(transport, "twice", "svc.*", "svc.#")
    bus.publish(transport, "svc.a")
    assert depth_becomes(transport, queue, 1) == 1
    drain_for(transport, 0.1)
    assert transport.queue_depth(queue) == 1


def test_each_bound_queue_gets_a_copy(bus: Bus) -> None:
    """A message matching two queues' bindings reaches both."""
    transport = bus.open()
    first = bus.queue(transport, "first", "svc.*")
    second = bus.queue(transport, "second", "svc.#")
    bus.publish(transport, "svc.a")
    assert (depth_becomes(transport, first, 1), depth_becomes(transport, second, 1)) == (1, 1)


def test_bound_queues_lists_the_bound_queue(bus: Bus) -> None:
    """bound_queues names a bound queue (None where the broker cannot tell)."""
    transport = bus.open()
    queue = bus.queue(transport, "listed", "svc.*")
    bound = bus.open().bound_queues(bus.exchange)
    if DIFFERS["lists_bindings"][bus.kind]:
        assert bound is not None and queue in bound
    else:
        assert bound is None


def test_bound_queues_forgets_a_deleted_queue(listing_bus: Bus) -> None:
    """After close(delete_queue=q), bound_queues no longer names q."""
    bus = listing_bus
    transport = bus.open()
    bus.queue(transport, "kept", "svc.*")
    queue = bus.queue(transport, "deleted", "svc.#")
    transport.close(delete_queue=queue)
    assert bus.open().bound_queues(bus.exchange) == {bus.queues[0]}


# -- publishing and consuming ----------------------------------------------------------------


def test_published_message_reaches_the_consumer(bus: Bus) -> None:
    """A message published to a bound key is delivered to the queue's consumer, once."""
    transport = bus.open()
    got = consumed(transport, bus.queue(transport, "q", "svc.*"))
    bus.publish(transport, "svc.a", b'{"n": 1}')
    assert drain_until(transport, lambda: len(got) == 1)
    drain_for(transport, 0.1)
    assert [(d.body, d.routing_key, d.queue) for d in got] == [
        (b'{"n": 1}', "svc.a", bus.queues[0])]


def test_first_delivery_is_not_flagged_redelivered(bus: Bus) -> None:
    """A message delivered for the first time has redelivered False."""
    transport = bus.open()
    got = consumed(transport, bus.queue(transport, "q", "svc.*"))
    bus.publish(transport, "svc.a")
    assert drain_until(transport, lambda: len(got) == 1)
    assert got[0].redelivered is False


def test_message_properties_round_trip(bus: Bus) -> None:
    """Body bytes, content type, headers, reply_to and correlation_id arrive as published."""
    transport = bus.open()
    got = consumed(transport, bus.queue(transport, "q", "svc.*"))
    headers = {"x-text": "é ☃", "x-int": 7, "x-float": 1.5, "x-bool": True,
               "x-list": ["a", 1], "x-map": {"k": "v"}}
    bus.publish(transport, "svc.a", BINARY, headers=headers, reply_to="busapp.reply.abc",
                correlation_id="corr-1", content_type="application/octet-stream")
    assert drain_until(transport, lambda: len(got) == 1)
    [d] = got
    assert (type(d.body), d.body, d.content_type, d.headers, d.reply_to, d.correlation_id) == (
        bytes, BINARY, "application/octet-stream", headers, "busapp.reply.abc", "corr-1")


def test_utf8_body_arrives_as_the_same_bytes(bus: Bus) -> None:
    """A UTF-8 JSON body arrives as bytes, byte for byte (no decoding on the way)."""
    transport = bus.open()
    got = consumed(transport, bus.queue(transport, "q", "svc.*"))
    body = '{"name": "réseau-网络-🚀"}'.encode()
    bus.publish(transport, "svc.a", body)
    assert drain_until(transport, lambda: len(got) == 1)
    assert (type(got[0].body), got[0].body) == (bytes, body)


def test_body_in_another_encoding_arrives_as_sent(broker_bus: Bus) -> None:
    """A body another kombu process sent as latin-1 arrives as its bytes, not re-encoded."""
    bus = broker_bus
    transport = bus.open()
    queue = bus.queue(transport, "q", "svc.*")
    got = consumed(transport, queue)
    with kombu.Connection(bus.url) as foreign:
        channel = foreign.channel()
        message = channel.prepare_message(b"caf\xe9", 0, "text/plain", "latin-1", {}, {})
        channel.basic_publish(message, exchange="", routing_key=queue)
    assert drain_until(transport, lambda: len(got) == 1)
    assert (got[0].body, got[0].content_type) == (b"caf\xe9", "text/plain")


def test_empty_body_arrives_empty(bus: Bus) -> None:
    """An empty body arrives as b''."""
    transport = bus.open()
    got = consumed(transport, bus.queue(transport, "q", "svc.*"))
    bus.publish(transport, "svc.a", b"")
    assert drain_until(transport, lambda: len(got) == 1)
    assert got[0].body == b""


def test_messages_arrive_in_publish_order(bus: Bus) -> None:
    """One publisher's messages to one queue arrive in the order published."""
    transport = bus.open()
    got = consumed(transport, bus.queue(transport, "q", "svc.*"))
    for n in range(5):
        bus.publish(transport, "svc.a", str(n).encode())
    assert drain_until(transport, lambda: len(got) == 5)
    assert [d.body for d in got] == [b"0", b"1", b"2", b"3", b"4"]


def test_publisher_that_never_declared_the_exchange_routes_by_pattern(bus: Bus) -> None:
    """A transport that did not declare the exchange itself still routes by topic patterns."""
    consumer = bus.open()
    queue = bus.queue(consumer, "q", "svc.*")
    bus.publish(bus.open(), "svc.a")
    assert depth_becomes(consumer, queue, 1) == 1


def test_publish_to_the_default_exchange_reaches_the_named_queue(bus: Bus) -> None:
    """exchange='' with a queue's name as routing key delivers to that queue."""
    transport = bus.open()
    queue = bus.name("direct")
    transport.declare_queue("", QueueSpec(queue, durable=False))
    got = consumed(transport, queue)
    transport.publish(b"direct", exchange="", routing_key=queue, correlation_id="c")
    assert drain_until(transport, lambda: len(got) == 1)
    assert (got[0].body, got[0].correlation_id) == (b"direct", "c")


def test_request_with_no_bound_queue_raises_no_route(bus: Bus) -> None:
    """A request (reply_to set) to a key no queue is bound to raises NoRouteError."""
    transport = bus.open()
    bus.queue(transport, "q", "svc.*")
    with pytest.raises(NoRouteError):
        bus.publish(transport, "nobody.here", reply_to="busapp.reply.abc")


def test_plain_message_with_no_bound_queue_is_dropped_quietly(bus: Bus) -> None:
    """A message without reply_to to a key no queue is bound to is dropped without error."""
    transport = bus.open()
    queue = bus.queue(transport, "q", "svc.*")
    bus.publish(transport, "nobody.here")
    bus.publish(transport, "svc.a")  # behind the dropped one
    assert depth_becomes(transport, queue, 1) == 1


def test_competing_consumers_each_get_different_messages(bus: Bus) -> None:
    """Two consumers of one queue share its messages: each message goes to one of them."""
    first, second = bus.open(), bus.open()
    queue = bus.queue(first, "shared", "svc.*")
    got_first, got_second = consumed(first, queue), consumed(second, queue)
    for n in range(6):
        bus.publish(first, "svc.a", str(n).encode())
    assert drain_until([first, second], lambda: len(got_first) + len(got_second) == 6)
    for delivery in got_first + got_second:
        delivery.ack()
    bodies = sorted(d.body for d in got_first + got_second)
    assert bodies == [str(n).encode() for n in range(6)]


# -- settling --------------------------------------------------------------------------------


def test_acked_message_is_not_delivered_again(bus: Bus) -> None:
    """An acked message stays gone after its consumer closes."""
    transport = bus.open()
    queue = bus.queue(transport, "q", "svc.*")
    got = consumed(transport, queue)
    bus.publish(transport, "svc.a")
    assert drain_until(transport, lambda: len(got) == 1)
    got[0].ack()
    transport.close()
    again = bus.open()
    got_again = consumed(again, queue)
    drain_for(again, 0.2)
    assert (got_again, again.queue_depth(queue)) == ([], 0)


def test_requeued_message_comes_back_flagged_redelivered(bus: Bus) -> None:
    """requeue() gives the message back: it is delivered again, flagged redelivered."""
    transport = bus.open()
    got = consumed(transport, bus.queue(transport, "q", "svc.*"))
    bus.publish(transport, "svc.a", b"again")
    assert drain_until(transport, lambda: len(got) == 1)
    got[0].requeue()
    assert drain_until(transport, lambda: len(got) == 2)
    assert [(d.body, d.redelivered) for d in got] == [(b"again", False), (b"again", True)]


def test_close_without_ack_returns_the_message_flagged_redelivered(bus: Bus) -> None:
    """A message its consumer closed without acking is delivered again, flagged redelivered."""
    transport = bus.open()
    queue = bus.queue(transport, "q", "svc.*")
    got = consumed(transport, queue)
    bus.publish(transport, "svc.a", b"unacked")
    assert drain_until(transport, lambda: len(got) == 1)
    transport.close()
    other = bus.open()
    got_again = consumed(other, queue)
    assert drain_until(other, lambda: len(got_again) == 1)
    assert (got_again[0].body, got_again[0].redelivered) == (b"unacked", True)


def test_killed_consumer_message_comes_back_flagged_redelivered(broker_bus: Bus) -> None:
    """A message a killed consumer process held unacked is delivered again, flagged redelivered.

    RabbitMQ requeues it when the connection drops; on Redis the manager requeues what the
    dead worker owned (requeue_dead_worker), not waiting out the visibility timeout.
    """
    bus = broker_bus
    transport = bus.open()
    queue = bus.queue(transport, "q", "svc.*")
    bus.publish(transport, "svc.a", b"held")
    child = subprocess.Popen([sys.executable, "-c", CONSUMER, bus.url, queue],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert select.select([child.stdout], [], [], 10)[0], "the consumer took nothing"
        assert child.stdout is not None and child.stdout.readline() == b"holding\n"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert requeue_dead_worker(bus.url, child.pid) == (1 if bus.redis else 0)
    got = consumed(transport, queue)
    assert drain_until(transport, lambda: len(got) == 1)
    assert (got[0].body, got[0].redelivered) == (b"held", True)


def test_no_ack_consumer_message_is_gone_on_close(bus: Bus) -> None:
    """A message delivered to a no_ack consumer does not come back when it closes."""
    transport = bus.open()
    queue = bus.queue(transport, "q", "svc.*")
    got = consumed(transport, queue, no_ack=True)
    bus.publish(transport, "svc.a")
    assert drain_until(transport, lambda: len(got) == 1)
    got[0].ack()  # nothing to settle: harmless
    transport.close()
    other = bus.open()
    got_again = consumed(other, queue)
    drain_for(other, 0.2)
    assert (got_again, other.queue_depth(queue)) == ([], 0)


# -- flow ------------------------------------------------------------------------------------


def test_prefetch_window_caps_unacked_deliveries(bus: Bus) -> None:
    """With set_prefetch(2), at most 2 unacked messages are delivered; the rest wait."""
    transport = bus.open()
    queue = bus.queue(transport, "q", "svc.*")
    for n in range(5):
        bus.publish(transport, "svc.a", str(n).encode())
    assert depth_becomes(transport, queue, 5) == 5
    transport.set_prefetch(2)
    got = consumed(transport, queue)
    assert drain_until(transport, lambda: len(got) == 2)
    drain_for(transport, 0.2)
    assert (len(got), transport.queue_depth(queue)) == (2, 3)


def test_ack_opens_the_prefetch_window(bus: Bus) -> None:
    """Acking one of a full window's messages lets exactly one more through."""
    transport = bus.open()
    queue = bus.queue(transport, "q", "svc.*")
    for n in range(5):
        bus.publish(transport, "svc.a", str(n).encode())
    assert depth_becomes(transport, queue, 5) == 5
    transport.set_prefetch(2)
    got = consumed(transport, queue)
    assert drain_until(transport, lambda: len(got) == 2)
    got[0].ack()
    assert drain_until(transport, lambda: len(got) == 3)
    drain_for(transport, 0.2)
    assert [d.body for d in got] == [b"0", b"1", b"2"]


def test_drain_returns_false_when_idle(bus: Bus) -> None:
    """drain(timeout), and drain(0), with nothing to deliver return False."""
    transport = bus.open()
    consumed(transport, bus.queue(transport, "q", "svc.*"))
    drain_for(transport, 0.05)  # whatever the broker had to say about the consume
    assert transport.drain(0.05) is False
    assert transport.drain(0) is False


def test_queue_depth_counts_waiting_messages(bus: Bus) -> None:
    """queue_depth counts the messages no one has been handed yet."""
    transport = bus.open()
    queue = bus.queue(transport, "q", "svc.*")
    assert transport.queue_depth(queue) == 0
    for _ in range(3):
        bus.publish(transport, "svc.a")
    assert depth_becomes(transport, queue, 3) == 3


def test_queue_depth_leaves_out_delivered_messages(bus: Bus) -> None:
    """A message delivered and not yet acked is not counted as waiting."""
    transport = bus.open()
    queue = bus.queue(transport, "q", "svc.*")
    got = consumed(transport, queue)
    bus.publish(transport, "svc.a")
    assert drain_until(transport, lambda: len(got) == 1)
    assert transport.queue_depth(queue) == 0


def test_cancel_stops_deliveries(bus: Bus) -> None:
    """After cancel(), new messages wait in the queue instead of reaching the callback."""
    transport = bus.open()
    queue = bus.queue(transport, "q", "svc.*")
    got = consumed(transport, queue)
    drain_for(transport, 0.05)
    transport.cancel()
    bus.publish(transport, "svc.a")
    drain_for(transport, 0.2)
    assert (got, depth_becomes(transport, queue, 1)) == ([], 1)


def test_over_size_body(bus: Bus) -> None:
    """A body far over max_body: Redis moves it to <queue>.dead unread; the others deliver it."""
    consumer = bus.open(max_body=1024)
    queue = bus.queue(consumer, "q", "svc.*")
    got = consumed(consumer, queue)
    big = b"x" * 200_000
    bus.publish(consumer, "svc.a", big)
    bus.publish(consumer, "svc.a", b"small")  # behind it: shows the big one was dealt with
    assert drain_until(consumer, lambda: any(d.body == b"small" for d in got))
    if DIFFERS["refuses_oversize"][bus.kind]:
        assert ([d.body for d in got], consumer.queue_depth(f"{queue}.dead")) == ([b"small"], 1)
    else:
        assert [d.body for d in got] == [big, b"small"]


def _delayed_queue(bus: Bus, transport, label: str) -> str:
    """A queue bound to nothing, with the names its delays make registered for clean-up."""
    queue = bus.name(label)
    transport.declare_queue("", QueueSpec(queue, durable=False))
    for delay_ms in (300, 400, 1000):
        bus.queues.append(names.delay_queue(queue, delay_ms))
    return queue


def _until_delivered(transport, queue: str, got: list, count: int, timeout: float = 5.0) -> bool:
    """Drain (and move due messages back) until ``count`` deliveries came."""
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        transport.move_due([queue])
        transport.drain(0.05)
    return len(got) >= count


def test_expired_message(bus: Bus) -> None:
    """A message whose expiration passed while it waited: RabbitMQ drops it, the others keep it."""
    transport = bus.open()
    queue = bus.queue(transport, "q", "svc.*")
    bus.publish(transport, "svc.a", b"short", expiration=0.05)
    bus.publish(transport, "svc.a", b"long", expiration=60)
    time.sleep(0.2)
    got = consumed(transport, queue)
    assert drain_until(transport, lambda: any(d.body == b"long" for d in got))
    expected = [b"long"] if DIFFERS["expires_messages"][bus.kind] else [b"short", b"long"]
    assert [d.body for d in got] == expected


# -- delayed messages ------------------------------------------------------------------------


def test_delayed_message_arrives_after_its_delay(bus: Bus) -> None:
    """publish_delayed: nothing before the delay, then the message, straight to its queue."""
    transport = bus.open()
    queue = _delayed_queue(bus, transport, "late")
    got = consumed(transport, queue)
    started = time.monotonic()
    transport.publish_delayed(b'{"a": 1}', queue=queue, delay=0.4, headers={"x-n": 7},
                              correlation_id="c-1")
    transport.move_due([queue])
    drain_for(transport, 0.15)
    assert got == []
    assert _until_delivered(transport, queue, got, 1)
    assert time.monotonic() - started >= 0.4
    assert (got[0].body, got[0].headers["x-n"], got[0].correlation_id, got[0].routing_key,
            got[0].queue, got[0].redelivered) == (b'{"a": 1}', 7, "c-1", queue, queue, False)


def test_delayed_messages_of_one_delay_keep_their_order(bus: Bus) -> None:
    """Delayed messages of one delay arrive in the order they were published."""
    transport = bus.open()
    queue = _delayed_queue(bus, transport, "order")
    got = consumed(transport, queue)
    for n in range(5):
        transport.publish_delayed(str(n).encode(), queue=queue, delay=0.3)
    assert _until_delivered(transport, queue, got, 5)
    assert [d.body for d in got] == [b"0", b"1", b"2", b"3", b"4"]


def test_delayed_message_survives_its_publisher(bus: Bus) -> None:
    """A delayed message waits on the broker: its publisher's connection closing loses nothing."""
    publisher = bus.open()
    queue = _delayed_queue(bus, publisher, "kept")
    publisher.publish_delayed(b"kept", queue=queue, delay=0.3)
    publisher.close()
    consumer = bus.open()
    got = consumed(consumer, queue)
    assert _until_delivered(consumer, queue, got, 1)
    assert got[0].body == b"kept"


def test_delayed_message_needs_move_due(bus: Bus) -> None:
    """Where the broker keeps no clock for them, a due message waits for move_due()."""
    transport = bus.open()
    queue = _delayed_queue(bus, transport, "due")
    got = consumed(transport, queue)
    transport.publish_delayed(b"due", queue=queue, delay=0.3)
    time.sleep(0.5)
    drain_for(transport, 0.3)
    arrived = [d.body for d in got]
    assert arrived == ([b"due"] if DIFFERS["moves_due_itself"][bus.kind] else [])
    assert _until_delivered(transport, queue, got, 1)


# -- leases ----------------------------------------------------------------------------------


def test_lease_is_held_by_one_owner_at_a_time(bus: Bus) -> None:
    """A lease one owner holds is refused to another, on another connection."""
    first, second = bus.open(), bus.open()
    lease = bus.name("lease")
    assert first.acquire_lease(lease, "host.1.a", 5) is True
    assert second.acquire_lease(lease, "host.2.b", 5) is False


def test_lease_holder_keeps_it_by_acquiring_again(bus: Bus) -> None:
    """Acquiring again keeps (and extends) the holder's lease past its first TTL."""
    first, second = bus.open(), bus.open()
    lease = bus.name("lease")
    assert first.acquire_lease(lease, "host.1.a", 0.5)
    for _ in range(4):
        time.sleep(0.2)
        assert first.acquire_lease(lease, "host.1.a", 0.5) is True
    assert second.acquire_lease(lease, "host.2.b", 0.5) is False


def test_released_lease_goes_to_the_next_owner(bus: Bus) -> None:
    """After release_lease, another owner takes the lease at once."""
    first, second = bus.open(), bus.open()
    lease = bus.name("lease")
    assert first.acquire_lease(lease, "host.1.a", 5)
    first.release_lease(lease, "host.1.a")
    assert second.acquire_lease(lease, "host.2.b", 5) is True


def test_release_by_another_owner_does_nothing(bus: Bus) -> None:
    """release_lease by an owner that does not hold the lease leaves it held."""
    first, second = bus.open(), bus.open()
    lease = bus.name("lease")
    assert first.acquire_lease(lease, "host.1.a", 5)
    first.release_lease(lease, "host.9")
    second.release_lease(lease, "host.2.b")
    assert second.acquire_lease(lease, "host.2.b", 5) is False


def test_release_of_a_process_prefix(bus: Bus) -> None:
    """Releasing ``<host>.<pid>`` from another connection frees that process's lease where the
    broker allows it (a dead worker's manager does so on Redis)."""
    first, second = bus.open(), bus.open()
    lease = bus.name("lease")
    assert first.acquire_lease(lease, "host.1.a", 5)
    second.release_lease(lease, "host.1")
    freed = DIFFERS["releases_for_others"][bus.kind]
    assert second.acquire_lease(lease, "host.2.b", 5) is freed


def test_lease_of_a_closed_connection(bus: Bus) -> None:
    """A lease whose holder closed its connection is free at once (RabbitMQ, memory) or once
    its TTL ran out (Redis)."""
    first, second = bus.open(), bus.open()
    lease = bus.name("lease")
    assert first.acquire_lease(lease, "host.1.a", 0.6)
    first.close()
    at_once = second.acquire_lease(lease, "host.2.b", 0.6)
    assert at_once is DIFFERS["lease_ends_with_connection"][bus.kind]
    time.sleep(0.7)
    assert second.acquire_lease(lease, "host.2.b", 0.6) is True


#: Run as a lease holder: take a lease, say so, wait to be killed.
LEASE_HOLDER = """
import sys
from busapp.transport import open_transport
transport = open_transport(sys.argv[1])
transport.connect()
assert transport.acquire_lease(sys.argv[2], "host.1.a", float(sys.argv[3]))
print("holding", flush=True)
sys.stdin.read()
"""


def test_lease_of_a_killed_holder_is_free_within_its_ttl(broker_bus: Bus) -> None:
    """kill -9 of the process holding a lease: another takes it within the TTL."""
    lease = broker_bus.name("lease")
    child = subprocess.Popen([sys.executable, "-c", LEASE_HOLDER, broker_bus.url, lease, "1.0"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert select.select([child.stdout], [], [], 10)[0], "the holder took nothing"
        assert child.stdout is not None and child.stdout.readline() == b"holding\n"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    killed = time.monotonic()
    other = broker_bus.open()
    while not other.acquire_lease(lease, "host.2.b", 1.0):
        assert time.monotonic() - killed < 3.0, "the lease outlived its killed holder"
        time.sleep(0.05)
