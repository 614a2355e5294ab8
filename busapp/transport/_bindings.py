"""Which queues a routing key reaches on a Redis exchange, found by index (no I/O).

kombu keeps an exchange's bindings in the Redis set ``_kombu.binding.<exchange>``, one
member per binding: ``<binding key>\\x06\\x16<regex>\\x06\\x16<queue>``. To route a
message kombu matches the routing key against *every* member (topic exchanges) or
compares it with every binding key (direct ones): the cost of a publish grows with the
bindings of the whole exchange. :class:`BindingIndex` answers the same question at the
cost of the bindings that could match:

- a binding key without wildcards is a dict entry;
- a key with ``*`` but no ``#`` can only match routing keys of as many words: such keys
  are grouped by word count and first word (``None`` when that word is a wildcard);
- a key with ``#`` can only match routing keys that start with its first word: grouped
  by it (or ``None``).

Topic keys match as on RabbitMQ (:func:`busapp.transport.base.topic_matches`: ``*`` is
one word, ``#`` zero or more; a word holding a ``*`` is a plain word), by the binding's
key, not by the regex its binding process stored: a binding routes the same on Redis, on
RabbitMQ and in the test client, whichever kombu wrote it. (kombu's own Redis routing
reads ``#`` as one or more words; plain kombu publishers keep that.)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from busapp.transport.base import topic_matches

__all__ = ["BindingIndex"]

#: Routing keys whose result is remembered per index (cleared when full).
MEMO_SIZE = 4096

_Candidate = tuple[str, str]  # (binding key, queue)


class BindingIndex:
    """The bindings of one exchange, as kombu's table rows ``(key, regex, queue)``.

    Args:
        rows: the exchange's table, as ``Channel.get_table`` returns it.
        topic: True for a topic exchange, False for a direct one (key equality).
    """

    def __init__(self, rows: Iterable[tuple[Any, ...]], topic: bool) -> None:
        rows = list(rows)
        self.topic = topic
        #: binding key without wildcards -> queues
        self._exact: dict[str, set[str]] = {}
        #: (word count, first word or None) -> keys with ``*`` and no ``#``
        self._star: dict[tuple[int, str | None], list[_Candidate]] = {}
        #: first word or None -> keys with ``#``
        self._hash: dict[str | None, list[_Candidate]] = {}
        self._memo: dict[str, frozenset[str]] = {}
        #: a row that is not ``(key, regex, queue)``: kombu's lookup fails on it, so does ours
        self._malformed = next((row for row in rows if len(row) != 3), None)
        if self._malformed is None:
            for key, _, queue in rows:
                self._add(key, queue)

    def _add(self, key: str, queue: str) -> None:
        words = key.split(".")
        if not self.topic or ("*" not in words and "#" not in words):
            self._exact.setdefault(key, set()).add(queue)
            return
        first = words[0] if words[0] not in ("*", "#") else None
        if "#" in words:
            self._hash.setdefault(first, []).append((key, queue))
        else:
            self._star.setdefault((len(words), first), []).append((key, queue))

    def lookup(self, routing_key: str) -> frozenset[str]:
        """The queues ``routing_key`` reaches (empty if none)."""
        found = self._memo.get(routing_key)
        if found is None:
            found = frozenset(self._find(routing_key))
            if len(self._memo) >= MEMO_SIZE:
                self._memo.clear()
            self._memo[routing_key] = found
        return found

    def _find(self, routing_key: str) -> set[str]:
        if self._malformed is not None:
            raise ValueError("a binding of this exchange is not (key, regex, queue): "
                             f"{self._malformed!r}")
        found = set(self._exact.get(routing_key, ()))
        if not self.topic:
            return found
        words = routing_key.split(".")
        count, first = len(words), words[0]
        for candidates in (self._star.get((count, first)), self._star.get((count, None)),
                           self._hash.get(first), self._hash.get(None)):
            if candidates:
                found.update(queue for key, queue in candidates
                             if queue not in found and topic_matches(key, routing_key))
        return found
