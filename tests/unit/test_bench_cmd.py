"""`paretoserve bench`: the JSON schema and the CLI plumbing. No assertion is made on speed."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from paretoserve_cli import bench_cmd

ITERS = 200


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="paretoserve")
    sub = parser.add_subparsers(dest="command", required=True)
    bench_cmd.register(sub)
    return parser


def _run(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    return args.func(args)


def _check_percentiles(block: dict) -> None:
    assert set(block) == {"p50", "p99"}
    assert all(isinstance(v, float) for v in block.values())
    assert 0 < block["p50"] <= block["p99"]


def _check_ours(result: dict, arms: int, dim: int, iters: int) -> None:
    assert (result["arms"], result["dim"], result["iters"]) == (arms, dim, iters)
    _check_percentiles(result["route_us"])
    _check_percentiles(result["feedback_us"])
    assert len(result["mix"]) == arms and sum(result["mix"]) == pytest.approx(1.0, abs=1e-3)
    machine = result["machine"]
    assert {"platform", "python", "numpy", "cpu_count"} <= set(machine)
    assert machine["numpy"] == np.__version__


def test_defaults_follow_the_cli_contract() -> None:
    args = _parser().parse_args(["bench"])
    assert (args.arms, args.dim, args.iters, args.seed) == (3, 26, 5000, 0)
    assert args.baseline is True and args.json is None
    assert args.func is bench_cmd.run


def test_without_baseline_json_schema(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "sub" / "bench.json"
    argv = [*f"bench --arms 4 --dim 8 --iters {ITERS} --no-baseline".split(), "--json", str(out)]
    assert _run(argv) == 0
    result = json.loads(out.read_text())
    _check_ours(result, arms=4, dim=8, iters=ITERS)
    assert result["baseline"] is None and result["ratio"] is None
    assert "baseline_note" not in result
    table = capsys.readouterr().out
    assert "paretoserve" in table and "K=4 d=8" in table and "paretobandit" not in table


def test_with_baseline_json_schema(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("pareto_bandit", reason="the bench extra (paretobandit) is not installed")
    out = tmp_path / "bench.json"
    assert _run(["bench", "--iters", str(ITERS), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    _check_ours(result, arms=3, dim=26, iters=ITERS)
    base = result["baseline"]
    assert base["package"] == f"paretobandit {bench_cmd.baseline_version()}"
    _check_percentiles(base["route_us"])
    _check_percentiles(base["feedback_us"])
    assert len(base["mix"]) == 3
    ours = result["route_us"]["p50"] + result["feedback_us"]["p50"]
    theirs = base["route_us"]["p50"] + base["feedback_us"]["p50"]
    assert result["ratio"] == pytest.approx(ours / theirs, rel=1e-3)
    assert "ratio ours/theirs" in capsys.readouterr().out


def test_missing_package_is_reported_and_skipped(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(bench_cmd, "baseline_version", lambda: None)
    result = bench_cmd.measure(arms=2, dim=5, iters=50, seed=1, baseline=True)
    _check_ours(result, arms=2, dim=5, iters=50)
    assert result["baseline"] is None and result["ratio"] is None
    assert "not installed" in result["baseline_note"]
    assert "pip install -e '.[bench]'" in result["baseline_note"]
    print(bench_cmd.format_table(result))
    assert "not installed" in capsys.readouterr().out


def test_workload_is_seeded_unit_contexts_with_bias() -> None:
    a = bench_cmd.make_workload(arms=3, dim=26, n=100, seed=7)
    b = bench_cmd.make_workload(arms=3, dim=26, n=100, seed=7)
    c = bench_cmd.make_workload(arms=3, dim=26, n=100, seed=8)
    np.testing.assert_array_equal(a.contexts, b.contexts)
    assert a.rewards == b.rewards
    assert not np.array_equal(a.contexts, c.contexts)
    assert a.contexts.shape == (100, 26)
    np.testing.assert_array_equal(a.contexts[:, -1], 1.0)
    np.testing.assert_allclose(np.linalg.norm(a.contexts[:, :-1], axis=1), 1.0)
    rewards = np.array(a.rewards)
    assert rewards.shape == (100, 3) and rewards.min() >= 0.0 and rewards.max() <= 1.0
    assert a.input_per_m == sorted(a.input_per_m) and a.budget_usd > 0


@pytest.mark.parametrize(
    "argv", [["--arms", "0"], ["--dim", "1"], ["--iters", "0"], ["--iters", "lots"]]
)
def test_bad_arguments_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        _parser().parse_args(["bench", *argv])
    assert exc.value.code == 2


def test_registered_in_the_paretoserve_command() -> None:
    from paretoserve_cli.main import build_parser

    args = build_parser().parse_args(["bench", "--arms", "16", "--no-baseline"])
    assert args.func is bench_cmd.run and args.arms == 16 and args.baseline is False
