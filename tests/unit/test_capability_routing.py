"""Capability-aware routing: only models that can serve a request are eligible (core.method)."""

from __future__ import annotations

import numpy as np
import pytest

from core.method.arms import cannot_serve
from core.method.config import PacerConfig, RouterConfig
from core.method.errors import NoEligibleModelError
from core.method.registry import ModelSpec
from core.method.router import RouteLimits, Router

CHEAP_TEXT = ModelSpec(
    id="cheap-text", input_per_m=0.05, output_per_m=0.05, capabilities=["tools", "json_schema"]
)
MID = ModelSpec(id="mid", input_per_m=0.5, output_per_m=1.5)  # all three by default
SMALL_WINDOW = ModelSpec(
    id="small-window",
    input_per_m=0.3,
    output_per_m=0.3,
    context_length=4_096,
    max_output_tokens=1_024,
)
NO_TOOLS = ModelSpec(id="no-tools", input_per_m=0.2, output_per_m=0.2, capabilities=["vision"])


def _router(models: list[ModelSpec]) -> Router:
    pacer = PacerConfig(budget_usd=1.0, cost_signal="list-price", feedforward=False)
    return Router(RouterConfig(pacer=pacer, seed=0, forced_exploration_pulls=0), models=models)


def _x(seed: int = 0) -> np.ndarray:
    return np.append(np.random.default_rng(seed).normal(size=25), 1.0)


def test_a_spec_says_why_it_cannot_serve() -> None:
    assert MID.capabilities == ("json_schema", "tools", "vision")
    assert cannot_serve(MID, RouteLimits(requires=("tools", "vision"), prompt_tokens=10)) is None
    assert cannot_serve(CHEAP_TEXT, RouteLimits(requires=("vision",))) == (
        "lacks vision (capabilities: json_schema, tools)"
    )
    assert "context 4,096 tokens < ~5,000 needed (prompt ~4,000 + 1,000 output)" == cannot_serve(
        SMALL_WINDOW, RouteLimits(prompt_tokens=4_000, output_tokens=1_000)
    )
    assert cannot_serve(SMALL_WINDOW, RouteLimits(output_tokens=2_000)) == (
        "max output 1,024 tokens < 2,000 requested"
    )


def test_auto_routing_considers_only_models_that_can_serve() -> None:
    router = _router([CHEAP_TEXT, MID, NO_TOOLS])
    vision = RouteLimits(requires=("vision",), prompt_tokens=50)
    picks = {router.route(_x(i), vision).model for i in range(40)}
    assert picks <= {"mid", "no-tools"} and picks
    both = RouteLimits(requires=("tools", "vision"), prompt_tokens=50)
    assert {router.route(_x(i), both).model for i in range(40)} == {"mid"}
    explained = router.explain(_x(), both)
    assert explained["cheap-text"]["eligible"] is False
    assert explained["cheap-text"]["reason"].startswith("lacks vision")
    assert explained["no-tools"]["reason"].startswith("lacks tools")
    assert explained["mid"]["eligible"] is True


def test_nothing_can_serve_names_each_model_and_why() -> None:
    router = _router([CHEAP_TEXT, NO_TOOLS])
    with pytest.raises(NoEligibleModelError) as err:
        router.route(_x(), RouteLimits(requires=("tools", "vision")))
    assert set(err.value.reasons) == {"cheap-text", "no-tools"}
    assert "lacks vision" in str(err.value) and "lacks tools" in str(err.value)


def test_an_explicit_model_that_cannot_serve_is_refused() -> None:
    router = _router([CHEAP_TEXT, MID])
    with pytest.raises(NoEligibleModelError) as err:
        router.route(_x(), RouteLimits(requires=("vision",)), model="cheap-text")
    assert err.value.reasons == {"cheap-text": "lacks vision (capabilities: json_schema, tools)"}
    assert router.route(_x(), RouteLimits(requires=("vision",)), model="mid").model == "mid"


def test_a_long_prompt_skips_the_small_window() -> None:
    router = _router([SMALL_WINDOW, MID])
    long = RouteLimits(prompt_tokens=6_000)
    assert {router.route(_x(i), long).model for i in range(30)} == {"mid"}
    short = RouteLimits(prompt_tokens=100)
    assert "small-window" in {router.route(_x(i), short).model for i in range(60)}


def test_fallback_respects_the_same_rule() -> None:
    router = _router([MID, NO_TOOLS, CHEAP_TEXT])
    tools = RouteLimits(requires=("tools",), prompt_tokens=20)
    d = router.route(_x(), tools, model="mid", request_id="r1")
    assert d.model == "mid"
    # mid failed: the next model must still have tools (cheap-text), never no-tools
    nxt = router.fallback("r1", "mid", now=0.0, limits=tools)
    assert nxt is not None and nxt.model == "cheap-text"
    assert router.fallback("r1", "cheap-text", now=0.0, limits=tools) is None


# ---- what a chat request needs (core.service.capabilities) --------------------------------

TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
IMAGE = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}


def _needs(**body) -> dict:
    from core.service.capabilities import request_needs
    from core.service.protocol import ChatCompletionRequest

    body.setdefault("messages", [{"role": "user", "content": "What is the weather in Oslo?"}])
    return request_needs(ChatCompletionRequest.model_validate(body))


def test_plain_text_needs_no_capability_only_its_size() -> None:
    assert _needs() == {"prompt_tokens": 7}
    assert _needs(max_tokens=500) == {"prompt_tokens": 7, "output_tokens": 500}


def test_tools_images_and_json_schema_are_required_capabilities() -> None:
    assert _needs(tools=[TOOL])["requires"] == ["tools"]
    assert _needs(tools=[TOOL])["prompt_tokens"] > 7  # the tool definitions count
    pic = [{"role": "user", "content": [{"type": "text", "text": "What is this?"}, IMAGE]}]
    needs = _needs(messages=pic)
    assert needs["requires"] == ["vision"] and needs["prompt_tokens"] >= 85
    schema = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}}
    assert _needs(response_format=schema)["requires"] == ["json_schema"]
    assert "requires" not in _needs(response_format={"type": "json_object"})


def test_a_tool_turn_needs_tools_even_without_tool_definitions() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    history = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    assert _needs(messages=history)["requires"] == ["tools"]
