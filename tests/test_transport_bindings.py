"""The binding index of busapp's Redis transport routes as RabbitMQ does, at the cost of the
bindings that could match (no broker).

The reference is :func:`busapp.transport.memory.topic_matches`, which the transport contract
suite (tests/contracts) checks against RabbitMQ.
"""

from __future__ import annotations

import itertools

from busapp.transport._bindings import BindingIndex
from busapp.transport.memory import topic_matches


def _rows(*keys: str) -> list[tuple[str, str, str]]:
    """Table rows for ``keys``, one queue each (``q<key>``); the stored regex is not used."""
    return [(key, "<regex>", f"q{key}") for key in keys]


def _routes(key: str, *bindings: str) -> bool:
    """Whether ``key`` reaches a queue bound with one of ``bindings`` (checked against a scan)."""
    rows = _rows(*bindings)
    found = BindingIndex(rows, topic=True).lookup(key)
    assert found == {queue for binding, _, queue in rows if topic_matches(binding, key)}
    return bool(found)


def test_agrees_with_a_full_scan_on_every_small_pattern_and_key():
    """For every binding and routing key made of a few words, the index finds what a scan of
    every binding finds."""
    words = ["", "a", "b", "*", "#", "a*", "a#"]
    keys = [".".join(p) for n in (1, 2, 3) for p in itertools.product(words + ["a\n"], repeat=n)]
    rows = [(".".join(parts), "<regex>", f"q{i}") for i, parts in enumerate(
        p for n in (1, 2, 3) for p in itertools.product(words, repeat=n))]
    index = BindingIndex(rows, topic=True)
    for key in keys:
        expected = {queue for binding, _, queue in rows if topic_matches(binding, key)}
        assert index.lookup(key) == expected, key


def test_star_is_exactly_one_word():
    """``*`` matches one word (an empty one too, as RabbitMQ does), never two or none."""
    assert _routes("a.b", "a.*")
    assert _routes("a.", "a.*")
    assert not _routes("a.b.c", "a.*")
    assert not _routes("a", "a.*")


def test_hash_is_zero_or_more_words():
    """``#`` matches zero or more words: ``a.#`` reaches ``a`` too (kombu's own Redis routing
    would miss it; RabbitMQ does not)."""
    assert _routes("a", "a.#")
    assert _routes("a.b", "a.#")
    assert _routes("a.b.c.d", "a.#")
    assert _routes("", "#")
    assert _routes("a.b", "a.#.b")
    assert _routes("a.x.y.b", "a.#.b")
    assert not _routes("b.a", "a.#")


def test_empty_words_are_words():
    """``a..b`` is three words: a literal binding and ``a.*.b`` match it, ``a.b`` does not."""
    assert _routes("a..b", "a..b")
    assert _routes("a..b", "a.*.b")
    assert not _routes("a.b", "a..b")


def test_a_word_holding_a_star_is_a_plain_word():
    """``a*`` in a binding is the word ``a*``, not a wildcard."""
    assert _routes("a*.b", "a*.b")
    assert not _routes("ab.b", "a*.b")


def test_the_stored_regex_is_not_used():
    """A binding routes by its key whatever regex its binding process stored with it."""
    rows = [("a.#", "^nonsense$", "q1")]
    assert BindingIndex(rows, topic=True).lookup("a") == {"q1"}


def test_direct_exchange_compares_keys():
    """On a direct exchange, wildcards are plain characters: only equal keys match."""
    rows = [("a.*", "<regex>", "q1"), ("a.b", "<regex>", "q2")]
    index = BindingIndex(rows, topic=False)
    assert index.lookup("a.*") == {"q1"}
    assert index.lookup("a.b") == {"q2"}
    assert index.lookup("a.c") == set()


def test_one_queue_bound_twice_is_found_once():
    """A queue bound with two matching keys is one result."""
    rows = [("a.*", "<regex>", "q"), ("a.#", "<regex>", "q")]
    assert BindingIndex(rows, topic=True).lookup("a.b") == {"q"}


def test_other_bindings_are_not_candidates():
    """A routing key is matched only against bindings of its shape: 1,000 other services'
    bindings are never looked at."""
    rows = [(f"svc{i}.*", "<regex>", f"q{i}") for i in range(1000)] + [("mine.*", "<r>", "me")]
    index = BindingIndex(rows, topic=True)
    assert index.lookup("mine.ping") == {"me"}
    assert len(index._star[(2, "mine")]) == 1


def test_a_malformed_member_fails_as_in_kombu():
    """A member that is not (key, regex, queue) makes the lookup fail, as kombu's would."""
    index = BindingIndex([("a.*", "<regex>")], topic=True)
    try:
        index.lookup("a.b")
    except ValueError as exc:
        assert "not (key, regex, queue)" in str(exc)
    else:
        raise AssertionError("a malformed binding was accepted")
