"""models.checks: the one place settings are range-checked, by models and controller alike."""

from __future__ import annotations

import math

import pytest

from models.checks import check_bool, check_choice, check_int, check_number


def test_each_check_names_the_setting_and_what_it_takes() -> None:
    check_int("members", 5, 1, 64)
    check_int("patience", 10**9, 1)  # no upper bound
    for value in (0, 65, 2.0, True, "5"):
        with pytest.raises(ValueError, match=r"members must be an integer in \[1, 64\], got "):
            check_int("members", value, 1, 64)
    with pytest.raises(ValueError, match=r"patience must be an integer >= 1, got 0"):
        check_int("patience", 0, 1)
    check_number("lr", 1.0, 0.0, 1.0, low_open=True)
    check_number("max_seconds", math.inf, 0.0, low_open=True)  # inf is in (0, inf]
    for value in (0.0, 1.5, math.nan, False, "0.1"):
        with pytest.raises(ValueError, match=r"lr must be a number in \(0.0, 1.0\], got "):
            check_number("lr", value, 0.0, 1.0, low_open=True)
    with pytest.raises(ValueError, match=r"done_weight must be a number in \[0.0, inf\), got inf"):
        check_number("done_weight", math.inf, 0.0, math.inf, high_open=True)
    check_bool("naive", False)
    for value in (0, 1, "yes", None):
        with pytest.raises(ValueError, match="naive must be true or false"):
            check_bool("naive", value)
    check_choice("device", "cpu", ("cpu", "cuda"))
    with pytest.raises(ValueError, match=r"device must be one of \('cpu', 'cuda'\), got 'tpu'"):
        check_choice("device", "tpu", ("cpu", "cuda"))


def test_the_configs_of_models_refuse_out_of_range_values_by_name() -> None:
    from models.ensemble import EnsembleShape
    from models.learner import LearnerConfig
    from models.policy.learner import PolicyLearnerConfig
    from models.runtime import RuntimeConfig
    from models.train import TrainConfig

    with pytest.raises(ValueError, match=r"max_epochs must be an integer in \[1, 100000\]"):
        TrainConfig(max_epochs=0)
    with pytest.raises(ValueError, match=r"calibrate must be true or false"):
        TrainConfig(calibrate=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"reward_units must be an integer in \[1, 4096\]"):
        EnsembleShape(reward_units=0)
    with pytest.raises(ValueError, match=r"gate_rows must be an integer >= 1"):
        LearnerConfig(gate_rows=0)
    with pytest.raises(ValueError, match=r"poll_s must be a number in \(0.0, inf\]"):
        LearnerConfig(poll_s=0.0)
    with pytest.raises(ValueError, match=r"real_ratio must be a number in \[0.0, 1.0\]"):
        PolicyLearnerConfig(real_ratio=True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"chunk_rows must be an integer in \[0, "):
        RuntimeConfig(chunk_rows=-1)
