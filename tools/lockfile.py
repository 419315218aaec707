"""Keeps requirements.lock in step with pyproject.toml (stdlib only: runs before any install).

`requirements.lock` is made by pip-compile (`make lock`), with a sha256 of every file each pin
may install. Its first line records a digest of what pyproject.toml asks for (requires-python,
dependencies and the locked extras), written by `stamp` after pip-compile. `check` recomputes
the digest and fails, naming the fix, when the two disagree, so a dependency added, removed or
re-ranged in pyproject.toml without re-locking stops `make test` (and CI) before anything runs.

    python3 tools/lockfile.py check    # exit 1 with a message when pyproject and lock disagree
    python3 tools/lockfile.py stamp    # after pip-compile: record the digest in the lock
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = REPO / "pyproject.toml"
LOCK = REPO / "requirements.lock"
LOCKED_EXTRAS = ("dev", "bench")  # the extras `make lock` passes to pip-compile
HEADER = "# pyproject-digest: "


def requested() -> dict[str, object]:
    """What pyproject.toml asks for, in a canonical form (comments and order do not count)."""
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    extras = project.get("optional-dependencies", {})

    def norm(reqs: list[str]) -> list[str]:
        return sorted(re.sub(r"\s+", "", r).lower() for r in reqs)

    return {
        "requires-python": project.get("requires-python", ""),
        "dependencies": norm(project.get("dependencies", [])),
        "extras": {name: norm(extras.get(name, [])) for name in LOCKED_EXTRAS},
    }


def digest() -> str:
    body = json.dumps(requested(), sort_keys=True).encode()
    return hashlib.sha256(body).hexdigest()[:16]


def locked_names() -> set[str]:
    names = set()
    for line in LOCK.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==", line)
        if m:
            names.add(re.sub(r"[-_.]+", "-", m.group(1)).lower())
    return names


def check() -> int:
    if not LOCK.is_file():
        print(f"{LOCK.name} is missing: run `make lock`", file=sys.stderr)
        return 1
    first = LOCK.read_text(encoding="utf-8").splitlines()[:1]
    stated = first[0][len(HEADER) :].strip() if first and first[0].startswith(HEADER) else None
    problems = []
    if stated != digest():
        problems.append(
            f"pyproject.toml's requirements (digest {digest()}) are not the ones "
            f"{LOCK.name} was made from (digest {stated})"
        )
    want = requested()
    names = set()
    for req in want["dependencies"] + [r for rs in want["extras"].values() for r in rs]:
        name = re.match(r"[a-z0-9][a-z0-9._-]*", req).group(0)
        names.add(re.sub(r"[-_.]+", "-", name))
    missing = sorted(names - locked_names())
    if missing:
        problems.append(f"not pinned in {LOCK.name}: {', '.join(missing)}")
    if problems:
        for p in problems:
            print(f"lock drift: {p}", file=sys.stderr)
        print(
            "pyproject.toml and requirements.lock disagree: run `make lock` (keeps the other "
            "pins) and commit both files",
            file=sys.stderr,
        )
        return 1
    print(f"{LOCK.name} matches pyproject.toml (digest {stated})")
    return 0


def stamp() -> int:
    lines = LOCK.read_text(encoding="utf-8").splitlines()
    lines = [ln for ln in lines if not ln.startswith(HEADER)]
    LOCK.write_text("\n".join([HEADER + digest(), *lines]) + "\n", encoding="utf-8")
    print(f"stamped {LOCK.name} with digest {digest()}")
    return 0


if __name__ == "__main__":
    commands = {"check": check, "stamp": stamp}
    if len(sys.argv) != 2 or sys.argv[1] not in commands:
        sys.exit(f"usage: {sys.argv[0]} {{check|stamp}}")
    sys.exit(commands[sys.argv[1]]())
