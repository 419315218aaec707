"""`serve run` that stops cleanly on SIGTERM too: what `make run` starts.

    python tools/serve_run.py [serve run's arguments...]   (default: serve_config.yaml)

`serve run` shuts Serve down on SIGINT (Ctrl-C), stopping HAProxy with it. On SIGTERM, what
process managers send (systemd, `docker stop`, Kubernetes), Ray 2.60's `serve run` dies at
once and the HAProxy that the fast paths start (README "Speed") lives on, still holding the
service's port, so the next start fails to bind it. This launcher runs `serve run` in a
session of its own (a signal to the launcher's group does not reach it) and hands it SIGINT
for either signal; if it has not stopped 150 s later, SIGKILL. Exits with its exit status.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

# Serve drains the Ingress for 30 s under the fast paths, then gives replicas their graceful
# shutdown: well under this.
STOP_TIMEOUT_S = 150


def main(argv: list[str]) -> int:
    serve = Path(sys.executable).parent / "serve"
    cmd = [str(serve), "run", *(argv or ["serve_config.yaml"])]
    child: list[subprocess.Popen] = []
    kill_at: list[float] = []

    def stop(signum: int, frame: object) -> None:
        if not child:  # before `serve run` started: nothing to stop
            raise SystemExit(128 + signum)
        child[0].send_signal(signal.SIGINT)
        kill_at.append(time.monotonic() + STOP_TIMEOUT_S)

    # Caught before the fork, so `serve run` starts with SIGINT at its default (a caught signal
    # is reset by exec; an ignored one, as in anything started in the background by a shell,
    # would stay ignored, and `serve run` would never hear the SIGINT it is sent).
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    child.append(subprocess.Popen(cmd, start_new_session=True))
    while True:
        try:
            rc = child[0].wait(timeout=1.0)
            return 128 - rc if rc < 0 else rc  # killed by a signal: the shell's convention
        except subprocess.TimeoutExpired:
            if kill_at and time.monotonic() > kill_at[0]:
                child[0].kill()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
