"""Local networking helper: a free TCP port on 127.0.0.1 for a server started on this machine."""

from __future__ import annotations

import random
import socket

# Below the kernel's ephemeral range (32768-60999 here), above Ray's worker ports (10002-19999
# by default) and below Serve's direct-ingress replica ports (30000-31000, bound by each
# Ingress replica when the fast paths are on): a port the OS hands out at random (`bind(0)`,
# as Ray's own processes do by the dozen) could be taken between being found free and being
# bound by the server it is for; one from this range is only ever handed out here.
_LOW, _HIGH = 20_000, 29_999
_pick = random.SystemRandom()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now, outside the ranges the OS and
    Ray hand out on their own."""
    for _ in range(200):
        port = _pick.randint(_LOW, _HIGH)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free TCP port in {_LOW}-{_HIGH} on 127.0.0.1")
