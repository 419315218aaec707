"""The simulated provider's model: latency, token usage, text and quality of an answer.

Pure and deterministic: a plan is a function of (seed, model id, prompt, request limits), so
the same request always gets the same answer, usage and reward, and tests need no clock.

Tools and structured output (`answer_kind`): a request with function tools gets a tool call
when `tool_choice` is `"required"` (the first tool) or names a function (that one), and with
`"auto"` (or no tool_choice) when the last message is a user turn (the first tool); after a
`tool` message, under `"auto"`, it answers in text, so a two-turn tool conversation ends.
`"none"` never calls. One call per answer, whatever `parallel_tool_calls` says. The call's
arguments are the smallest JSON that validates against the function's `parameters`
(core/replay/schema_instance.py), its id is `call_` + a hash of (seed, model, prompt, turn),
and the answer's finish reason is `tool_calls`. Otherwise `response_format` `json_schema`
answers the smallest JSON valid under its schema, and `json_object` a JSON object
`{"model": id, "answer": <the simulated text>}`. Usage is what the answer would bill: a tool
call counts the JSON of its name and arguments as completion tokens, a json_schema answer its
JSON text, a json_object answer the drawn text's tokens (like text answers, whose
`[simulated <model>]` header is not billed either); tools sent, earlier tool calls and text
count as prompt tokens, and each image part `IMAGE_TOKENS`. A `max_tokens` below a tool call's
or JSON answer's size cuts it there, with finish reason `length`, as a real model would. Replayed
prompts keep their recorded reward; tool calls and json_schema answers bill their own JSON, not
the recorded cost. No logprobs.

Replay mode reproduces a reward file (../shared/data/README.md): for a recorded prompt the
plan reports the recorded reward and picks integer usage whose cost at the *recording* prices
equals the recorded cost. Bound: with a = input_per_m, b = output_per_m,
|usage cost - recorded cost| <= min(a, b) / 2 / 1e6 whenever the recorded cost is at least
a / 1e6 (one prompt token), which every row of the shared data satisfies. Because usage
is fixed by the recording prices, a later re-price in the registry changes the realised cost
the way a real price change would (same tokens, new prices).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from core.method.registry import ModelSpec, SimBehaviour, SpeedClass
from core.replay.data import load_prices, load_reward_file
from core.replay.schema_instance import minimal_instance
from core.service.judge_rubric import RUBRIC
from core.service.protocol import (
    FunctionCall,
    ProviderRequest,
    ToolCall,
    Usage,
    message_text,
    tool_calls_text,
)

_WORDS = (
    "the model considers question answer because therefore result value step first then "
    "finally example shows reason each option correct likely given data so we find that "
    "this means case function returns list number total equals choice best"
).split()
_COMPLETION_SIGMA = 0.5  # log-normal spread of completion length around its mean
_TTFT_SIGMA = 0.25  # log-normal jitter of time to first token
IMAGE_TOKENS = 85  # prompt tokens per image part (OpenAI's low-detail image)
AnswerKind = Literal["text", "json", "tool_calls"]


class SimProfile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    ttft_s: float = Field(ge=0.0, allow_inf_nan=False)
    tokens_per_s: float = Field(gt=0.0, allow_inf_nan=False)
    mean_completion_tokens: float = Field(250.0, ge=1.0, allow_inf_nan=False)
    quality: float = Field(ge=0.0, le=1.0, description="mean reward of drawn answers")
    quality_sd: float = Field(0.15, ge=0.0, allow_inf_nan=False)


class SimProfileOverride(BaseModel):
    """Per-model changes to its speed class's profile; unset fields keep the class default."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ttft_s: float | None = Field(None, ge=0.0, allow_inf_nan=False)
    tokens_per_s: float | None = Field(None, gt=0.0, allow_inf_nan=False)
    mean_completion_tokens: float | None = Field(None, ge=1.0, allow_inf_nan=False)
    quality: float | None = Field(None, ge=0.0, le=1.0)
    quality_sd: float | None = Field(None, ge=0.0, allow_inf_nan=False)


def default_speed_profiles() -> dict[SpeedClass, SimProfile]:
    # Qualities echo the per-model means of the shared data (fast 0.79, balanced 0.93, slow 0.94).
    return {
        SpeedClass.FAST: SimProfile(ttft_s=0.15, tokens_per_s=120.0, quality=0.78),
        SpeedClass.BALANCED: SimProfile(ttft_s=0.4, tokens_per_s=60.0, quality=0.88),
        SpeedClass.SLOW: SimProfile(ttft_s=0.8, tokens_per_s=35.0, quality=0.92),
    }


class SimulatorConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    speed_profiles: dict[SpeedClass, SimProfile] = Field(default_factory=default_speed_profiles)
    profiles: dict[str, SimProfileOverride] = Field(default_factory=dict)
    replay_file: Path | None = None
    replay_files: list[Path] = Field(
        default_factory=list,
        description="more reward files to replay (e.g. a warm-up and an evaluation file); "
        "a prompt found in several takes its first occurrence, replay_file first",
    )
    replay_prices_file: Path | None = Field(
        None,
        description="prices the recorded costs were charged at; default: prices.json beside "
        "replay_file if present; models absent there use the registry's current prices",
    )
    behaviours: dict[str, SimBehaviour] = Field(
        default_factory=dict,
        description="per-model default behaviour (reward scale, quality, faults); a model's "
        "registry `simulation`, when set, replaces it",
    )
    seed: int = 0
    judge_noise_sd: float = Field(
        0.03,
        ge=0.0,
        le=1.0,
        description="spread of the simulated judge's criterion scores around the judged "
        "answer's reward (on the 0-1 scale; narrower near 0 and 1, so scores stay unbiased)",
    )
    time_scale: float = Field(1.0, ge=0.0, allow_inf_nan=False, description="0 = instant")
    max_completion_tokens: int = Field(4096, ge=1, description="cap on drawn completions")


_NO_BEHAVIOUR = SimBehaviour()


@dataclass(frozen=True)
class SimFault:
    """What the fault draw of one attempt decided. `kind` None: the call succeeds (maybe late
    by `spike_s`)."""

    kind: str | None  # "error" | "timeout" | "rate_limit" | None
    status: int | None = None  # 5xx or 429; None for a timeout (no response)
    retry_after_s: float | None = None  # of a 429
    wait_s: float = 0.0  # how long a timeout takes (already x time_scale)
    spike_s: float = 0.0  # extra wait before the first token (already x time_scale)


@dataclass(frozen=True)
class SimPlan:
    model_id: str
    content: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    ttft_s: float
    per_token_s: float
    recorded_reward: float | None  # None for a judge's verdict (it is no answer to reward)
    replayed: bool  # reward and usage come from the reward file
    kind: AnswerKind = "text"  # "json": content is JSON; "tool_calls": content is ""
    tool_calls: tuple[ToolCall, ...] = ()

    @property
    def usage(self) -> Usage:
        return Usage(prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens)

    @property
    def latency_s(self) -> float:
        return self.ttft_s + self.completion_tokens * self.per_token_s


def prompt_key(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


def estimate_tokens(text_chars: int) -> int:
    """About four characters per token, at least one."""
    return max(1, round(text_chars / 4))


def prompt_tokens_of(req: ProviderRequest) -> int:
    """Prompt tokens of a request as a provider would bill them (about): see prompt_tokens."""
    return prompt_tokens(req.messages, req.tools, req.prompt_text)


def prompt_tokens(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, prompt_text: str = ""
) -> int:
    """About the prompt tokens of these messages: their text and earlier tool calls, the tools'
    definitions, and `IMAGE_TOKENS` per image part."""
    chars = sum(len(message_text(m)) + len(tool_calls_text(m)) for m in messages)
    chars = chars or len(prompt_text)
    if tools:
        chars += len(json.dumps(tools))
    return estimate_tokens(chars) + IMAGE_TOKENS * image_parts(messages)


def image_parts(messages: list[dict[str, Any]]) -> int:
    """How many `image_url` content parts the messages carry."""
    return sum(
        1
        for m in messages
        if isinstance(m.get("content"), list)
        for p in m["content"]
        if isinstance(p, dict) and p.get("type") == "image_url"
    )


def tool_to_call(req: ProviderRequest) -> dict[str, Any] | None:
    """The function the simulated model calls (its definition), or None to answer in text:
    see the module docstring."""
    tools = [t["function"] for t in req.tools or [] if isinstance(t.get("function"), dict)]
    choice = "auto" if req.tool_choice is None else req.tool_choice
    if not tools or choice == "none":
        return None
    if isinstance(choice, dict):
        return req.function(str((choice.get("function") or {}).get("name")))
    if choice == "required":
        return tools[0]
    return tools[0] if req.messages[-1].get("role") == "user" else None


def answer_kind(req: ProviderRequest) -> AnswerKind:
    if tool_to_call(req) is not None:
        return "tool_calls"
    fmt = (req.response_format or {}).get("type")
    return "json" if fmt in ("json_object", "json_schema") else "text"


def usage_for_cost(
    cost_usd: float, input_per_m: float, output_per_m: float, prompt_est: int
) -> tuple[int, int]:
    """Integer (prompt, completion) tokens whose list cost is nearest `cost_usd`, keeping the
    prompt near `prompt_est`. See the module docstring for the error bound."""
    a, b, target = input_per_m, output_per_m, cost_usd * 1e6
    # Shrink the prompt guess if it alone would exceed the cost (leave room for one token out).
    p0 = max(1, min(prompt_est, math.floor((target - b) / a)))
    c0 = max(0, round((target - p0 * a) / b))
    best: tuple[float, int, int] | None = None
    # Rounding c leaves |r| <= b/2; re-fitting p cuts it to <= a/2. If that would push p below
    # one token, one fewer completion token gives the prompt room (see the bound above).
    for c in (c0, c0 - 1):
        if c < 0:
            continue
        p = max(1, round((target - c * b) / a))
        err = abs(target - p * a - c * b)
        if best is None or err < best[0]:
            best = (err, p, c)
    assert best is not None
    return best[1], best[2]


class Simulator:
    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = config or SimulatorConfig()
        # prompt sha256 -> model -> (reward, cost); first occurrence of a prompt wins
        self._replay: dict[str, dict[str, tuple[float, float]]] = {}
        self._recorded_prices: dict[str, tuple[float, float]] = {}
        files = [self.config.replay_file, *self.config.replay_files]
        for path in (Path(f) for f in files if f is not None):
            self._load_replay(path)

    def _load_replay(self, path: Path) -> None:
        """Merge a reward file in: per (prompt, model), the first file that records it wins."""
        data = load_reward_file(path)
        for i, prompt in enumerate(data.prompts):
            row = self._replay.setdefault(prompt_key(prompt), {})
            for j, m in enumerate(data.models):
                row.setdefault(m, (float(data.rewards[i, j]), float(data.costs[i, j])))
        prices_path = self.config.replay_prices_file or path.with_name("prices.json")
        if self.config.replay_prices_file is not None or prices_path.exists():
            for m, e in load_prices(prices_path).items():
                self._recorded_prices.setdefault(m, (e.input_per_m, e.output_per_m))

    @property
    def replay_size(self) -> int:
        return len(self._replay)

    def behaviour(self, spec: ModelSpec) -> SimBehaviour:
        """The model's registry `simulation`, else the configured default, else no change."""
        if spec.simulation is not None:
            return spec.simulation
        return self.config.behaviours.get(spec.id, _NO_BEHAVIOUR)

    def profile(self, spec: ModelSpec) -> SimProfile:
        base = self.config.speed_profiles.get(spec.speed) or default_speed_profiles()[spec.speed]
        override = self.config.profiles.get(spec.id)
        if override is not None:
            base = base.model_copy(update=override.model_dump(exclude_none=True))
        quality = self.behaviour(spec).quality
        if quality is not None:
            base = base.model_copy(update={"quality": quality})
        return base

    def fault(self, req: ProviderRequest, spec: ModelSpec) -> SimFault:
        """The injected fault of this attempt: a function of (seed, model, request id, attempt),
        so a test knows the outcome of every try exactly."""
        b = self.behaviour(spec)
        if not (b.error_rate or b.timeout_rate or b.rate_limit_rate or b.latency_spike_rate):
            return SimFault(None)
        digest = hashlib.sha256(
            f"{self.config.seed}\0fault\0{spec.id}\0{req.request_id}\0{req.attempt}".encode()
        ).digest()
        u_fail, u_spike = np.random.default_rng(int.from_bytes(digest[:8], "little")).random(2)
        ts = self.config.time_scale
        if u_fail < b.error_rate:
            return SimFault("error", status=b.error_status)
        if u_fail < b.error_rate + b.timeout_rate:
            return SimFault("timeout", wait_s=b.timeout_s * ts)
        if u_fail < b.error_rate + b.timeout_rate + b.rate_limit_rate:
            return SimFault("rate_limit", status=429, retry_after_s=b.retry_after_s)
        spike = b.latency_spike_s * ts if u_spike < b.latency_spike_rate else 0.0
        return SimFault(None, spike_s=spike)

    def _rng(self, req: ProviderRequest, spec: ModelSpec) -> np.random.Generator:
        digest = hashlib.sha256(
            f"{self.config.seed}\0{spec.id}\0{req.prompt_text}".encode()
        ).digest()
        return np.random.default_rng(int.from_bytes(digest[:8], "little"))

    def plan(self, req: ProviderRequest, spec: ModelSpec) -> SimPlan:
        if req.judged is not None:
            return self._verdict(req, spec)
        prof = self.profile(spec)
        rng = self._rng(req, spec)
        # Fixed draw order, so adding a field later does not reshuffle existing plans.
        z_len, z_quality, z_ttft = rng.standard_normal(3)
        prompt_tokens = prompt_tokens_of(req)
        finish = "stop"

        recorded = self._replay.get(prompt_key(req.prompt_text), {}).get(spec.id)
        if recorded is not None:
            reward, cost = recorded
            a, b = self._recorded_prices.get(spec.id, (spec.input_per_m, spec.output_per_m))
            prompt_tokens, completion = usage_for_cost(cost, a, b, prompt_tokens)
        else:
            reward = float(np.clip(prof.quality + prof.quality_sd * z_quality, 0.0, 1.0))
            # mean-preserving log-normal length
            scale = math.exp(_COMPLETION_SIGMA * z_len - _COMPLETION_SIGMA**2 / 2)
            completion = max(1, round(prof.mean_completion_tokens * scale))
            if completion > self.config.max_completion_tokens:
                completion, finish = self.config.max_completion_tokens, "length"
        if req.max_tokens is not None and completion > req.max_tokens:
            completion, finish = req.max_tokens, "length"
        behaviour = self.behaviour(spec)
        if behaviour.reward_value is not None:  # a regression: one reward on every prompt
            reward = behaviour.reward_value
        else:
            reward *= behaviour.reward_scale  # x 1.0 unless a regression is simulated

        words = rng.choice(len(_WORDS), size=completion)
        body = " ".join(_WORDS[w] for w in words)
        content, kind, calls = f"[simulated {spec.id}] {body}", answer_kind(req), ()
        if kind == "tool_calls":
            content, calls, completion, finish = self._tool_call(req, spec)
        elif kind == "json":
            content, completion, finish = self._json(req, spec, body, completion, finish)
        ts = self.config.time_scale
        return SimPlan(
            model_id=spec.id,
            content=content,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion,
            finish_reason=finish,
            ttft_s=prof.ttft_s * math.exp(_TTFT_SIGMA * z_ttft) * ts,
            per_token_s=ts / prof.tokens_per_s,
            recorded_reward=reward,
            replayed=recorded is not None,
            kind=kind,
            tool_calls=calls,
        )

    def _verdict(self, req: ProviderRequest, spec: ModelSpec) -> SimPlan:
        """A simulated judge's answer to a rubric request (core/service/judge_rubric.py): each
        criterion is the judged answer's reward (recorded, or drawn from the answering model's
        quality, regressions included: the judged request's own plan) plus seeded noise, on
        the rubric's 0-10 scale; on average exactly the reward (an unbiased judge)."""
        judged = req.judged
        assert judged is not None
        reward = self.plan(judged, judged.spec).recorded_reward or 0.0
        digest = hashlib.sha256(
            f"{self.config.seed}\0judge\0{spec.id}\0{judged.request_id}".encode()
        ).digest()
        noise = np.random.default_rng(int.from_bytes(digest[:8], "little")).standard_normal(3)
        # The spread narrows towards 0 and 1, so that clipping to the scale cannot bias the
        # score: a recorded 1.0 is scored 10 (clipped noise would average it down to ~0.99,
        # and the models with the most perfect answers would look worse than they are).
        sd = self.config.judge_noise_sd * min(1.0, 2.0 * min(reward, 1.0 - reward))
        scores = np.clip(10.0 * (reward + sd * noise), 0.0, 10.0)
        content = json.dumps({c: round(float(v), 3) for c, v in zip(RUBRIC, scores, strict=True)})
        completion = estimate_tokens(len(content))
        prof, ts = self.profile(spec), self.config.time_scale
        return SimPlan(
            model_id=spec.id,
            content=content,
            prompt_tokens=prompt_tokens_of(req),
            completion_tokens=completion,
            finish_reason="stop",
            ttft_s=prof.ttft_s * ts,
            per_token_s=ts / prof.tokens_per_s,
            recorded_reward=None,
            replayed=False,
            kind="json",
            tool_calls=(),
        )

    def _tool_call(
        self, req: ProviderRequest, spec: ModelSpec
    ) -> tuple[str, tuple[ToolCall, ...], int, str]:
        """(content, calls, completion tokens, finish reason) of a tool-call answer."""
        fn = tool_to_call(req) or {}
        name, params = str(fn.get("name", "")), fn.get("parameters")
        args = json.dumps(minimal_instance(params) if params is not None else {})
        tokens = estimate_tokens(len(json.dumps({"name": name, "arguments": args})))
        args, tokens, finish = _cut(args, tokens, req.max_tokens, "tool_calls")
        turn = hashlib.sha256(
            f"{self.config.seed}\0call\0{spec.id}\0{req.prompt_text}\0{len(req.messages)}".encode()
        ).hexdigest()
        call = ToolCall(id=f"call_{turn[:24]}", function=FunctionCall(name=name, arguments=args))
        return "", (call,), tokens, finish

    def _json(
        self, req: ProviderRequest, spec: ModelSpec, body: str, completion: int, finish: str
    ) -> tuple[str, int, str]:
        """(content, completion tokens, finish reason) of a JSON answer."""
        fmt = req.response_format or {}
        if fmt.get("type") == "json_object":
            return json.dumps({"model": spec.id, "answer": body}), completion, finish
        schema = (fmt.get("json_schema") or {}).get("schema")
        content = json.dumps(minimal_instance(schema if schema is not None else {}))
        return _cut(content, estimate_tokens(len(content)), req.max_tokens, "stop")


def _cut(text: str, tokens: int, limit: int | None, finish: str) -> tuple[str, int, str]:
    """`text` of `tokens` tokens under a `max_tokens` limit: cut to the limit (about four
    characters a token) with finish reason `length` when it is over."""
    if limit is not None and tokens > limit:
        return text[: limit * 4], limit, "length"
    return text, tokens, finish
