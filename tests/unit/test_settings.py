import pytest

from lkctl.errors import ConfigError
from lkctl.settings import Settings, invoke_defaults, load_settings


def test_defaults_live_in_code() -> None:
    s = load_settings({}, env={})
    assert s == Settings()
    assert s.vm.memory == 1024 and s.vm.cpus == 1 and s.vm.accel == "auto"


def test_config_then_environment_override_defaults() -> None:
    cfg = {"lkctl": {"vm": {"memory": 2048, "cpus": 2}}}
    s = load_settings(cfg, env={"LKCTL_VM_CPUS": "4"})
    assert s.vm.memory == 2048
    assert s.vm.cpus == 4


def test_unknown_key_is_named() -> None:
    with pytest.raises(ConfigError, match=r"lkctl\.vm\.memroy"):
        load_settings({"lkctl": {"vm": {"memroy": 1}}}, env={})


def test_wrong_type_is_named_with_its_origin() -> None:
    with pytest.raises(ConfigError, match="environment LKCTL_VM_MEMORY"):
        load_settings({}, env={"LKCTL_VM_MEMORY": "lots"})


def test_invoke_defaults_round_trip() -> None:
    assert load_settings(invoke_defaults(), env={}) == Settings()
