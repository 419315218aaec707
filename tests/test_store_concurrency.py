"""Several OS processes (as Ray replicas would) share one StateStore file: exactly-once holds."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from core.state.store import StateStore

REPO = Path(__file__).resolve().parents[1]

_WORKER = textwrap.dedent(
    """
    import sys
    from core.state.store import Event, StateStore

    path, plan = sys.argv[1], sys.argv[2].split(",")
    sys.stdin.readline()  # start together: all open a fresh file at once (schema init race)
    with StateStore(path) as store:
        for item in plan:
            rid, kind = item.split(":")
            seq, applied = store.append_event(Event(None, rid, kind, 1.0, 0, 0.0))
            print(rid, kind, seq, int(applied), flush=True)
    """
)


def test_processes_sharing_a_file_apply_each_id_once(tmp_path: Path) -> None:
    path = tmp_path / "state.db"  # does not exist yet
    rng = np.random.default_rng(7)
    plans = [
        [f"r{rng.integers(300)}:{rng.choice(['charge', 'feedback'])}" for _ in range(250)]
        for _ in range(4)
    ]
    unique = {tuple(item.split(":")) for plan in plans for item in plan}
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(path), ",".join(plan)],
            cwd=REPO,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for plan in plans
    ]
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    outputs = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err

    seq_of: dict[tuple[str, str], int] = {}
    applied_total = 0
    for out, _ in outputs:
        for line in out.splitlines():
            rid, kind, seq, applied = line.split()
            assert seq_of.setdefault((rid, kind), int(seq)) == int(seq)
            applied_total += int(applied)
    assert applied_total == len(unique)
    with StateStore(path) as s:
        assert s.count_events() == len(unique)
        assert {(e.request_id, e.kind): e.seq for e in s.events_after(0)} == seq_of
