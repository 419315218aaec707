"""`paretoserve loadtest {replay,chaos,fuzz}`: replay, chaos and fuzz runs against the live service.

`replay` runs the offline replay's protocol through the HTTP service. With --start-server the
app is started here (`serve run` on a free port, state in a work dir) with the simulated
provider in replay mode over the same reward files, the router's seed set to --seed, and
priors built from the warm-up stream (as the offline replay does); with --url a running
service is driven instead (its admin key from $PARETOSERVE_ADMIN_KEY).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
from pathlib import Path

from core.encoding.features import load_projection
from core.replay.prompts import load_prompts
from core.replay.protocol import ReplaySpec, Scenario, start_models, stream_orders
from loadtest.chaos import ChaosConfig, run_chaos
from loadtest.fuzz import run_schemathesis
from loadtest.live_replay import LiveDriver, LivePlan, run_plan
from loadtest.server import ADMIN_KEY_ENV, base_config, serve_app
from paretoserve_cli.replay_cmd import print_summary, write_json
from paretoserve_cli.replay_inputs import (
    ReplayInputs,
    positive,
    priors_arg,
    resolve_inputs,
    resolve_priors,
)


def _plan(args: argparse.Namespace) -> tuple[LivePlan, dict]:
    """The prompts to send, the model specs and what the server needs (priors, files)."""
    inputs = resolve_inputs(args.data, args.warmup, args.holdout_split, args.prices)
    data_file, data_rows = inputs.data, inputs.data_rows
    warm_file, warm_rows = inputs.warm, inputs.warm_rows
    specs = inputs.specs
    scenario = Scenario(args.scenario)
    first_models, newcomer = start_models(
        scenario, data_file.models, warm_file.models if warm_file else None
    )
    warm_order, phases = stream_orders(
        len(warm_rows) if warm_rows is not None else None, len(data_rows), scenario, args.seed
    )
    cut = slice(args.limit)  # None: everything
    warm_prompts = (
        [warm_file.prompts[warm_rows[i]] for i in warm_order[cut]] if warm_file is not None else []
    )
    plan = LivePlan(
        scenario=scenario,
        budget_usd=args.budget,
        warmup=warm_prompts,
        phases=[
            (name, [data_file.prompts[data_rows[i]] for i in rows[cut]]) for name, rows in phases
        ],
        specs=specs,
        spec=ReplaySpec(
            scenario=scenario,
            budget_usd=args.budget,
            newcomer_reward_scale=args.newcomer_reward_scale,
        ),
        newcomer=newcomer,
    )
    server = {
        "models": [specs[m] for m in first_models],
        "replay_files": [p for p in (args.data, args.warmup) if p is not None],
        "prices": inputs.prices,
        "inputs": inputs,
    }
    return plan, server


def _priors(args: argparse.Namespace, inputs: ReplayInputs, workdir: Path) -> str | None:
    """A priors file for the service: --priors, or built from the warm-up rows, or none."""
    choice = resolve_priors(args.priors, inputs, load_projection())
    if choice.path is not None:
        return str(choice.path.resolve())
    if choice.built is None:
        return None
    path = workdir / "priors.json"
    choice.built.save(path)
    return str(path)


def _app_args(args: argparse.Namespace, server: dict, workdir: Path) -> dict:
    base = base_config()["applications"][0]["args"]
    sim_options = {
        "seed": args.seed,
        "time_scale": args.sim_time_scale,
        "replay_file": str(Path(server["replay_files"][0]).resolve()),
        "replay_files": [str(Path(p).resolve()) for p in server["replay_files"][1:]],
        "replay_prices_file": str(Path(server["prices"]).resolve()),
    }
    return {
        **base,
        "budget_usd_per_request": args.budget,
        "state_path": str(workdir / "state" / "paretoserve.db"),
        "priors_path": _priors(args, server["inputs"], workdir),
        "models": [s.model_dump(mode="json", exclude_none=True) for s in server["models"]],
        "providers": {"simulated": {"kind": "simulated", "options": sim_options}},
        "router": {"seed": args.seed},
        "judge": _judge_args(args, base.get("judge", {})),
    }


def _judge_args(args: argparse.Namespace, base: dict) -> dict:
    """--feedback client: the driver posts the recorded rewards and the Judge is off;
    --feedback judge: the driver posts nothing and the simulated Judge scores --judge-rate of
    the answers as soon as they are answered (no client to wait for)."""
    if args.feedback == "client":
        return {**base, "enabled": False}
    return {
        **base,
        "enabled": True,
        "sample_rate": args.judge_rate,
        "client_grace_s": 0,
        "daily_cap_usd": 1e6,
        "seed": args.seed,
    }


async def _drive(args: argparse.Namespace, plan: LivePlan, url: str, admin_key: str) -> dict:
    driver = LiveDriver(
        url,
        admin_key,
        concurrency=args.concurrency,
        feedback_delay_ms=(0.0, args.feedback_delay_ms),
        seed=args.seed,
        post_feedback=args.feedback == "client",
    )
    try:
        if args.url:  # a running service: make its budget the one asked for
            await driver.admin("PUT", "/admin/budget", {"usd_per_request": args.budget})
        return await run_plan(driver, plan)
    finally:
        await driver.aclose()


def replay(args: argparse.Namespace) -> int:
    plan, server = _plan(args)
    if args.url and args.feedback == "judge":
        raise ValueError("--feedback judge needs --start-server (the Judge is configured here)")
    if not 0.0 <= args.judge_rate <= 1.0:
        raise ValueError(f"--judge-rate must be in [0, 1], got {args.judge_rate}")
    if args.url:
        report = asyncio.run(_drive(args, plan, args.url, _admin_key()))
    else:
        workdir = Path(args.workdir or tempfile.mkdtemp(prefix="paretoserve-live-"))
        app_args = _app_args(args, server, workdir.resolve())
        print(f"starting the service (state and logs in {workdir}) ...", flush=True)
        with serve_app(app_args, workdir.resolve()) as app:
            report = asyncio.run(_drive(args, plan, app.base_url, app.admin_key))
    report.update(
        seed=args.seed,
        concurrency=args.concurrency,
        feedback_source=args.feedback,
        judge_rate=args.judge_rate if args.feedback == "judge" else None,
        feedback_delay_ms=[0.0, args.feedback_delay_ms],
        inputs={
            "data": str(args.data),
            "warmup": str(args.warmup) if args.warmup else None,
            "holdout_split": args.holdout_split,
            "prices": str(server["prices"]),
            "url": args.url or "started here",
        },
    )
    _print(report)
    write_json(args.json, report)
    if args.plot:
        from paretoserve_cli.plot import plot_live

        plot_live(report, args.plot)
    return 0 if report["requests"]["failed"] == 0 else 1


def chaos(args: argparse.Namespace) -> int:
    """Start the service here (the Router's process must be ours to kill), run, audit."""
    prompts = load_prompts(args.data)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="paretoserve-chaos-")).resolve()
    app_args = base_config()["applications"][0]["args"]
    app_args.update(budget_usd_per_request=args.budget, state_path=str(workdir / "state.db"))
    # The audit counts the driver's feedback: no Judge posting feedback of its own.
    app_args["judge"] = {**app_args.get("judge", {}), "enabled": False}
    sim = app_args["providers"]["simulated"]["options"]
    sim["time_scale"] = args.sim_time_scale
    if args.data:
        sim["replay_file"] = str(Path(args.data).resolve())
    cfg = ChaosConfig(
        seconds=args.minutes * 60,
        kill_every_s=args.kill_every_s,
        fault_rate=args.fault_rate,
        concurrency=args.concurrency,
        feedback_delay_ms=args.feedback_delay_ms,
        seed=args.seed,
        tenant_cap_usd=args.tenant_cap_usd,
    )
    print(f"starting the service (state and logs in {workdir}) ...", flush=True)
    with serve_app(app_args, workdir) as app:
        report = asyncio.run(run_chaos(app, prompts, cfg))
    req, fb, sp = report["requests"], report["feedback"], report["spend"]
    print(
        f"chaos {args.minutes:g} min, {len(report['router_kills'])} Router kills, "
        f"faults {args.fault_rate:.0%}: answered {req['answered']}/{req['sent']} "
        f"({req['answered_share']:.4%}), errors {req['errors']}; feedback acknowledged "
        f"{fb['acknowledged']}, lost {fb['lost']}, double-applied {fb['double_applied']}; "
        f"compliance {sp['compliance']:.4f}; memory MiB {report['memory_mib']}"
    )
    for tenant, t in report.get("tenants", {}).items():
        print(
            f"  tenant {tenant}: answered {t['answered']}, refused by its cap "
            f"{t['refused_by_cap']}, failed {t['failed']}; router spend "
            f"${t['router_spend_usd']:.6f} for answers costing ${t['answered_cost_usd']:.6f}, "
            f"{t['router_charges']} charges"
            + (f"; cap ${t['cap_usd']:g}, within: {t['within_cap']}" if "cap_usd" in t else "")
        )
    write_json(args.json, report)
    good = fb["lost"] == 0 and fb["double_applied"] == 0 and sp["router_charges"] >= req["answered"]
    for t in report.get("tenants", {}).values():
        good &= not (t["spend_lost"] or t["charges_lost"] or t["charged_twice"])
        good &= t.get("within_cap", True)
    return 0 if good else 1


def judge(args: argparse.Namespace) -> int:
    """The default app with no client feedback: what its Judge applies and what it costs."""
    from loadtest.judge_run import run

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="paretoserve-judge-")).resolve()
    print(f"starting the service (state and logs in {workdir}) ...", flush=True)
    report = run(
        args.data,
        workdir,
        requests=args.requests,
        sample_rate=args.sample_rate,
        grace_s=args.grace_s,
        time_scale=args.sim_time_scale,
        concurrency=args.concurrency,
        seed=args.seed,
    )
    j, req = report["judge"], report["requests"]
    print(
        f"judge: {req['answered']}/{req['sent']} answered in {req['seconds']:.0f}s, no client "
        f"feedback; offered {j['offered']}, judged {j['judged']}, applied {j['applied']}, "
        f"skipped {j['skipped']}, failed {j['failed']}; router updates +"
        f"{report['router_updates_added']} (applied once: {report['applied_once']}); "
        f"judge spend ${j['spend_usd']:.4f} of ${j['daily_cap_usd']:g}/day"
    )
    for m, before in report["models_before"].items():
        after = report["models_after"][m]
        print(
            f"  {m}: updates {before['updates']} -> {after['updates']}, mean estimated quality "
            f"on the probe prompts {before['probe_quality']:.4f} -> {after['probe_quality']:.4f}"
        )
    write_json(args.json, report)
    good = report["applied_once"] and report["spend_within_cap"] and req["answered"] == req["sent"]
    return 0 if good else 1


def tenants(args: argparse.Namespace) -> int:
    """A capped tenant flooded until refused, beside an uncapped one."""
    from loadtest.tenant_flood import tenant_flood

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="paretoserve-tenants-")).resolve()
    print(f"starting the service (state and logs in {workdir}) ...", flush=True)
    report = tenant_flood(
        workdir,
        args.data,
        cap_usd=args.cap_usd,
        capped_usd_per_request=args.capped_usd_per_request,
        steady_usd_per_request=args.steady_usd_per_request,
        concurrency=args.concurrency,
        refusals=args.refusals,
        max_requests=args.max_requests,
        time_scale=args.sim_time_scale,
    )
    c, s = report["capped"], report["steady"]
    charged = c["router"]["spend_usd"]
    print(
        f"capped (${args.cap_usd:g}/day, hard cap, {args.concurrency} in flight): "
        f"{c['answered']} answered, {c['refused_429']} refused (429, Retry-After "
        f"{c['retry_after_s']}), other errors {c['other_errors']}; charged ${charged:.6f} "
        f"(headers ${c['charged_by_headers_usd']:.6f}); cheapest model's share by tenth "
        f"{c['cheapest_share_by_tenth']}"
    )
    print(
        f"steady: {s['answered']}/{s['sent']} answered, errors {s['errors']}, "
        f"spend ${s['router']['spend_usd']:.6f}"
    )
    write_json(args.json, report)
    good = (
        charged <= args.cap_usd + 1e-12
        and c["charged_by_headers_usd"] <= args.cap_usd + 1e-12
        and c["refused_429"] > 0
        and not c["other_errors"]
        and not s["errors"]
    )
    return 0 if good else 1


def fuzz(args: argparse.Namespace) -> int:
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="paretoserve-fuzz-")).resolve()
    if args.url:
        report = run_schemathesis(args.url, _admin_key(), workdir, args.max_examples, args.seed)
    else:
        app_args = base_config()["applications"][0]["args"]
        app_args["state_path"] = str(workdir / "state.db")
        app_args["providers"]["simulated"]["options"]["time_scale"] = 0
        print(f"starting the service (state and logs in {workdir}) ...", flush=True)
        with serve_app(app_args, workdir) as app:
            report = run_schemathesis(
                app.base_url, app.admin_key, workdir, args.max_examples, args.seed
            )
    print(
        f"schemathesis: {report['cases_generated']} cases over "
        f"{report['operations_tested']}/{report['operations_total']} operations, "
        f"{report['server_errors']} server errors (details in {workdir})"
    )
    write_json(args.json, report)
    return 0 if report["server_errors"] == 0 and not report["errors"] else 1


def _print(report: dict) -> None:
    print_summary(report, f"live {report['scenario']} budget={report['budget_usd']:.3g}")
    req, lat = report["requests"], report["latency_ms"]
    print(
        f"  requests {req['answered']}/{req['sent']} answered, errors {req['errors']}; "
        f"feedback {report['feedback']['statuses']}; latency p50 {lat['p50']:.0f} ms "
        f"p99 {lat['p99']:.0f} ms; {report['throughput_rps']:.1f} req/s"
    )


def _admin_key() -> str:
    """The admin key of a running service (--url), from the environment."""
    key = os.environ.get(ADMIN_KEY_ENV)
    if not key:
        raise ValueError(f"--url needs the service's admin key in ${ADMIN_KEY_ENV}")
    return key


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("loadtest", help="load and replay runs against the live service")
    lsub = p.add_subparsers(dest="loadtest_command", required=True)
    r = lsub.add_parser("replay", help="the paper's replay through the HTTP service")
    r.add_argument("--data", type=Path, required=True, help="evaluation reward file")
    r.add_argument("--warmup", type=Path, help="warm-up reward file (sent first, over HTTP)")
    r.add_argument(
        "--priors",
        type=priors_arg,
        help="priors file, or 'none' (default: built from the warm-up stream; --start-server only)",
    )
    r.add_argument("--prices", type=Path, help="prices.json (default: as in `replay`)")
    r.add_argument("--scenario", choices=[s.value for s in Scenario], default="stationary")
    r.add_argument("--budget", type=positive, required=True, help="US$ per request")
    r.add_argument("--seed", type=int, default=0, help="stream order and router seed")
    r.add_argument("--holdout-split", type=int, metavar="SEED", help="as in `replay`")
    r.add_argument("--concurrency", type=int, default=16)
    r.add_argument(
        "--feedback-delay-ms",
        type=float,
        default=2000.0,
        help="feedback is posted after a uniform random delay in [0, MS]",
    )
    r.add_argument(
        "--feedback",
        choices=("client", "judge"),
        default="client",
        help="who sends the rewards: the driver posts the recorded ones (client), or the "
        "service's simulated Judge scores the answers and the driver posts none (judge; "
        "--start-server only)",
    )
    r.add_argument(
        "--judge-rate", type=float, default=1.0, help="--feedback judge: share of answers judged"
    )
    r.add_argument("--newcomer-reward-scale", type=float, default=1.0)
    r.add_argument(
        "--limit",
        type=int,
        help="send only the first N prompts of the warm-up stream and of each phase (smoke runs)",
    )
    where = r.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--start-server",
        action="store_true",
        help="start the app here (simulated provider replaying the files)",
    )
    where.add_argument("--url", help=f"drive a running service (admin key from ${ADMIN_KEY_ENV})")
    r.add_argument(
        "--sim-time-scale",
        type=float,
        default=0.1,
        help="--start-server: simulated latency scale (1 = realistic, 0 = instant)",
    )
    r.add_argument("--workdir", type=Path, help="--start-server: state and logs (default: temp)")
    r.add_argument("--json", type=Path, help="write the report here")
    r.add_argument("--plot", type=Path, help="write a PNG of spend, mix and reward over time")
    r.set_defaults(func=replay)

    c = lsub.add_parser("chaos", help="traffic while killing the Router and injecting faults")
    c.add_argument("--minutes", type=positive, default=10.0)
    c.add_argument("--kill-every-s", type=float, default=60.0, help="0 = never (a soak)")
    c.add_argument(
        "--fault-rate",
        type=float,
        default=0.2,
        help="share of provider attempts that fail: half 5xx, a quarter 429, a quarter timeouts",
    )
    c.add_argument("--concurrency", type=int, default=16)
    c.add_argument("--feedback-delay-ms", type=float, default=2000.0)
    c.add_argument("--budget", type=positive, default=6.64e-4, help="US$ per request")
    c.add_argument(
        "--data",
        type=Path,
        help="reward file: prompts, replayed usage and rewards "
        "(default: built-in prompts, drawn rewards)",
    )
    c.add_argument(
        "--tenant-cap-usd",
        type=positive,
        help="half the clients use a tenant hard-capped at this many US$ a day, half an "
        "uncapped tenant; the audit adds each tenant's spend, charges and the cap",
    )
    c.add_argument("--sim-time-scale", type=float, default=0.1)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--workdir", type=Path, help="state and logs (default: a temp dir)")
    c.add_argument("--json", type=Path, help="write the report here")
    c.set_defaults(func=chaos)

    j = lsub.add_parser("judge", help="the default app learning from its Judge alone")
    j.add_argument("--data", type=Path, required=True, help="reward file: prompts, recordings")
    j.add_argument("--requests", type=int, default=2000)
    j.add_argument("--sample-rate", type=float, default=0.2, help="share of answers judged")
    j.add_argument("--grace-s", type=float, default=30.0, help="the Judge's client_grace_s")
    j.add_argument("--sim-time-scale", type=float, default=0.1)
    j.add_argument("--concurrency", type=int, default=16)
    j.add_argument("--seed", type=int, default=0, help="prompt order")
    j.add_argument("--workdir", type=Path, help="state and logs (default: a temp dir)")
    j.add_argument("--json", type=Path, help="write the report here")
    j.set_defaults(func=judge)

    t = lsub.add_parser("tenants", help="a capped tenant flooded until refused, beside another")
    t.add_argument(
        "--data", type=Path, help="reward file: prompts and recordings (default: built-in prompts)"
    )
    t.add_argument("--cap-usd", type=float, default=0.05, help="the capped tenant's daily cap")
    t.add_argument(
        "--capped-usd-per-request",
        type=float,
        default=2e-3,
        help="the capped tenant's target per request (no period pacing: only the cap "
        "moves it to cheaper models)",
    )
    t.add_argument("--steady-usd-per-request", type=float, default=1e-3)
    t.add_argument("--concurrency", type=int, default=64, help="capped requests in flight")
    t.add_argument("--refusals", type=int, default=200, help="stop after this many 429s")
    t.add_argument("--max-requests", type=int, default=20_000)
    t.add_argument("--sim-time-scale", type=float, default=0.05)
    t.add_argument("--workdir", type=Path, help="state and logs (default: a temp dir)")
    t.add_argument("--json", type=Path, help="write the report here")
    t.set_defaults(func=tenants)

    f = lsub.add_parser("fuzz", help="schemathesis over the service's own OpenAPI document")
    fw = f.add_mutually_exclusive_group(required=True)
    fw.add_argument("--start-server", action="store_true", help="start the app here")
    fw.add_argument("--url", help=f"fuzz a running service (admin key from ${ADMIN_KEY_ENV})")
    f.add_argument("--max-examples", type=int, default=50, help="cases per operation and phase")
    f.add_argument("--seed", type=int, default=1)
    f.add_argument("--workdir", type=Path, help="reports, state and logs (default: a temp dir)")
    f.add_argument("--json", type=Path, help="write the summary here")
    f.set_defaults(func=fuzz)
