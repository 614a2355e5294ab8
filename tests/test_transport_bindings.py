"""The binding index of busapp's Redis transport routes exactly as kombu's regexes (no broker)."""

from __future__ import annotations

import itertools
import re

import pytest
from kombu.transport.virtual.exchange import DirectExchange, TopicExchange

from busapp.transport._bindings import BindingIndex

TOPIC = TopicExchange(None)


def _rows(*keys: str) -> list[tuple[str, str, str]]:
    """kombu's table rows for ``keys`` bound on a topic exchange, one queue each (``q<key>``)."""
    return [(key, TOPIC.key_to_pattern(key), f"q{key}") for key in keys]


def _index(rows: list[tuple[str, ...]]) -> BindingIndex:
    """The index of a topic exchange's ``rows``."""
    return BindingIndex(rows, TOPIC.key_to_pattern)


def _routes(key: str, *bindings: str) -> bool:
    """Whether ``key`` reaches a queue bound with one of ``bindings`` (kombu agreeing)."""
    rows = _rows(*bindings)
    found = _index(rows).lookup(key)
    assert found == TOPIC.lookup(rows, "x", key, None)
    return bool(found)


def test_matches_kombu_on_every_small_pattern_and_key():
    """For every binding and routing key made of a few words, the index finds kombu's queues."""
    words = ["", "a", "b", "*", "#", "a*", "a#"]
    keys = [".".join(p) for n in (1, 2, 3) for p in itertools.product(words + ["a\n"], repeat=n)]
    rows = []
    for n in (1, 2, 3):
        for parts in itertools.product(words, repeat=n):
            key = ".".join(parts)
            pattern = TOPIC.key_to_pattern(key)
            try:
                re.compile(pattern)
            except re.error:  # "*a"-like words: kombu fails on them at publish time too
                continue
            rows.append((key, pattern, f"q{len(rows)}"))
    index = _index(rows)
    for key in keys:
        assert index.lookup(key) == TOPIC.lookup(rows, "x", key, None), key


@pytest.mark.skipif(TOPIC.wildcards["*"] != r"[^\.]+",
                    reason="this kombu's * is .*?[^.], which spans dots (kombu 5.3)")
def test_star_is_one_non_empty_word():
    """``*`` matches one word, and not an empty one (kombu's ``[^.]+``)."""
    assert _routes("a.b", "a.*")
    assert not _routes("a.", "a.*")
    assert not _routes("a.b.c", "a.*")
    assert not _routes("a", "a.*")


def test_hash_is_one_or_more_words_as_in_kombu():
    """``#`` matches one or more words, never none: ``a.#`` misses ``a`` (AMQP would match)."""
    assert _routes("a.b", "a.#")
    assert _routes("a.b.c.d", "a.#")
    assert _routes("a.", "a.#")
    assert not _routes("a", "a.#")
    assert _routes("", "#")
    assert not _routes("a.b", "a.#.b")
    assert _routes("a.x.y.b", "a.#.b")


def test_empty_words_are_words():
    """``a..b`` is three words: a literal binding matches it, ``a.*.b`` does not, ``a.#.b`` does."""
    assert _routes("a..b", "a..b")
    assert not _routes("a..b", "a.*.b")
    assert _routes("a..b", "a.#.b")
    assert not _routes("a.b", "a..b")


def test_a_word_with_a_star_inside_is_a_regex_as_in_kombu():
    """A ``*`` inside a word is a regex quantifier to kombu (``a*``: "a" repeated): here too."""
    assert _routes("aaa.x", "a*.x") and _routes(".x", "a*.x")
    assert not _routes("b.x", "a*.x")


def test_a_stored_regex_is_trusted_over_the_key():
    """A member whose regex is not the one kombu makes of its key routes by that regex."""
    rows = [("svc.*", "", "everything"), ("svc.*", "^svc\\.only$", "odd")]
    index = _index(rows)
    assert index.lookup("other.key") == {"everything"}
    assert index.lookup("svc.only") == {"everything", "odd"}


def test_a_binding_written_by_an_older_kombu_routes_by_its_own_regex():
    """kombu 5.3 stored ``*`` as ``.*?[^.]`` (spanning dots): such a member still routes so."""
    rows = [("svc.*", "^svc\\..*?[^\\.]$", "old"), *_rows("other.*")]
    index = _index(rows)
    assert index.lookup("svc.a.b") == TOPIC.lookup(rows, "x", "svc.a.b", None) == {"old"}


def test_newline_in_a_routing_key_follows_the_regex():
    """A routing key ending in a newline matches ``$`` as in kombu's regexes."""
    rows = _rows("svc.a", "svc.*")
    assert _index(rows).lookup("svc.a\n") == TOPIC.lookup(rows, "x", "svc.a\n", None)
    assert _index(rows).lookup("svc.a\n") == {"qsvc.a", "qsvc.*"}


def test_direct_exchange_compares_keys():
    """On a direct exchange a binding key is compared as it is: wildcards are plain characters."""
    rows = [("svc.*", "", "star"), ("svc.a", "", "a")]
    index = BindingIndex(rows, None)
    assert index.lookup("svc.a") == DirectExchange(None).lookup(rows, "x", "svc.a", None) == {"a"}
    assert index.lookup("svc.*") == {"star"}


def test_one_queue_bound_twice_is_found_once():
    """A queue bound by two matching keys is one destination."""
    assert _index([*_rows("svc.*"), ("svc.#", TOPIC.key_to_pattern("svc.#"), "qsvc.*")]
                        ).lookup("svc.a") == {"qsvc.*"}


def test_other_bindings_are_not_candidates():
    """Bindings of other first words and other word counts are never matched against the key."""
    others = (f"other{i}.*" for i in range(50))
    index = _index(_rows("svc.*", "notify.#", "busapp-control", *others))
    assert index.lookup("svc.echo") == {"qsvc.*"}
    assert index.lookup("notify.storage.Host.created") == {"qnotify.#"}
    assert index.lookup("nobody.here") == frozenset()


def test_a_malformed_member_fails_as_in_kombu():
    """A member that does not split into (key, regex, queue) fails the lookup, as kombu's does."""
    rows = [("svc.*", TOPIC.key_to_pattern("svc.*"), "q", "extra")]
    with pytest.raises(ValueError):
        TOPIC.lookup(rows, "x", "svc.a", None)
    with pytest.raises(ValueError):
        _index(rows).lookup("svc.a")
