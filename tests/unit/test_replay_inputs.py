"""Replay inputs from arguments, and the prompt and statistics helpers of load runs and benchmarks.

`resolve_inputs` / `resolve_priors` are shared by `paretoserve replay` and `loadtest replay`;
the prompts come from core/replay/prompts.py, percentile and machine_info from
benchmarks/common.py."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.common import machine_info, percentile
from core.replay.data import half_rows
from core.replay.prompts import BUILTIN_PROMPTS, load_prompts, reward_file_prompts
from paretoserve_cli.replay_inputs import positive, priors_arg, resolve_inputs, resolve_priors

A, B, C = "vendor/a", "vendor/b", "vendor/c"


def _reward_file(path: Path, prompts: list[str], models: tuple[str, ...] = (A, B)) -> Path:
    rows = [
        {"prompt": p, "source": "test", "arms": {m: {"reward": 0.5, "cost": 1e-4} for m in models}}
        for p in prompts
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _prices(path: Path, models: tuple[str, ...] = (A, B, C)) -> Path:
    entry = {"input_per_m": 0.1, "output_per_m": 0.2, "context_length": 1000, "speed": "fast"}
    path.write_text(json.dumps({"models": [dict(entry, id=m) for m in models]}))
    return path


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    prompts = [f"prompt {i}" for i in range(40)]
    return {
        "data": _reward_file(tmp_path / "data.jsonl", prompts),
        "warm": _reward_file(tmp_path / "warm" / "warm.jsonl", prompts[:10], (A, B, C)),
        "prices": _prices(tmp_path / "prices.json"),
    }


def test_without_warmup_or_split_there_is_no_warmup_stream(files) -> None:
    inputs = resolve_inputs(files["data"], None, None, None)
    assert inputs.warm is None and inputs.warm_rows is None
    assert list(inputs.data_rows) == list(range(40))
    assert inputs.prices == files["prices"]  # next to the data file
    assert set(inputs.specs) == {A, B, C}
    choice = resolve_priors(None, inputs, projection=None)  # nothing to build: no projection used
    assert (choice.path, choice.built, choice.desc) == (None, None, "none (no warm-up stream)")
    assert choice.load() is None


def test_a_split_seed_warms_up_on_one_half_and_evaluates_the_other(files) -> None:
    inputs = resolve_inputs(files["data"], None, 3, None)
    assert inputs.warm is not None and inputs.warm.path == inputs.data.path
    assert list(inputs.warm_rows) == list(half_rows(inputs.data, 3, first=True))
    assert list(inputs.data_rows) == list(half_rows(inputs.data, 3, first=False))
    assert sorted([*inputs.warm_rows, *inputs.data_rows]) == list(range(40))


def test_warmup_file_prices_and_priors_choices(files, tmp_path: Path) -> None:
    _prices(files["prices"], (A, B))  # the data file's prices lack the warm-up's third model
    with pytest.raises(ValueError, match=f"no prices for: {C}"):
        resolve_inputs(files["data"], files["warm"], None, None)
    _prices(files["warm"].parent / "prices.json", (A, B, C))
    inputs = resolve_inputs(files["data"], files["warm"], None, None)
    assert inputs.prices == files["warm"].parent / "prices.json"  # the warm-up file's first
    assert inputs.warm.models == (A, B, C) and len(inputs.warm_rows) == 10
    explicit = _prices(tmp_path / "all.json")
    assert resolve_inputs(files["data"], files["warm"], None, explicit).prices == explicit
    assert resolve_priors("none", inputs, projection=None).desc == "none"
    choice = resolve_priors(str(tmp_path / "p.json"), inputs, projection=None)
    assert (choice.path, choice.built) == (tmp_path / "p.json", None)
    files["prices"].unlink()
    (files["warm"].parent / "prices.json").unlink()
    with pytest.raises(FileNotFoundError, match="pass --prices"):
        resolve_inputs(files["data"], None, None, None)


def test_argument_types() -> None:
    assert positive("6.64e-4") == pytest.approx(6.64e-4)
    for bad in ("0", "-1", "nan", "inf"):
        with pytest.raises(argparse.ArgumentTypeError):
            positive(bad)
    assert priors_arg("none") == "none"
    with pytest.raises(argparse.ArgumentTypeError, match="does not exist"):
        priors_arg("/nonexistent/priors.json")


def test_prompts_of_a_reward_file_and_the_builtin_set(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    lines = [{"prompt": "one\u2028line"}, {"prompt": "  "}, {"prompt": 3}, {"prompt": "two"}]
    path.write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in lines) + "\n\n")
    assert reward_file_prompts(path) == ["one\u2028line", "two"]
    assert load_prompts(path) == ["one\u2028line", "two"]
    assert load_prompts(None) == BUILTIN_PROMPTS and load_prompts(None) is not BUILTIN_PROMPTS
    assert len(set(BUILTIN_PROMPTS)) == len(BUILTIN_PROMPTS) >= 50
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="no prompts"):
        load_prompts(tmp_path / "empty.jsonl")


def test_percentile_is_numpys_linear_and_none_when_empty() -> None:
    values = [5.0, 1.0, 4.0, 2.0, 3.0, 10.0]
    for q in (0, 50, 90, 99, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    assert percentile([1.0, 2.0], 50) == 1.5
    assert percentile([], 50) is None


def test_machine_info_names_the_packages_asked_for() -> None:
    info = machine_info("numpy")
    assert info["numpy"] == np.__version__
    assert {"platform", "processor", "cpu_model", "cpu_count", "python"} <= set(info)
    assert "ray" not in info
