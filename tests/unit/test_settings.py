import re

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


@pytest.mark.parametrize(
    ("env", "said"),
    [
        ({"LKCTL_VM_READY_TIMEOUT": "-1"}, "lkctl.vm.ready_timeout must be a number of seconds above 0, got -1"),
        ({"LKCTL_VM_READY_TIMEOUT": "0"}, "lkctl.vm.ready_timeout must be a number of seconds above 0, got 0"),
        ({"LKCTL_VM_READY_TIMEOUT": "inf"}, "got inf"),
        ({"LKCTL_VM_READY_TIMEOUT": "nan"}, "got nan"),
        ({"LKCTL_VM_STOP_TIMEOUT": "-2"}, "lkctl.vm.stop_timeout must be a number of seconds, 0 or more, got -2"),
        ({"LKCTL_SOURCES_TIMEOUT": "0"}, "environment LKCTL_SOURCES_TIMEOUT: lkctl.sources.timeout must be"),
    ],
)
def test_a_timeout_that_cannot_be_waited_is_refused(env: dict[str, str], said: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(said)):
        load_settings({}, env=env)


def test_a_timeout_from_config_is_checked_too_and_a_stop_timeout_of_0_is_allowed() -> None:
    with pytest.raises(ConfigError, match=r"^config: lkctl\.vm\.ready_timeout"):
        load_settings({"lkctl": {"vm": {"ready_timeout": -5}}}, env={})
    assert load_settings({"lkctl": {"vm": {"stop_timeout": 0}}}, env={}).vm.stop_timeout == 0
