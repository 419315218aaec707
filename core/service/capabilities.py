"""What a chat request needs of a model: capabilities and size, as the Router's limits.

The Router then considers only models that can serve it (core.method.arms.cannot_serve), for
auto-routing, a named model and every fallback alike:
- `tools` when the request declares tools or carries a tool turn (an assistant message with
  `tool_calls`, or a `tool` message: only a tool-calling model can continue that history);
- `vision` when any message has an `image_url` part;
- `json_schema` when `response_format.type` is `json_schema` (`json_object` needs no
  capability: any chat model can be asked for a JSON object);
- the estimated prompt plus the requested output within the model's context window, and the
  requested output within its `max_output_tokens`.

The prompt estimate is the simulator's (core.replay.simulator.prompt_tokens: ~4 characters a
token over text, tool definitions and tool calls, plus a flat count per image). A model whose
window the prompt only nearly fills may still refuse it upstream; the request then falls back
like after any provider failure.
"""

from __future__ import annotations

from typing import Any

from core.replay.simulator import estimate_tokens, image_parts, prompt_tokens
from core.service.protocol import ChatCompletionRequest, ExplainRequest


def request_needs(body: ChatCompletionRequest) -> dict[str, Any]:
    """`requires`, `prompt_tokens` and `output_tokens` of a chat request, as RouteLimits
    fields (`requires` and `output_tokens` only when they apply)."""
    messages, tools = body.wire_messages, body.wire_tools
    requires = set()
    if tools or any(m.get("tool_calls") or m.get("role") == "tool" for m in messages):
        requires.add("tools")
    if image_parts(messages):
        requires.add("vision")
    if body.response_format is not None and body.response_format.type == "json_schema":
        requires.add("json_schema")
    needs: dict[str, Any] = {"prompt_tokens": prompt_tokens(messages, tools, body.prompt_text())}
    if requires:
        needs["requires"] = sorted(requires)
    if body.output_token_limit:
        needs["output_tokens"] = body.output_token_limit
    return needs


def explain_limits(body: ExplainRequest) -> dict[str, Any]:
    """The Router's limits for /admin/explain: the caller's routing options plus the needs the
    body states (capabilities, output) and the prompt's size, so each model's reason shows."""
    limits = body.paretoserve.model_dump(exclude_none=True) if body.paretoserve else {}
    limits["prompt_tokens"] = estimate_tokens(len(body.prompt))
    if body.requires:
        limits["requires"] = sorted(set(body.requires))
    if body.max_tokens:
        limits["output_tokens"] = body.max_tokens
    return limits
