"""StorageClient: what it refuses before calling, and its versioned calls under the test client."""

from __future__ import annotations

import pytest

from busapp.errors import Conflict, InternalError
from busapp.models import Host
from busapp.service import CommissaireService
from busapp.storage.client import StorageClient
from busapp.testing import TestClient


class _NoBus:
    """A bus that must not be called: the client refuses the argument before any call."""

    def call(self, *args, **kwargs):
        raise AssertionError("the storage service was called")


@pytest.mark.parametrize("op", ["save", "get", "delete", "get_versioned"])
def test_a_dict_instead_of_a_model_says_to_annotate_the_parameter(op):
    """storage.save(dict) (an unannotated handler param) is a TypeError saying how
    to get a model."""
    storage = StorageClient(_NoBus())
    with pytest.raises(TypeError) as info:
        getattr(storage, op)({"address": "10.9.0.8"})
    text = str(info.value)
    assert f"storage.{op}() takes a model instance" in text
    assert "got a dict" in text
    assert "host: Host" in text and "Host.from_dict" in text


def test_a_dict_in_save_many_is_refused_the_same_way():
    """save_many with a dict among the models: the same TypeError, naming save_many."""
    storage = StorageClient(_NoBus())
    with pytest.raises(TypeError, match=r"storage\.save_many\(\) takes a model instance"):
        storage.save_many([Host.new(address="a"), {"address": "b"}])


class SeedService(CommissaireService):
    """The seed document's handler, as written there: ``host`` is not annotated."""

    def on_do_something_cool(self, message, host):
        return StorageClient(self).save(host).to_dict()


class AnnotatedSeedService(CommissaireService):
    """The same handler with the annotation the error message asks for."""

    def on_do_something_cool(self, message, host: Host):
        return StorageClient(self).save(host).to_dict()


def test_seed_document_handler_gets_the_hint_and_the_annotated_one_works():
    """The unannotated handler's caller sees the annotate-the-parameter hint;
    with ``host: Host`` it saves."""
    with TestClient() as client:
        client.register(SeedService)
        client.register(AnnotatedSeedService)
        with pytest.raises(InternalError, match=r"annotate the parameter .*host: Host"):
            client.call("seedservice.do_something_cool", host={"address": "10.9.1.1"})
        saved = client.call("annotatedseedservice.do_something_cool", host={"address": "10.9.1.1"})
        assert saved["address"] == "10.9.1.1"
        assert client.storage.get_host("10.9.1.1") == Host.new(address="10.9.1.1")


def test_conflict_under_the_test_client():
    """Under the in-memory TestClient too,
    a stale expect_version raises Conflict and update() retries."""
    with TestClient() as client:
        storage = client.storage
        storage.save(Host.new(address="h", cpus=1))
        host, version = storage.get_versioned(Host.new(address="h"))
        storage.save(Host.new(address="h", cpus=2))
        with pytest.raises(Conflict):
            storage.save(host, expect_version=version)
        updated = storage.update(Host.new(address="h"), lambda h: setattr(h, "cpus", h.cpus + 1))
        assert updated.cpus == 3
