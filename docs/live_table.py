"""Markdown tables of the live replays against the offline replay at the same budget and seed.

python docs/live_table.py docs/results/live      (reads the JSON files the commands wrote)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(folder: Path) -> None:
    rows = [
        "| scenario | budget $/req | live reward | offline reward | difference | live compliance"
        " | offline compliance | answered | p50 / p99 ms | req/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    phased = [
        "| scenario | live P1 / P2 / P3 reward | offline P1 / P2 / P3 | live P1 / P2 / P3 "
        "compliance | live figure | offline figure |",
        "|---|---|---|---|---|---|",
    ]
    for live_path in sorted(folder.glob("*.json")):
        if live_path.name.startswith("offline_"):
            continue
        live = json.loads(live_path.read_text())
        off = json.loads((folder / f"offline_{live_path.name}").read_text())
        s, o = live["summary"], off["summary"]
        lat, req = live["latency_ms"], live["requests"]
        rows.append(
            f"| {live['scenario']} | {live['budget_usd']:.3g} | {s['mean_reward']:.4f} | "
            f"{o['mean_reward']:.4f} | {s['mean_reward'] - o['mean_reward']:+.4f} | "
            f"{s['compliance']:.3f} | {o['compliance']:.3f} | {req['answered']}/{req['sent']} | "
            f"{lat['p50']:.0f} / {lat['p99']:.0f} | {live['throughput_rps']:.1f} |"
        )
        if live["phases"]:
            key = next(k for k in ("quality_lift", "reroute_steps", "adoption_steps") if k in live)
            fmt = (lambda v: f"{v:+.4f}") if key == "quality_lift" else str
            phased.append(
                f"| {live['scenario']} | "
                + " / ".join(f"{p['mean_reward']:.4f}" for p in live["phases"])
                + " | "
                + " / ".join(f"{p['mean_reward']:.4f}" for p in off["phases"])
                + " | "
                + " / ".join(f"{p['compliance']:.3f}" for p in live["phases"])
                + f" | {key} = {fmt(live[key])} | {key} = {fmt(off[key])} |"
            )
    print("\n".join(rows))
    print()
    print("\n".join(phased))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
