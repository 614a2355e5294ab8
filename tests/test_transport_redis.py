"""busapp's Redis transport: same wire and keys as kombu's, fewer round trips (real Redis)."""

from __future__ import annotations

import socket
import uuid

import pytest
from kombu import Connection, Consumer, Exchange, Producer, Queue

from busapp.transport.kombu_transport import kombu_connection as connect
from busapp.transport import redis as busapp_redis


@pytest.fixture
def names() -> dict[str, str]:
    """A unique exchange and queue names; their keys are deleted afterwards."""
    tag = uuid.uuid4().hex[:10]
    out = {"exchange": f"test.tr.{tag}", "q1": f"test.tr.q1.{tag}", "q2": f"test.tr.q2.{tag}"}
    yield out
    import redis

    from tests.conftest import REDIS_URL

    r = redis.Redis.from_url(REDIS_URL)
    r.delete(out["q1"], out["q2"], f"_kombu.binding.{out['exchange']}",
             f"_kombu.binding_permanent.{out['exchange']}")
    r.close()


def _bind(conn: Connection, exchange: str, queue: str, key: str) -> Queue:
    q = Queue(queue, Exchange(exchange, type="topic", durable=True), routing_key=key, durable=True)
    q(conn.default_channel).declare()
    return q


def _topic(conn: Connection, exchange: str) -> Exchange:
    """Declare the topic exchange on ``conn`` (kombu routes an undeclared exchange as direct)."""
    ex = Exchange(exchange, type="topic", durable=True)
    ex(conn.default_channel).declare()
    return ex


def _get(conn: Connection, queue: str, timeout: float = 2.0) -> list:
    got: list = []
    q = Queue(queue, channel=conn.default_channel, no_declare=True)
    with Consumer(conn.default_channel, [q], on_message=got.append, accept=["json"]):
        try:
            conn.drain_events(timeout=timeout)
        except socket.timeout:
            pass
    for message in got:
        message.ack()
    return got


def test_connect_uses_busapp_transport_for_redis_urls_only(redis_url):
    """redis://, rediss:// and redis+socket:// get busapp's transport; amqp:// keeps kombu's."""
    for url in (redis_url, "rediss://h:6380/1", "redis+socket:///tmp/x.sock"):
        conn = connect(url)
        assert conn.transport.Channel is busapp_redis.Channel
        assert conn.as_uri() == Connection(url).as_uri()
    assert connect("amqp://guest:guest@127.0.0.1:5672//").get_transport_cls().__module__.startswith("kombu.")


def test_one_redis_client_per_channel(redis_url):
    """The channel reuses one redis.Redis for its commands and makes a new one after its pool is dropped."""
    with connect(redis_url) as conn:
        channel = conn.default_channel
        first = channel._create_client()
        assert channel._create_client() is first
        with channel.conn_or_acquire() as client:
            assert client is first
        channel._disconnect_pools()
        assert channel._create_client() is not first


def test_interoperates_with_plain_kombu(redis_url, names):
    """A message published by busapp's transport reaches a plain-kombu consumer and vice versa."""
    with connect(redis_url) as ours, Connection(redis_url) as theirs:
        _bind(theirs, names["exchange"], names["q1"], "svc.*")
        Producer(ours.default_channel).publish(
            {"n": 1}, exchange=_topic(ours, names["exchange"]), routing_key="svc.a",
            serializer="json", reply_to="r", correlation_id="c1")
        [message] = _get(theirs, names["q1"])
        assert message.payload == {"n": 1}
        assert message.properties["correlation_id"] == "c1"
        Producer(theirs.default_channel).publish(
            {"n": 2}, exchange=_topic(theirs, names["exchange"]), routing_key="svc.b",
            serializer="json")
        [message] = _get(ours, names["q1"])
        assert message.payload == {"n": 2}


def test_binding_cache_is_off_by_default(redis_url):
    """Without the option, every publish reads the bindings (no missed subscriber, ever)."""
    with connect(redis_url) as conn:
        assert conn.default_channel.binding_cache_ttl == 0


def test_binding_cache_sees_a_new_queue_at_once(redis_url, names):
    """A routing key that matched nothing in the cached table makes the channel read the bindings again."""
    cached = Connection(redis_url, transport=busapp_redis.Transport,
                        transport_options={"binding_cache_ttl": 60})
    with cached as publisher, Connection(redis_url) as other:
        exchange = _topic(publisher, names["exchange"])
        _bind(other, names["exchange"], names["q1"], "one.*")
        producer = Producer(publisher.default_channel)
        producer.publish({"n": 1}, exchange=exchange, routing_key="one.x", serializer="json")
        assert names["exchange"] in publisher.default_channel._tables  # cached now
        _bind(other, names["exchange"], names["q2"], "two.*")  # bound elsewhere, after caching
        producer.publish({"n": 2}, exchange=exchange, routing_key="two.x", serializer="json")
        assert [m.payload for m in _get(other, names["q2"])] == [{"n": 2}]
        assert [m.payload for m in _get(other, names["q1"])] == [{"n": 1}]


def test_binding_cache_reads_the_table_once_per_ttl(redis_url, names, monkeypatch):
    """Within the TTL, publishes reuse the table; with binding_cache_ttl=0 every publish reads it."""
    for ttl, expected in ((60.0, 1), (0, 5)):
        conn = Connection(redis_url, transport=busapp_redis.Transport,
                          transport_options={"binding_cache_ttl": ttl})
        with conn:
            _bind(conn, names["exchange"], names["q1"], "svc.*")
            channel = conn.default_channel
            reads = []
            original = busapp_redis._kredis.Channel.get_table
            monkeypatch.setattr(busapp_redis._kredis.Channel, "get_table",
                                lambda self, ex: reads.append(ex) or original(self, ex))
            channel._tables.clear()
            producer = Producer(channel)
            for i in range(5):
                producer.publish({"i": i}, exchange=_topic(conn, names["exchange"]),
                                 routing_key="svc.a", serializer="json")
            monkeypatch.undo()
            assert len(reads) == expected
            assert len(_get(conn, names["q1"], timeout=1)) >= 1


def test_unacked_message_is_restored_after_visibility_timeout(redis_url, names):
    """Ack emulation still works: a delivered, unacked message comes back once the visibility timeout passes."""
    # Own ack-emulation keys: other processes on this Redis sweep the default ones.
    keys = {k: f"{k}.{names['q1']}" for k in ("unacked_key", "unacked_index_key", "unacked_mutex_key")}
    options = {"visibility_timeout": 1, **keys}
    with connect(redis_url) as setup:
        _bind(setup, names["exchange"], names["q1"], "svc.*")
        Producer(setup.default_channel).publish(
            {"n": 1}, exchange=_topic(setup, names["exchange"]), routing_key="svc.a",
            serializer="json")
    lost = Connection(redis_url, transport=busapp_redis.Transport, transport_options=options)
    lost.connect()
    got = []
    q = Queue(names["q1"], channel=lost.default_channel, no_declare=True)
    Consumer(lost.default_channel, [q], on_message=got.append).consume()
    lost.drain_events(timeout=2)
    assert len(got) == 1
    tag = got[0].delivery_tag
    channel = lost.default_channel
    assert channel._create_client().hexists(channel.unacked_key, tag)
    # The worker "dies": its delivered message is neither acked nor restored on close.
    channel.qos.restore_at_shutdown = False
    channel.qos._delivered.clear()
    lost.release()
    import time

    time.sleep(1.2)
    with Connection(redis_url, transport=busapp_redis.Transport, transport_options=options) as conn:
        _topic(conn, names["exchange"])
        conn.default_channel.qos.restore_visible()
        again = _get(conn, names["q1"])
        assert [m.payload for m in again] == [{"n": 1}]
        client = conn.default_channel._create_client()
        assert not client.hexists(keys["unacked_key"], tag)
        client.delete(*keys.values())


def test_reply_to_a_gone_client_expires(redis_url):
    """A reply pushed to a busapp reply queue nobody reads gets a TTL instead of living forever."""
    import uuid

    import redis

    from busapp.bus import Client

    queue = f"busapp.reply.{uuid.uuid4().hex}"
    with Client(redis_url, "x") as bus:
        bus.publish_reply(queue, {"jsonrpc": "2.0", "id": 1, "result": 1}, correlation_id=1)
    r = redis.Redis.from_url(redis_url)
    try:
        assert r.llen(queue) == 1
        assert 0 < r.pttl(queue) <= 60_000
    finally:
        r.delete(queue)


def test_event_publish_reaches_a_subscriber_bound_a_moment_ago(redis_url, names, monkeypatch):
    """Client.publish reads bindings afresh: a queue bound after the cache filled, on a key an
    older binding already matches, still gets the very next event."""
    from busapp.bus import Client

    other = Connection(redis_url, transport=busapp_redis.Transport)
    monkeypatch.setenv("BUSAPP_BINDING_CACHE_TTL", "60")  # the cache on, as a user may set it
    with other, Client(redis_url, names["exchange"]) as bus:
        _bind(other, names["exchange"], names["q1"], "notify.storage.*.*")  # an old subscriber
        bus.publish("notify.storage.Host.created", {"n": 1})  # fills the publisher's cache
        _bind(other, names["exchange"], names["q2"], "notify.storage.Host.created")  # new one
        bus.publish("notify.storage.Host.created", {"n": 2})
        assert [m.payload for m in _get(other, names["q2"])] == [{"n": 2}]
