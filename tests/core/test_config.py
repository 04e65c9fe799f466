from typing import Literal

import numpy as np
import pytest
import torch

from prunekit.core.config import Config, ConfigError
from prunekit.core.deprecation import PrunekitDeprecationWarning, renamed_args
from prunekit.core.fraction import Keep, Sparsity, check_fraction
from prunekit.core.registry import Registry


class DemoConfig(Config):
    method: Literal["demo"] = "demo"
    sparsity: Sparsity | None = None
    keep: Keep = 1.0
    allocation: str = "uniform"
    steps: int = 1


def test_check_fraction_takes_any_real_number():
    assert check_fraction(np.float32(0.5)) == 0.5
    assert check_fraction(np.int64(0)) == 0.0
    assert check_fraction(torch.tensor(0.25)) == 0.25
    assert check_fraction(1, "keep", "(0, 1]") == 1.0


@pytest.mark.parametrize("bad", [1.0, -0.1, float("nan"), float("inf")])
def test_check_fraction_refuses_out_of_range(bad):
    with pytest.raises(ValueError, match=r"sparsity must be a number in \[0, 1\)"):
        check_fraction(bad)


@pytest.mark.parametrize("bad", [True, "0.5", None, [0.5], np.bool_(True)])
def test_check_fraction_refuses_non_numbers(bad):
    with pytest.raises(TypeError, match="sparsity must be a real number"):
        check_fraction(bad)


def test_unknown_field_names_the_allowed_ones_and_the_close_one():
    with pytest.raises(ConfigError) as err:
        DemoConfig.parse(alocation="global")
    msg = str(err.value)
    assert "unknown option 'alocation'" in msg and "did you mean 'allocation'" in msg
    assert "allowed: allocation, keep, method, sparsity, steps" in msg


def test_field_values_are_checked_with_the_fraction_message():
    with pytest.raises(ConfigError, match=r"sparsity must be a number in \[0, 1\), got 1.5"):
        DemoConfig.parse(sparsity=1.5)
    with pytest.raises(ConfigError, match="steps"):
        DemoConfig.parse(steps="many")
    cfg = DemoConfig.parse(sparsity=np.float32(0.5))
    assert cfg.sparsity == 0.5 and type(cfg.sparsity) is float
    with pytest.raises(ValueError):
        cfg.sparsity = 2.0  # assignment is validated too


def test_round_trip_json_and_yaml_exactly():
    cfg = DemoConfig.parse({"sparsity": 0.3}, keep=0.7, steps=3)
    assert DemoConfig.from_json(cfg.to_json()) == cfg
    assert DemoConfig.from_yaml(cfg.to_yaml()) == cfg
    assert cfg.to_dict() == {"method": "demo", "sparsity": 0.3, "keep": 0.7, "allocation": "uniform", "steps": 3}


def test_registry_parses_configs_by_key():
    reg: Registry[object] = Registry("method")
    reg.add("demo", object(), DemoConfig)
    cfg = reg.parse_config({"method": "demo", "sparsity": 0.5})
    assert isinstance(cfg, DemoConfig) and cfg.sparsity == 0.5
    with pytest.raises(ValueError, match=r"unknown method 'dmo' \(did you mean 'demo'\?\)"):
        reg.parse_config({"method": "dmo"})
    with pytest.raises(ConfigError, match="needs 'method'"):
        reg.parse_config({"sparsity": 0.5})


def test_renamed_args_warns_and_refuses_both():
    @renamed_args(ratio="sparsity")
    def f(sparsity=0.1):
        return sparsity

    with pytest.warns(PrunekitDeprecationWarning, match="ratio= is deprecated, use sparsity="):
        assert f(ratio=0.4) == 0.4
    with pytest.raises(TypeError, match="not both"):
        f(ratio=0.4, sparsity=0.2)
