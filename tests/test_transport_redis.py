"""busapp's Redis transport: same wire and keys as kombu's, fewer round trips (real Redis)."""

from __future__ import annotations

import uuid

import pytest
from kombu import Connection, Consumer, Exchange, Producer, Queue

from busapp.transport.kombu_setup import kombu_connection as connect
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
        except TimeoutError:
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
    """The channel reuses one redis.Redis for its commands and makes a new one after its
    pool is dropped."""
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


def test_binding_watch_is_on_and_ttl_cache_off_by_default(redis_url):
    """By default bindings are kept until Redis says they changed; the TTL cache is off."""
    with connect(redis_url) as conn:
        assert conn.default_channel.binding_tracking is True
        assert conn.default_channel.binding_cache_ttl == 0


#: The TTL cache alone: what a channel does on a server without client tracking.
UNTRACKED = {"binding_tracking": False}


def test_binding_cache_sees_a_new_queue_at_once(redis_url, names):
    """A routing key that matched nothing in the cached table makes the channel read the
    bindings again."""
    cached = Connection(redis_url, transport=busapp_redis.Transport,
                        transport_options={"binding_cache_ttl": 60, **UNTRACKED})
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


def test_binding_cache_reads_the_table_once_per_ttl(private_redis, names):
    """Without the watch, publishes reuse the table for the TTL; with TTL 0 each one reads it."""
    for ttl, expected in ((60.0, 1), (0, 5)):
        conn = Connection(private_redis.url, transport=busapp_redis.Transport,
                          transport_options={"binding_cache_ttl": ttl, **UNTRACKED})
        with conn:
            _bind(conn, names["exchange"], names["q1"], "svc.*")
            channel = conn.default_channel
            producer = Producer(channel)
            exchange = _topic(conn, names["exchange"])
            before = _smembers_calls(private_redis.url)
            for i in range(5):
                producer.publish({"i": i}, exchange=exchange, routing_key="svc.a",
                                 serializer="json")
            assert _smembers_calls(private_redis.url) - before == expected
            assert len(_all(conn, names["q1"])) == 5


def test_unacked_message_is_restored_after_visibility_timeout(redis_url, names):
    """Ack emulation still works:
    a delivered, unacked message comes back once the visibility timeout passes."""
    # Own ack-emulation keys: other processes on this Redis sweep the default ones.
    keys = {k: f"{k}.{names['q1']}"
            for k in ("unacked_key", "unacked_index_key", "unacked_mutex_key")}
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


# -- bindings: indexed, read again only when Redis says they changed --------------------


def _plain_kombu(redis_url: str, code: str) -> None:
    """Run ``code`` (kombu, with ``conn`` connected to ``redis_url``) in another process."""
    import subprocess
    import sys

    script = ("from kombu import Connection, Exchange, Queue\n"
              f"with Connection({redis_url!r}) as conn:\n"
              + "".join(f"    {line}\n" for line in code.strip().splitlines()))
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)


def _bind_elsewhere(redis_url: str, exchange: str, queue: str, key: str) -> None:
    _plain_kombu(redis_url, f"Queue({queue!r}, Exchange({exchange!r}, type='topic', durable=True), "
                            f"routing_key={key!r}, durable=True)(conn.default_channel).declare()")


def _all(conn: Connection, queue: str) -> list:
    """Every message waiting on ``queue`` (``_get`` takes one drain's worth)."""
    got: list = []
    while True:
        more = _get(conn, queue, timeout=0.5)
        if not more:
            return got
        got += more


def _smembers_calls(url: str) -> int:
    import redis

    client = redis.Redis.from_url(url)
    try:
        return int(client.info("commandstats").get("cmdstat_smembers", {}).get("calls", 0))
    finally:
        client.close()


def test_bindings_are_read_again_only_after_they_change(private_redis, names):
    """Publishes reuse the bindings until another connection binds a queue; the next reads them."""
    with connect(private_redis.url) as ours, Connection(private_redis.url) as other:
        _bind(other, names["exchange"], names["q1"], "svc.*")
        producer = Producer(ours.default_channel)
        exchange = _topic(ours, names["exchange"])
        before = _smembers_calls(private_redis.url)
        for i in range(5):
            producer.publish({"i": i}, exchange=exchange, routing_key="svc.a", serializer="json")
        assert _smembers_calls(private_redis.url) - before == 1
        _bind(other, names["exchange"], names["q2"], "svc.a")
        producer.publish({"i": 5}, exchange=exchange, routing_key="svc.a", serializer="json")
        assert _smembers_calls(private_redis.url) - before == 2
        assert [m.payload for m in _get(other, names["q2"])] == [{"i": 5}]


def test_a_queue_bound_by_another_process_gets_the_next_request(redis_url, names):
    """A plain-kombu process binds a second queue to a routed key: the next publish reaches it."""
    with connect(redis_url) as ours:
        _bind(ours, names["exchange"], names["q1"], "svc.*")
        producer = Producer(ours.default_channel)
        exchange = _topic(ours, names["exchange"])
        producer.publish({"n": 1}, exchange=exchange, routing_key="svc.a", serializer="json")
        _bind_elsewhere(redis_url, names["exchange"], names["q2"], "svc.a")
        producer.publish({"n": 2}, exchange=exchange, routing_key="svc.a", serializer="json")
        assert [m.payload for m in _get(ours, names["q2"])] == [{"n": 2}]
        assert [m.payload for m in _all(ours, names["q1"])] == [{"n": 1}, {"n": 2}]


def test_a_queue_deleted_by_another_process_gets_no_more_messages(redis_url, names):
    """After a plain-kombu process deletes a bound queue, publishes stop recreating its list."""
    import redis

    with connect(redis_url) as ours:
        _bind(ours, names["exchange"], names["q1"], "svc.*")
        _bind(ours, names["exchange"], names["q2"], "svc.*")
        producer = Producer(ours.default_channel)
        exchange = _topic(ours, names["exchange"])
        producer.publish({"n": 1}, exchange=exchange, routing_key="svc.a", serializer="json")
        _plain_kombu(redis_url, (  # kombu unbinds only the bindings it declared itself
            f"Queue({names['q2']!r}, Exchange({names['exchange']!r}, type='topic', durable=True),"
            f" routing_key='svc.*', durable=True)(conn.default_channel).declare()\n"
            f"conn.default_channel.queue_delete({names['q2']!r})"))
        producer.publish({"n": 2}, exchange=exchange, routing_key="svc.a", serializer="json")
        client = redis.Redis.from_url(redis_url)
        try:
            assert not client.exists(names["q2"])
        finally:
            client.close()
        assert [m.payload for m in _all(ours, names["q1"])] == [{"n": 1}, {"n": 2}]


def test_without_client_tracking_every_publish_reads_the_bindings(tmp_path, names):
    """A server refusing CLIENT TRACKING: publishes still route, reading the bindings each time."""
    from tests._private_brokers import PrivateRedis

    server = PrivateRedis(tmp_path)
    server.cmd += ["--rename-command", "CLIENT", ""]  # no CLIENT command at all  # private
    server.start()
    try:
        with connect(server.url) as ours:
            _bind(ours, names["exchange"], names["q1"], "svc.*")
            producer = Producer(ours.default_channel)
            exchange = _topic(ours, names["exchange"])
            before = _smembers_calls(server.url)
            for i in range(3):
                producer.publish({"i": i}, exchange=exchange, routing_key="svc.a",
                                 serializer="json")
            assert _smembers_calls(server.url) - before == 3
            assert ours.default_channel.binding_tracking is False
            assert len(_all(ours, names["q1"])) == 3
    finally:
        server.stop()


def test_a_lost_watch_connection_is_replaced(redis_url, names):
    """When the watch connection dies, publishes read the bindings, then a new watch starts."""
    import redis

    with connect(redis_url) as ours, Connection(redis_url) as other:
        channel = ours.default_channel
        channel.WATCHER_RETRY = 0.0  # open the new one at the next publish
        _bind(other, names["exchange"], names["q1"], "svc.*")
        producer = Producer(channel)
        exchange = _topic(ours, names["exchange"])
        producer.publish({"n": 1}, exchange=exchange, routing_key="svc.a", serializer="json")
        lost = channel._watcher
        admin = redis.Redis.from_url(redis_url)
        try:  # only this test's own watch connection
            admin.client_kill_filter(_id=lost.client_id)
        finally:
            admin.close()
        _bind(other, names["exchange"], names["q2"], "svc.a")
        producer.publish({"n": 2}, exchange=exchange, routing_key="svc.a", serializer="json")
        producer.publish({"n": 3}, exchange=exchange, routing_key="svc.a", serializer="json")
        assert channel._watcher is not None and channel._watcher is not lost
        assert [m.payload for m in _all(other, names["q2"])] == [{"n": 2}, {"n": 3}]


def test_a_message_for_several_queues_is_pushed_in_one_pipeline(redis_url, names, monkeypatch):
    """An event bound for two queues: one pipeline pushes it to both, each entry as kombu's
    own channel would push it, and a plain-kombu consumer reads it from each."""
    import json

    with connect(redis_url) as ours, Connection(redis_url) as theirs:
        _bind(theirs, names["exchange"], names["q1"], "orders.*")
        _bind(theirs, names["exchange"], names["q2"], "*.placed")
        channel = ours.default_channel
        pipelines, puts = [], []
        client = channel._create_client()  # the one every command of the channel uses
        real_pipeline = client.pipeline
        monkeypatch.setattr(client, "pipeline",
                            lambda *a, **k: pipelines.append(real_pipeline(*a, **k))
                            or pipelines[-1])
        monkeypatch.setattr(channel, "_put", lambda *a, **k: puts.append(a))
        Producer(channel).publish({"n": 1}, exchange=_topic(ours, names["exchange"]),
                                  routing_key="orders.placed", serializer="json")
        assert puts == [] and len(pipelines) == 1
        raw = theirs.default_channel.client
        first, second = raw.lrange(names["q1"], 0, -1), raw.lrange(names["q2"], 0, -1)
        assert len(first) == 1 and first == second
        assert json.loads(first[0])["properties"]["delivery_info"]["routing_key"] == "orders.placed"
        assert [m.payload for m in _get(theirs, names["q1"])] == [{"n": 1}]
        assert [m.payload for m in _get(theirs, names["q2"])] == [{"n": 1}]
