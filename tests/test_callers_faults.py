"""What a caller relies on when the broker refuses or drops it: typed errors, no silent timeouts.

On private brokers (tests/_private_brokers.py): restricted RabbitMQ users and cut connections.
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from busapp import Client
from busapp.errors import AccessRefused, BrokerUnavailable, RequestTimeout
from tests._services import run_app
from tests.apps import make_app


@pytest.fixture
def rabbit_app(private_rabbitmq):
    """A test App served (as guest) on a private RabbitMQ node; yields (node, app, exchange)."""
    token = uuid.uuid4().hex[:8]
    app = make_app(f"p{token}")
    exchange = f"test-{token}"
    with run_app(app, private_rabbitmq.url, exchange):
        yield private_rabbitmq, app, exchange


def _user(node, name: str, configure: str, write: str = ".*", read: str = ".*") -> str:
    node.ctl("add_user", name, "secret")
    node.ctl("set_permissions", "-p", "/", name, configure, write, read)
    return f"amqp://{name}:secret@127.0.0.1:{node.port}//"


def test_caller_needs_no_configure_permission_on_the_exchange(rabbit_app):
    """A user who may configure only its own reply queue (busapp.reply.*) calls services."""
    node, app, exchange = rabbit_app
    url = _user(node, "caller", r"^busapp\.reply\..*")
    with Client(url, exchange) as bus:
        assert bus.call(f"{app.name}.add", 1, 2) == 3


def test_missing_permission_is_access_refused_not_unavailable(rabbit_app):
    """A user who may configure nothing gets AccessRefused, not 'broker unavailable'."""
    node, app, exchange = rabbit_app
    url = _user(node, "nobody", "^$")
    with Client(url, exchange) as bus:
        with pytest.raises(AccessRefused) as info:
            bus.call(f"{app.name}.add", 1, 2)
    assert not isinstance(info.value, BrokerUnavailable)
    assert "refused" in str(info.value)


def test_topic_permission_refusal_is_raised_not_timed_out(rabbit_app):
    """A publish refused by a topic permission raises AccessRefused, not RequestTimeout."""
    node, app, exchange = rabbit_app
    url = _user(node, "limited", r"^busapp\.reply\..*")
    node.ctl("set_topic_permissions", "-p", "/", "limited", exchange, r"^allowed\..*", ".*")
    with Client(url, exchange, timeout=30) as bus:
        with pytest.raises(AccessRefused):
            bus.call(f"{app.name}.add", 1, 2)


def test_first_call_after_connections_are_closed_succeeds(rabbit_app):
    """After the broker closes every connection,
    the client's next call reconnects and is answered."""
    node, app, exchange = rabbit_app
    with Client(node.url, exchange, timeout=30) as bus:
        assert bus.call(f"{app.name}.add", 1, 2) == 3
        node.ctl("close_all_connections", "test: connections dropped")  # private
        time.sleep(0.5)
        assert bus.call(f"{app.name}.add", 2, 2) == 4
        assert bus.call(f"{app.name}.add", 3, 2) == 5


def test_unavailable_after_publish_says_the_request_may_have_run(private_redis):
    """A broker lost while a call waits:
    BrokerUnavailable says the request may have been delivered."""
    token = uuid.uuid4().hex[:8]
    app = make_app(f"q{token}")
    exchange = f"test-{token}"
    with run_app(app, private_redis.url, exchange):
        with Client(private_redis.url, exchange, timeout=30) as bus:
            assert bus.call(f"{app.name}.add", 1, 2) == 3
            threading.Timer(0.5, private_redis.stop).start()  # private
            with pytest.raises(BrokerUnavailable) as info:
                bus.call(f"{app.name}.slow", 3)
            assert "may have been delivered" in str(info.value)
            with pytest.raises(BrokerUnavailable) as info:
                bus.call(f"{app.name}.add", 1, 2)
            assert "not sent" in str(info.value)
            assert not isinstance(info.value, RequestTimeout)
        private_redis.start()  # private: for the clean-up


def test_the_broker_down_error_is_a_public_class(private_redis):
    """A call with the broker down raises BrokerUnavailable itself (no private subclass),
    saying the request was not sent (``sent`` is False: safe to repeat)."""
    with Client(private_redis.url, f"test-{uuid.uuid4().hex[:8]}", timeout=5) as bus:
        private_redis.stop()  # private
        with pytest.raises(BrokerUnavailable) as info:
            bus.call("nobody.add", 1, 2)
        private_redis.start()  # private: for the clean-up
    assert type(info.value) is BrokerUnavailable
    assert info.value.sent is False and "not sent" in str(info.value)


def test_a_call_whose_reply_queue_is_lost_ends_at_once(private_redis):
    """A call waiting on a reply queue lost with its broker node (a RabbitMQ cluster node that
    died: the client carries on with a new queue) gets BrokerUnavailable at once, saying it
    may have been delivered, instead of waiting out its timeout for a reply that cannot come."""
    token = uuid.uuid4().hex[:8]
    app = make_app(f"q{token}")
    exchange = f"test-{token}"
    with run_app(app, private_redis.url, exchange), \
            Client(private_redis.url, exchange, timeout=30) as bus:
        lost = bus.reply_queue
        threading.Timer(0.5, bus._replies._lose, args=(lost,)).start()
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable, match="was lost with its broker node") as info:
            bus.call(f"{app.name}.slow", 5)
        assert time.monotonic() - started < 4  # not the 5 s call, nor the 30 s timeout
        assert "may have been delivered" in str(info.value)
