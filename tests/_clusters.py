"""Broker clusters built by the tests on this machine: 3 RabbitMQ nodes, Redis with Sentinels.

Everything is private, like tests/_private_brokers.py: own node names, ports of 127.0.0.1,
a shared Erlang cookie in the nodes' own HOMEs, config and data in the test's tmp dir; every
process is started in its own session and killed with its group on teardown. Lines that act
on a private instance only end with ``# private``.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests._private_brokers import (
    RABBITMQ_BIN,
    PrivateRabbitMQ,
    PrivateRedis,
    _kill_group,
    free_port,
)

#: Small Erlang VMs: one scheduler each, so three nodes fit on a shared 2-core machine.
ERL_ARGS = "+S 1:1 +A 4"


class RabbitCluster:
    """Three RabbitMQ nodes joined into one cluster (``nodes[0]`` is the seed)."""

    def __init__(self, workdir: Path, size: int = 3) -> None:
        cookie = uuid.uuid4().hex.upper()
        self.nodes: list[PrivateRabbitMQ] = []
        for i in range(size):
            home = workdir / f"node{i}"
            home.mkdir()
            cookie_file = home / ".erlang.cookie"
            cookie_file.write_text(cookie)
            cookie_file.chmod(0o400)
            node = PrivateRabbitMQ(home)
            node.env["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"] = ERL_ARGS
            self.nodes.append(node)
        #: The broker URL listing every node (kombu's failover form).
        self.url = ";".join(node.url for node in self.nodes)
        self.built_in = 0.0

    def start(self) -> None:
        """Start every node at once, then join the others to the first; sets ``built_in``."""
        t0 = time.monotonic()
        for node in self.nodes:
            node.log = open(node.workdir / "server.out", "w")  # noqa: SIM115 - closed in stop()
            node.proc = subprocess.Popen(  # private
                [str(RABBITMQ_BIN / "rabbitmq-server")], env=node.env, cwd=node.workdir,
                stdout=node.log, stderr=subprocess.STDOUT, start_new_session=True)
        for node in self.nodes:
            node._wait_for_amqp(time.monotonic() + 120)
        seed = self.nodes[0]
        for node in self.nodes[1:]:
            node.ctl("stop_app")  # private
            node.ctl("join_cluster", seed.node)  # private
            node.ctl("start_app")  # private
        for node in self.nodes:
            node._wait_for_amqp(time.monotonic() + 60)
        self.built_in = time.monotonic() - t0

    def node_named(self, name: str) -> PrivateRabbitMQ:
        return next(node for node in self.nodes if node.node == name)

    def leader_of(self, queue: str) -> PrivateRabbitMQ:
        """The node leading quorum queue ``queue`` now."""
        alive = next(node for node in self.nodes if node.proc.poll() is None)
        out = alive.ctl("list_queues", "-q", "--no-table-headers", "name", "leader").stdout
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == queue:
                return self.node_named(parts[1])
        raise LookupError(f"no quorum queue {queue!r} in: {out!r}")

    def kill(self, node: PrivateRabbitMQ) -> None:
        """kill -9 the node (a crash: its Erlang VM and everything in its group)."""
        _kill_group(node.proc)  # private

    def stop(self) -> None:
        for node in self.nodes:
            if node.proc is not None:
                _kill_group(node.proc)  # private: no orderly stop needed, the data is thrown away
                node.log.close()


class RedisSentinels:
    """A Redis primary, one replica and three Sentinels watching them as ``mymaster``."""

    MASTER = "mymaster"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        (workdir / "primary").mkdir()
        (workdir / "replica").mkdir()
        self.primary = PrivateRedis(workdir / "primary")
        self.replica = PrivateRedis(workdir / "replica")
        for server in (self.primary, self.replica):  # a replica syncs at once, not after 5 s
            server.cmd += ["--repl-diskless-sync-delay", "0"]
        self.replica.cmd += ["--replicaof", "127.0.0.1", str(self.primary.port)]
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.sentinels: list[subprocess.Popen] = []
        #: The broker URL listing every Sentinel.
        self.url = ";".join(f"sentinel://127.0.0.1:{p}" for p in self.sentinel_ports) \
            + f"/0?master_name={self.MASTER}"
        self.built_in = 0.0

    def start(self) -> None:
        """Start primary, replica and Sentinels; wait until the Sentinels see the replica."""
        server = shutil.which("redis-server")
        if server is None:
            pytest.fail("redis-server is not installed")
        t0 = time.monotonic()
        self.primary.start()
        self.replica.start()
        for port in self.sentinel_ports:
            conf = self.workdir / f"sentinel-{port}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.workdir}\n"
                f"sentinel monitor {self.MASTER} 127.0.0.1 {self.primary.port} 2\n"
                f"sentinel down-after-milliseconds {self.MASTER} 1000\n"
                f"sentinel failover-timeout {self.MASTER} 10000\n"
                f"sentinel parallel-syncs {self.MASTER} 1\n")
            self.sentinels.append(subprocess.Popen(  # private
                [server, str(conf), "--sentinel"], stdout=subprocess.DEVNULL,
                start_new_session=True))
        self._wait(lambda: all(self._ready(p) for p in self.sentinel_ports), 60,
                   "the Sentinels did not find the replica and each other")
        self.built_in = time.monotonic() - t0

    def _ready(self, port: int) -> bool:
        """Sentinel ``port`` sees the replica up and the two other Sentinels
        (a failover needs them)."""
        import redis

        try:
            sentinel = redis.Redis(port=port)  # private
            replicas = sentinel.sentinel_slaves(self.MASTER)
            others = sentinel.sentinel_sentinels(self.MASTER)
        except redis.RedisError:
            return False
        synced = redis.Redis(port=self.replica.port).info("replication")  # private
        return len(others) == 2 and synced.get("master_link_status") == "up" and any(
            r.get("is_slave") and not r.get("is_sdown") for r in replicas)

    @staticmethod
    def _wait(check, seconds: float, why: str) -> None:
        end = time.monotonic() + seconds
        while not check():
            if time.monotonic() > end:
                raise RuntimeError(why)
            time.sleep(0.2)

    def master_port(self) -> int:
        """The port of the master the Sentinels name now."""
        import redis

        return int(redis.Redis(port=self.sentinel_ports[0])  # private
                   .sentinel_get_master_addr_by_name(self.MASTER)[1])

    def stop(self) -> None:
        for proc in self.sentinels:
            _kill_group(proc)  # private
        self.replica.stop()
        self.primary.stop()
