"""The `paretoserve` command: one sub-command per module, each exposing register(subparsers)."""

from __future__ import annotations

import argparse
import sys

from paretoserve_cli import bench_cmd, features_cmd, loadtest_cmd, priors_cmd, replay_cmd


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="paretoserve", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (replay_cmd, priors_cmd, bench_cmd, features_cmd, loadtest_cmd):
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError) as exc:  # user errors: one line, exit status 2
        print(f"paretoserve {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
