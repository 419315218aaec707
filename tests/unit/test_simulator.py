"""The simulated provider's model: deterministic plans, speed-class profiles, replay costs."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from pydantic import ValidationError

from core.method.costs import realised_cost_usd
from core.method.registry import ModelSpec, SpeedClass
from core.replay.data import load_prices, load_reward_file
from core.replay.simulator import (
    SimProfileOverride,
    Simulator,
    SimulatorConfig,
    estimate_tokens,
    usage_for_cost,
)
from core.service.protocol import ProviderRequest

FAST = ModelSpec(id="fast-m", input_per_m=0.1, output_per_m=0.1, speed=SpeedClass.FAST)
BAL = ModelSpec(id="bal-m", input_per_m=0.5, output_per_m=1.5)
SLOW = ModelSpec(id="slow-m", input_per_m=1.25, output_per_m=10.0, speed=SpeedClass.SLOW)


def request(prompt: str, model: ModelSpec, max_tokens: int | None = None) -> ProviderRequest:
    return ProviderRequest(
        request_id="r",
        model_id=model.id,
        upstream_model=model.upstream_name,
        spec=model,
        messages=[{"role": "user", "content": prompt}],
        prompt_text=prompt,
        max_tokens=max_tokens,
    )


def test_same_request_same_plan_and_seed_matters() -> None:
    sim = Simulator(SimulatorConfig(seed=3))
    a = sim.plan(request("What is 2+2?", BAL), BAL)
    b = Simulator(SimulatorConfig(seed=3)).plan(request("What is 2+2?", BAL), BAL)
    assert a == b
    c = Simulator(SimulatorConfig(seed=4)).plan(request("What is 2+2?", BAL), BAL)
    assert c != a
    assert sim.plan(request("What is 3+3?", BAL), BAL) != a


def test_plan_shape() -> None:
    prompt = "x" * 400
    plan = Simulator().plan(request(prompt, BAL), BAL)
    assert plan.prompt_tokens == 100 == estimate_tokens(400)
    assert plan.content.startswith("[simulated bal-m] ")
    assert len(plan.content.split()) == plan.completion_tokens + 2
    assert plan.finish_reason == "stop" and not plan.replayed
    assert 0.0 <= plan.recorded_reward <= 1.0
    assert plan.usage.total_tokens == plan.prompt_tokens + plan.completion_tokens
    assert plan.latency_s == pytest.approx(plan.ttft_s + plan.completion_tokens / 60.0)
    assert estimate_tokens(0) == 1


def test_profiles_by_speed_class() -> None:
    sim = Simulator()
    fast, bal, slow = sim.profile(FAST), sim.profile(BAL), sim.profile(SLOW)
    assert (fast.ttft_s, fast.tokens_per_s) == (0.15, 120.0)
    assert (bal.ttft_s, bal.tokens_per_s) == (0.4, 60.0)
    assert (slow.ttft_s, slow.tokens_per_s) == (0.8, 35.0)
    assert fast.mean_completion_tokens == bal.mean_completion_tokens == 250.0
    assert fast.quality < bal.quality < slow.quality
    # Over many prompts the plans follow the profile: per-token time exact, ttft and length
    # scattered around the means (log-normal, mean-preserving).
    for spec, prof in ((FAST, fast), (SLOW, slow)):
        plans = [sim.plan(request(f"prompt {i}", spec), spec) for i in range(400)]
        assert all(p.per_token_s == pytest.approx(1 / prof.tokens_per_s) for p in plans)
        mean_len = sum(p.completion_tokens for p in plans) / len(plans)
        assert mean_len == pytest.approx(250, rel=0.1)
        mean_q = sum(p.recorded_reward for p in plans) / len(plans)
        assert mean_q == pytest.approx(prof.quality, abs=0.03)


def test_override_and_time_scale() -> None:
    cfg = SimulatorConfig(
        profiles={"bal-m": SimProfileOverride(tokens_per_s=10.0, quality=1.0, quality_sd=0.0)},
        time_scale=0.0,
    )
    sim = Simulator(cfg)
    prof = sim.profile(BAL)
    assert (prof.ttft_s, prof.tokens_per_s, prof.quality) == (0.4, 10.0, 1.0)
    plan = sim.plan(request("hi", BAL), BAL)
    assert plan.latency_s == 0.0 and plan.recorded_reward == 1.0
    with pytest.raises(ValidationError):
        SimulatorConfig(time_scale=-1)
    with pytest.raises(ValidationError):
        SimProfileOverride(quality=1.5)


def test_length_caps() -> None:
    plan = Simulator().plan(request("hi", BAL, max_tokens=3), BAL)
    assert plan.completion_tokens == 3 and plan.finish_reason == "length"
    capped = Simulator(SimulatorConfig(max_completion_tokens=5)).plan(request("hi", BAL), BAL)
    assert capped.completion_tokens == 5 and capped.finish_reason == "length"


def test_usage_for_cost_bound() -> None:
    rnd = random.Random(0)
    for _ in range(20_000):
        a, b = 10 ** rnd.uniform(-2, 2), 10 ** rnd.uniform(-2, 2)
        target = a * 10 ** rnd.uniform(0, 5)  # at least one prompt token's price
        p, c = usage_for_cost(target / 1e6, a, b, rnd.randint(1, 5000))
        assert p >= 1 and c >= 0
        assert abs(p * a + c * b - target) <= min(a, b) / 2 * (1 + 1e-9)
    # The prompt guess is kept when the cost leaves room for it.
    assert usage_for_cost(1000 * 0.5e-6 + 300 * 1.5e-6, 0.5, 1.5, 1000) == (1000, 300)


def _specs(prices_path: Path) -> dict[str, ModelSpec]:
    return {
        m: ModelSpec(id=m, input_per_m=e.input_per_m, output_per_m=e.output_per_m, speed=e.speed)
        for m, e in load_prices(prices_path).items()
    }


@pytest.mark.data
def test_replay_cost_and_reward_match_every_row(shared_data: Path) -> None:
    data = load_reward_file(shared_data / "val.jsonl")
    specs = _specs(shared_data / "prices.json")
    sim = Simulator(SimulatorConfig(replay_file=shared_data / "val.jsonl", time_scale=0))
    assert sim.replay_size == len(data)
    for j, model in enumerate(data.models):
        spec = specs[model]
        bound = min(spec.input_per_m, spec.output_per_m) / 2 / 1e6
        for i, prompt in enumerate(data.prompts):
            plan = sim.plan(request(prompt, spec), spec)
            assert plan.replayed and plan.recorded_reward == data.rewards[i, j]
            cost = realised_cost_usd(
                plan.prompt_tokens, plan.completion_tokens, spec.input_per_m, spec.output_per_m
            )
            assert abs(cost - data.costs[i, j]) <= bound * (1 + 1e-9) + 1e-15, (model, i)


@pytest.mark.data
def test_replay_keeps_usage_when_repriced(shared_data: Path) -> None:
    data = load_reward_file(shared_data / "val.jsonl")
    prompt, model = data.prompts[0], data.models[1]
    spec = _specs(shared_data / "prices.json")[model]
    cut = spec.model_copy(
        update={"input_per_m": spec.input_per_m / 2, "output_per_m": spec.output_per_m / 2}
    )
    sim = Simulator(SimulatorConfig(replay_file=shared_data / "val.jsonl"))
    before, after = sim.plan(request(prompt, spec), spec), sim.plan(request(prompt, cut), cut)
    assert before.usage == after.usage  # the tokens were recorded, the prices changed


def test_replay_miss_and_missing_model_fall_back_to_profile(tmp_path: Path) -> None:
    row = {"prompt": "known prompt", "arms": {"bal-m": {"reward": 0.25, "cost": 0.001}}}
    path = tmp_path / "rewards.jsonl"
    path.write_text(json.dumps(row) + "\n")
    sim = Simulator(SimulatorConfig(replay_file=path))  # no prices.json: the spec's prices
    hit = sim.plan(request("known prompt", BAL), BAL)
    assert hit.replayed and hit.recorded_reward == 0.25
    assert abs(hit.prompt_tokens * 0.5 + hit.completion_tokens * 1.5 - 1000.0) <= 0.25
    assert not sim.plan(request("unknown prompt", BAL), BAL).replayed
    assert not sim.plan(request("known prompt", SLOW), SLOW).replayed
    # Without replay, the same request is planned the same way as a replay miss.
    assert Simulator().plan(request("unknown prompt", BAL), BAL) == sim.plan(
        request("unknown prompt", BAL), BAL
    )


# ---------------------------------------------------------------- runtime knobs and faults


def _with(spec: ModelSpec, **behaviour) -> ModelSpec:
    from core.method.registry import SimBehaviour

    return spec.model_copy(update={"simulation": SimBehaviour(**behaviour)})


def _attempt(rid: str, spec: ModelSpec, attempt: int = 0) -> ProviderRequest:
    return request("a prompt", spec).model_copy(update={"request_id": rid, "attempt": attempt})


def test_reward_scale_multiplies_drawn_and_replayed_rewards(tmp_path: Path) -> None:
    sim = Simulator()
    base = sim.plan(request("What is 2+2?", BAL), BAL)
    half = _with(BAL, reward_scale=0.5)
    scaled = sim.plan(request("What is 2+2?", half), half)
    assert scaled.recorded_reward == base.recorded_reward * 0.5
    assert (scaled.content, scaled.usage) == (base.content, base.usage)  # only the reward
    row = {"prompt": "known prompt", "arms": {"bal-m": {"reward": 0.8, "cost": 0.001}}}
    path = tmp_path / "rewards.jsonl"
    path.write_text(json.dumps(row) + "\n")
    replay = Simulator(SimulatorConfig(replay_file=path))
    assert replay.plan(request("known prompt", half), half).recorded_reward == 0.4
    zero = _with(BAL, reward_scale=0)
    assert sim.plan(request("What is 2+2?", zero), zero).recorded_reward == 0.0


def test_quality_override_and_configured_default_behaviours() -> None:
    from core.method.registry import SimBehaviour

    exact = _with(BAL, quality=0.3)
    sim = Simulator(SimulatorConfig(profiles={"bal-m": SimProfileOverride(quality_sd=0.0)}))
    assert sim.profile(exact).quality == 0.3
    assert sim.plan(request("q", exact), exact).recorded_reward == pytest.approx(0.3)
    # a configured per-model default applies until the registry's own setting replaces it
    cfg = SimulatorConfig(behaviours={"bal-m": SimBehaviour(reward_scale=0.0)})
    assert Simulator(cfg).plan(request("q", BAL), BAL).recorded_reward == 0.0
    own = _with(BAL, reward_scale=1.0)
    assert Simulator(cfg).plan(request("q", own), own).recorded_reward > 0.0


def test_faults_at_rate_one_and_zero_are_certain() -> None:
    sim = Simulator(SimulatorConfig(time_scale=0.5))
    for i in range(50):
        rid = f"r{i}"
        assert sim.fault(_attempt(rid, BAL), BAL).kind is None
        err = _with(BAL, error_rate=1.0, error_status=502)
        f = sim.fault(_attempt(rid, err), err)
        assert (f.kind, f.status) == ("error", 502)
        slow = _with(BAL, timeout_rate=1.0, timeout_s=4.0)
        f = sim.fault(_attempt(rid, slow), slow)
        assert (f.kind, f.status, f.wait_s) == ("timeout", None, 2.0)  # x time_scale
        limited = _with(BAL, rate_limit_rate=1.0, retry_after_s=7.0)
        f = sim.fault(_attempt(rid, limited), limited)
        assert (f.kind, f.status, f.retry_after_s) == ("rate_limit", 429, 7.0)
        spiky = _with(BAL, latency_spike_rate=1.0, latency_spike_s=3.0)
        f = sim.fault(_attempt(rid, spiky), spiky)
        assert (f.kind, f.spike_s) == (None, 1.5)


EXPECTED_FAULT_COUNTS = {"error": 629, "timeout": 204, "rate_limit": 198, None: 969}


def test_fault_draws_are_seeded_per_request_and_attempt() -> None:
    flaky = _with(BAL, error_rate=0.3, timeout_rate=0.1, rate_limit_rate=0.1)
    sim = Simulator(SimulatorConfig(seed=0))
    kinds = [sim.fault(_attempt(f"r{i}", flaky), flaky).kind for i in range(2000)]
    # the same draws every time: exact counts (about 30% / 10% / 10% / 50%)
    counts = {k: kinds.count(k) for k in ("error", "timeout", "rate_limit", None)}
    assert counts == EXPECTED_FAULT_COUNTS
    assert [Simulator().fault(_attempt(f"r{i}", flaky), flaky).kind for i in range(20)] == (
        kinds[:20]
    )
    # a retry (the next attempt) draws anew; another seed draws differently
    retried = [sim.fault(_attempt(f"r{i}", flaky, 1), flaky).kind for i in range(200)]
    assert retried != kinds[:200]
    other = Simulator(SimulatorConfig(seed=1))
    assert [other.fault(_attempt(f"r{i}", flaky), flaky).kind for i in range(200)] != kinds[:200]


def test_reward_value_sets_every_reward_and_keeps_usage(tmp_path: Path) -> None:
    row = {"prompt": "known prompt", "arms": {"bal-m": {"reward": 0.9, "cost": 0.001}}}
    path = tmp_path / "rewards.jsonl"
    path.write_text(json.dumps(row) + "\n")
    sim = Simulator(SimulatorConfig(replay_file=path))
    regressed = _with(BAL, reward_value=0.75, reward_scale=0.5)  # the value wins
    for prompt in ("known prompt", "unknown prompt"):
        base = sim.plan(request(prompt, BAL), BAL)
        plan = sim.plan(request(prompt, regressed), regressed)
        assert plan.recorded_reward == 0.75
        assert plan.usage == base.usage  # the cost is untouched


def test_several_replay_files_merge_per_prompt_and_model(tmp_path: Path) -> None:
    first, second = tmp_path / "a" / "r.jsonl", tmp_path / "b" / "r.jsonl"
    for path, arms in (
        (first, {"bal-m": {"reward": 0.1, "cost": 0.001}}),
        (
            second,
            {"bal-m": {"reward": 0.9, "cost": 0.001}, "slow-m": {"reward": 0.6, "cost": 0.02}},
        ),
    ):
        path.parent.mkdir()
        path.write_text(json.dumps({"prompt": "p", "arms": arms}) + "\n")
    sim = Simulator(SimulatorConfig(replay_file=first, replay_files=[second]))
    assert sim.plan(request("p", BAL), BAL).recorded_reward == 0.1  # the first file wins
    assert sim.plan(request("p", SLOW), SLOW).recorded_reward == 0.6  # only the second has it
    assert sim.replay_size == 1


def test_prices_outside_sane_bounds_are_rejected() -> None:
    for bad in (1e-300, 0.0, 2e6):
        with pytest.raises(ValidationError, match="input_per_m"):
            ModelSpec(id="m", input_per_m=bad, output_per_m=1.0)
