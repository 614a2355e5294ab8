"""busapp.models: Commissaire's models, the @model decorator, validation and serialisation."""

from __future__ import annotations

import json

import pytest

from busapp import models
from busapp.core.convert import converter
from busapp.models import (
    Cluster,
    ClusterDeploy,
    ContainerManagerConfig,
    Host,
    HostCreds,
    Hosts,
    Model,
    Network,
    ValidationError,
    WatcherRecord,
    field,
    get_model_class,
    model,
    one_of,
)


def test_host_defaults_match_commissaire():
    """Host.new(address=...) fills Commissaire's defaults, and address is the primary key."""
    host = Host.new(address="10.0.0.1")
    assert host.to_dict() == {"address": "10.0.0.1", "status": "", "os": "", "cpus": 0,
                              "memory": 0, "space": 0, "last_check": "", "source": ""}
    assert host.primary_key == "10.0.0.1"


def test_commissaire_defaults_of_other_models():
    """Cluster, Network, ContainerManagerConfig,
    HostCreds and WatcherRecord keep Commissaire's defaults."""
    assert Cluster.new(name="c").network == "default"
    assert Network.new(name="n").type == "flannel_etcd"
    assert ContainerManagerConfig.new(name="m").type == "openshift"
    assert HostCreds.new(address="a").remote_user == "root"
    assert WatcherRecord.new().last_check == "9999-12-31T23:59:59.999999"


def test_wrong_type_names_the_field():
    """A string where an int belongs raises ValidationError naming the field."""
    with pytest.raises(ValidationError, match=r"Host\.cpus: expected an integer") as info:
        Host.new(address="a", cpus="two")
    assert info.value.field == "cpus"


def test_choice_rule_names_the_field_and_choices():
    """Network.type outside {flannel_etcd, flannel_server} is refused, naming both."""
    with pytest.raises(ValidationError, match="flannel_server") as info:
        Network.new(name="n", type="calico")
    assert info.value.field == "type"
    with pytest.raises(ValidationError, match="trivial"):
        ContainerManagerConfig.new(name="m", type="kubernetes")


def test_missing_or_empty_primary_key_is_refused():
    """The primary key is required and must be a non-empty string."""
    with pytest.raises(ValidationError, match=r"Host\.address: is required"):
        Host.new(cpus=1)
    with pytest.raises(ValidationError, match="primary key"):
        Host.new(address="")


def test_unknown_key_is_refused():
    """An unknown key is an error naming it (Commissaire silently dropped it)."""
    with pytest.raises(ValidationError, match=r"Host\.adress: unknown field") as info:
        Host.new(address="a", adress="typo")
    assert info.value.field == "adress"


def test_list_field_requires_an_array_of_strings():
    """A string is not taken as a list of characters; list items are type-checked."""
    with pytest.raises(ValidationError, match=r"Cluster\.hostset: expected an array"):
        Cluster.new(name="c", hostset="abc")
    with pytest.raises(ValidationError, match=r"Cluster\.hostset\[1\]: expected a string"):
        Cluster.new(name="c", hostset=["a", 2])


def test_integral_float_becomes_int():
    """JSON 2.0 for an int field is accepted as 2 (some encoders write integers that way)."""
    assert Host.new(address="a", cpus=2.0).cpus == 2


def test_hidden_fields_left_out_of_safe_form():
    """Cluster.hostset is in to_dict() but not in to_dict(secure=False) nor to_json()."""
    cluster = Cluster.new(name="c", hostset=["10.0.0.1"])
    assert cluster.to_dict()["hostset"] == ["10.0.0.1"]
    assert "hostset" not in cluster.to_dict(secure=False)
    assert "hostset" not in json.loads(cluster.to_json())
    assert "hosts" not in cluster.to_dict()  # computed, never stored


def test_save_rule_only_checked_for_save():
    """ClusterDeploy.version may be empty in a lookup but not in a save."""
    deploy = ClusterDeploy.new(name="c")
    with pytest.raises(ValidationError, match=r"ClusterDeploy\.version: must not be empty"):
        deploy.validate(for_save=True)


def test_watcher_record_date_rule():
    """WatcherRecord.last_check must be in Commissaire's DATE_FORMAT."""
    assert WatcherRecord.new(last_check=models.formatted_dt()).last_check
    with pytest.raises(ValidationError, match="last_check"):
        WatcherRecord.new(last_check="yesterday")


def test_list_model_is_a_json_array():
    """Hosts serialises to a JSON array and is built from one, checking each item."""
    hosts = Hosts.from_dict([{"address": "a"}, {"address": "b", "cpus": 2}])
    assert [h.address for h in hosts.hosts] == ["a", "b"]
    assert hosts.to_dict()[1]["cpus"] == 2
    assert Hosts.new(hosts=[Host.new(address="c")]).hosts[0].address == "c"
    with pytest.raises(ValidationError, match=r"Hosts\.hosts\[1\]\.cpus"):
        Hosts.from_dict([{"address": "a"}, {"address": "b", "cpus": "x"}])


def test_converter_structures_and_unstructures_models():
    """The one converter builds models from JSON objects and back (ValidationError on bad data)."""
    host = converter.structure({"address": "a"}, Host)
    assert isinstance(host, Host)
    assert converter.unstructure([host])[0]["address"] == "a"
    with pytest.raises(ValidationError, match="address"):
        converter.structure({"address": 3}, Host)


@model(primary_key="name")
class ModelsTestWidget(Model):
    """A user model, declared the way the built-ins are."""

    name: str
    colour: str = field(default="red", rule=one_of("red", "blue"))


def test_user_model_registered_by_class_name():
    """@model registers a user model by class name, with its primary key and rules."""
    assert get_model_class("ModelsTestWidget") is ModelsTestWidget
    assert ModelsTestWidget.new(name="w").to_dict() == {"name": "w", "colour": "red"}
    assert ModelsTestWidget.new(name="w").primary_key == "w"
    with pytest.raises(ValidationError, match="colour"):
        ModelsTestWidget.new(name="w", colour="green")


def test_model_decorator_needs_a_model_subclass():
    """@model on a plain class says to subclass Model."""
    with pytest.raises(TypeError, match="subclass of busapp.models.Model"):
        @model
        class Plain:
            x: int = 0


def test_duplicate_model_name_from_elsewhere_is_refused():
    """Declaring another class named Host is refused: names are global on the bus."""
    with pytest.raises(ValueError, match="already declared"):
        @model(primary_key="address")
        class Host(Model):  # noqa: F811 - the point of the test
            address: str


def test_unknown_model_name_lists_the_known_ones():
    """get_model_class of an unknown name raises UnknownModelError listing the known names."""
    with pytest.raises(models.UnknownModelError, match="known: .*Host"):
        get_model_class("Hostz")


def test_mutation_is_caught_by_validate():
    """validate() catches a bad value assigned after construction."""
    host = Host.new(address="a")
    host.cpus = "many"
    with pytest.raises(ValidationError, match="cpus"):
        host.validate()


@pytest.mark.parametrize("value", [10**4000, 2**63, -(2**63) - 1])
def test_int_field_outside_64_bits_is_refused(value):
    """An int field refuses a value beyond signed 64 bits, naming the field."""
    with pytest.raises(ValidationError) as info:
        Host.new(address="h", cpus=value)
    assert info.value.field == "cpus"
    assert "signed 64-bit" in str(info.value)


def test_int_field_takes_the_64_bit_extremes():
    """The largest and smallest signed 64-bit integers are accepted."""
    assert Host.new(address="h", cpus=2**63 - 1, memory=-(2**63)).cpus == 2**63 - 1


@model(primary_key="name")
class ModelsTestCounts(Model):
    """A user model with typed containers of ints."""

    name: str
    sizes: list[int] = field(factory=list)
    limits: dict[str, int] = field(factory=dict)


def test_ints_inside_typed_lists_and_dicts_are_bounded_too():
    """list[int] and dict[str, int] fields check each item's range, naming where it is."""
    with pytest.raises(ValidationError) as info:
        ModelsTestCounts.new(name="c", sizes=[1, 2**64])
    assert info.value.field == "sizes[1]"
    with pytest.raises(ValidationError) as info:
        ModelsTestCounts.new(name="c", limits={"cpu": -(2**70)})
    assert info.value.field == "limits['cpu']"
    assert ModelsTestCounts.new(name="c", sizes=[2**63 - 1]).sizes == [2**63 - 1]
