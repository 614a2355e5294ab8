"""Which queues a routing key reaches on a kombu Redis exchange, found by index (no I/O).

kombu keeps an exchange's bindings in the Redis set ``_kombu.binding.<exchange>``, one
member per binding: ``<binding key>\\x06\\x16<regex>\\x06\\x16<queue>``. To route a
message it matches the routing key against *every* member's regex (topic exchanges) or
compares it with every binding key (direct ones): the cost of a publish grows with the
bindings of the whole exchange. :class:`BindingIndex` answers the same question, with
the same answer, at the cost of the bindings that could match:

- a binding key without wildcards is a dict entry;
- a key with ``*`` but no ``#`` can only match routing keys of as many words: such keys
  are grouped by word count and first word (``None`` when that word is a wildcard);
- a key with ``#`` can only match routing keys that start with its first word (the regex
  starts with that word and a dot): grouped by it (or ``None``);
- what the index cannot place is matched as kombu matches it, by its stored regex: a
  member whose regex is not the one kombu makes of its key (written by another kombu
  version, or bound while the exchange was declared direct), a key with a ``*`` inside
  a word (kombu leaves it to the regex engine as a quantifier), and any routing key
  with a newline (the regex ``$`` and ``.`` treat it specially).

This module does no I/O and imports nothing of kombu (the channel passes kombu's
``key_to_pattern``). kombu's topic semantics are not quite AMQP's: ``*`` is one
non-empty word and ``#`` is one or more words (``a.#`` does not match ``a``, as it would
on RabbitMQ). Redis routing must equal kombu's, since plain kombu processes publish on
the same exchanges, so the index keeps kombu's semantics; the candidates it finds are
checked with kombu's regex.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["BindingIndex"]

#: Routing keys whose result is remembered per index (cleared when full).
MEMO_SIZE = 4096

_Matcher = tuple[re.Pattern[str], str]  # (kombu's compiled regex, queue)


#: Compiled binding regexes, shared by every index (kombu keeps such a cache too).
_COMPILED: dict[str, re.Pattern[str]] = {}


def _regex(pattern: str) -> re.Pattern[str]:
    compiled = _COMPILED.get(pattern)
    if compiled is None:
        if len(_COMPILED) >= 100_000:
            _COMPILED.clear()
        compiled = _COMPILED[pattern] = re.compile(pattern, re.U)  # as kombu's _match
    return compiled


class BindingIndex:
    """The bindings of one exchange, as kombu's table rows ``(key, regex, queue)``.

    Args:
        rows: the exchange's table, as ``Channel.get_table`` returns it.
        pattern_of: kombu's ``TopicExchange.key_to_pattern``, the regex kombu stores for a
            binding key; None: match as a direct exchange (key equality).

    :meth:`lookup` returns what kombu's ``TopicExchange.lookup`` (or
    ``DirectExchange.lookup``) returns for the same table and routing key.
    """

    def __init__(self, rows: Iterable[tuple[Any, ...]],
                 pattern_of: Callable[[str], str] | None) -> None:
        self.rows = list(rows)
        self.topic = pattern_of is not None
        self._pattern_of = pattern_of
        #: binding key without wildcards -> queues
        self._exact: dict[str, set[str]] = {}
        #: (word count, first word or None) -> matchers of keys with ``*`` and no ``#``
        self._star: dict[tuple[int, str | None], list[_Matcher]] = {}
        #: first word or None -> matchers of keys with ``#``
        self._hash: dict[str | None, list[_Matcher]] = {}
        #: matched by regex whatever the routing key
        self._other: list[_Matcher] = []
        self._memo: dict[str, frozenset[str]] = {}
        #: whether kombu's ``*`` is one word, as the grouping by word count assumes (kombu
        #: 5.3's ``.*?[^.]`` spans dots: its ``*`` keys are then grouped by first word only)
        self._star_is_a_word = pattern_of is not None and pattern_of("*") == r"^[^\.]+$"
        #: a row that is not ``(key, regex, queue)``: kombu's lookup fails on it, so does ours
        self._malformed = any(len(row) != 3 for row in self.rows)
        if not self._malformed:
            for key, pattern, queue in self.rows:
                self._add(key, pattern, queue)

    def __len__(self) -> int:
        return len(self.rows)

    def _add(self, key: str, pattern: str, queue: str) -> None:
        if self._pattern_of is None:
            self._exact.setdefault(key, set()).add(queue)
            return
        words = key.split(".")
        wild = [w for w in words if w in ("*", "#")]
        if pattern != self._pattern_of(key) or any(
                ("*" in w or "#" in w) for w in words if w not in ("*", "#")):
            self._other.append((_regex(pattern), queue))
        elif not wild:
            self._exact.setdefault(key, set()).add(queue)
        else:
            first = words[0] if words[0] not in ("*", "#") else None
            matcher = (_regex(pattern), queue)
            if "#" in wild or not self._star_is_a_word:
                self._hash.setdefault(first, []).append(matcher)
            else:
                self._star.setdefault((len(words), first), []).append(matcher)

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
        if self._malformed:
            raise ValueError("a binding of this exchange is not (key, regex, queue): "
                             f"{next(r for r in self.rows if len(r) != 3)!r}")
        if not self.topic:
            return set(self._exact.get(routing_key, ()))
        if "\n" in routing_key:  # kombu's regexes treat a newline specially: ask them all
            return {queue for _, pattern, queue in self.rows
                    if _regex(pattern).match(routing_key)}
        found = set(self._exact.get(routing_key, ()))
        words = routing_key.split(".")
        count, first = len(words), words[0]
        for candidates in (self._star.get((count, first)), self._star.get((count, None)),
                           self._hash.get(first), self._hash.get(None), self._other):
            if candidates:
                found.update(queue for regex, queue in candidates
                             if queue not in found and regex.match(routing_key))
        return found
