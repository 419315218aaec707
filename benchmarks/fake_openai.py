"""An instant OpenAI-compatible upstream for side-by-side gateway benchmarks.

    python -m benchmarks.fake_openai --port P

`POST /v1/chat/completions` answers at once with a fixed short completion in OpenAI's wire
format (id, model echoed, one choice, usage); `GET /v1/models` lists what it was asked for.
aiohttp's server, one process: the floor every gateway is measured against.
"""

from __future__ import annotations

import argparse
import itertools

from aiohttp import web

_ids = itertools.count()
_TEXT = "The answer is 42."


async def _chat(request: web.Request) -> web.Response:
    body = await request.json()
    prompt_chars = sum(len(str(m.get("content") or "")) for m in body.get("messages", []))
    return web.json_response(
        {
            "id": f"chatcmpl-{next(_ids)}",
            "object": "chat.completion",
            "created": 0,
            "model": body.get("model", "unknown"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": _TEXT},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": max(1, prompt_chars // 4),
                "completion_tokens": 6,
                "total_tokens": max(1, prompt_chars // 4) + 6,
            },
        }
    )


async def _models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": []})


def app() -> web.Application:
    a = web.Application()
    a.router.add_post("/v1/chat/completions", _chat)
    a.router.add_get("/v1/models", _models)
    return a


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    web.run_app(app(), host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
