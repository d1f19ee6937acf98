"""`retire plan|start|approve|status|serve|server|demo`: run retirements from the terminal."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import timedelta
from typing import Any, cast

import httpx

from retirement import protocol
from retirement.bootstrap import Services, services, stores, traffic_sources
from retirement.errors import ConfigError, ConflictError, InputError, NotFoundError, SafetyError
from retirement.models import RetirementRequest, utcnow
from retirement.platforms import get_platform
from retirement.render import dossier_markdown
from retirement.settings import RetireSettings
from retirement.state import OPEN, TERMINAL, RetirementState

DEPLOYMENT = "retire-model/retire-model"
DEMO_REQUESTER = "demo-requester"
DEMO_APPROVER = "demo-approver"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the run commands."""
    plan = subparsers.add_parser("plan", help="Print the dossier and plan of a retirement; changes nothing.")
    _request_arguments(plan, required=False)
    plan.add_argument("--json", action="store_true", help="Print the dossier as JSON.")
    plan.set_defaults(func=_plan)

    start = subparsers.add_parser("start", help="Start a retirement as a run of the retire-model deployment.")
    _request_arguments(start, required=True)
    start.set_defaults(func=_start)

    approve = subparsers.add_parser("approve", help="Answer the gate a run is waiting at (same checks as the UI).")
    approve.add_argument("run_id", metavar="RUN_ID", help="The flow run waiting at the gate.")
    approve.add_argument("--approver", required=True, help="Who answers (one of the request's approvers).")
    approve.add_argument("--reject", action="store_true", help="Reject instead of approve.")
    approve.add_argument("--typed-reference", help="The exact model reference (deletion gate).")
    approve.add_argument("--comment", default="", help="Why; goes into the ledger.")
    approve.set_defaults(func=_approve)

    status = subparsers.add_parser("status", help="Retirements and where they stand, or one in detail.")
    status.add_argument("retirement_id", nargs="?", metavar="ID", help="One retirement.")
    status.add_argument(
        "--finished", type=int, default=20, help="How many of the newest finished retirements to list (20)."
    )
    status.add_argument("--all", action="store_true", help="List every finished retirement too.")
    status.set_defaults(func=_status)

    cancel = subparsers.add_parser(
        "cancel",
        help="Stop a retirement for good: cancel its runs (running ones too), undo a soft delete or an unbaked "
        "cutover, release the model.",
    )
    cancel.add_argument("retirement_id", metavar="ID")
    cancel.add_argument("--by", default=os.environ.get("USER", "operator"), help="Who cancels (for the ledger).")
    cancel.add_argument(
        "--wait", type=float, default=120, help="Seconds to wait for running runs to stop before undoing (120)."
    )
    cancel.set_defaults(func=_cancel)

    resume = subparsers.add_parser(
        "resume", help="Start a run of an open retirement at the phase it reached (after a 'needs attention')."
    )
    resume.add_argument("retirement_id", metavar="ID")
    resume.add_argument("--by", default=os.environ.get("USER", "operator"), help="Who resumes (for the ledger).")
    resume.set_defaults(func=_resume)

    check = subparsers.add_parser("check-deployments", help="Validate prefect.yaml offline (keys, crons, entrypoints).")
    check.set_defaults(func=_check_deployments)

    serve = subparsers.add_parser("serve", help="Serve every deployment of prefect.yaml from this machine.")
    serve.set_defaults(func=_serve)

    server = subparsers.add_parser("server", help="Start or stop a local Prefect server (SQLite).")
    server.add_argument("action", choices=["start", "stop"])
    server.add_argument("--port", type=int, default=4200)
    server.set_defaults(func=_server)

    demo = subparsers.add_parser("demo", help="The whole protocol on this machine against the local platform.")
    demo.add_argument("--auto-approve", action="store_true", help=f"Answer every gate as {DEMO_APPROVER}.")
    demo.add_argument("--size", default="64MiB", help="Size of each demo model version (e.g. 64MiB, 2GiB).")
    demo.add_argument("--port", type=int, default=4200, help="Port of the local Prefect server.")
    demo.add_argument("--stop-server", action="store_true", help="Stop the Prefect server at the end if started here.")
    demo.add_argument("--timeout", type=float, default=900, help="Give up after this many seconds.")
    demo.add_argument(
        "--prometheus", action="store_true", help="Also observe traffic through a Prometheus scraping the gateway."
    )
    demo.set_defaults(func=_demo)


def _request_arguments(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument("--model", required=True, help="The version to retire, `name@version`.")
    parser.add_argument("--platform", default="local", help="Platform the model lives on (default: local).")
    parser.add_argument("--replacement", help="The version that takes over production.")
    parser.add_argument("--requester", required=required, default=os.environ.get("USER", "me"))
    parser.add_argument("--approvers", required=required, default="reviewer", help="Comma-separated approvers.")
    parser.add_argument("--reason", required=required, default="planned retirement")
    parser.add_argument("--traffic-source", action="append", default=[], help="Traffic source (repeatable).")
    parser.add_argument("--serving", help="`manual` for a checklist gate instead of the platform's own.")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="Any other request field, e.g. traffic_window_hours=48 (repeatable).",
    )


def _request(args: argparse.Namespace) -> RetirementRequest:
    data: dict[str, Any] = {
        "model": args.model,
        "platform": args.platform,
        "replacement": args.replacement,
        "requester": args.requester,
        "approvers": [a.strip() for a in args.approvers.split(",") if a.strip()],
        "reason": args.reason,
        "traffic_sources": args.traffic_source,
        "serving": args.serving,
    }
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise InputError("--set", f"{item!r} is not FIELD=VALUE", "e.g. traffic_window_hours=48")
        try:
            data[key] = json.loads(value)
        except json.JSONDecodeError:
            data[key] = value
    return RetirementRequest.model_validate(data)


class _Reading:
    """What `retire plan` reads, and what `retire start` checks before it starts a run: the settings, the platform
    and the request's traffic sources.

    Building it opens nothing under RETIRE_HOME (no database, ledger or retirement store, which plan never reads and
    start leaves to the run), so a request refused here leaves nothing behind. The protocol's checks and dossier read
    only these three services.
    """

    def __init__(self, request: RetirementRequest) -> None:
        self.settings = RetireSettings()
        self.platform = get_platform(request.platform, self.settings)
        try:
            self.traffic = traffic_sources(list(request.traffic_sources), self.platform, self.settings)
        except BaseException:
            self.platform.close()
            raise

    @property
    def services(self) -> Services:
        """These services where the protocol takes Services (it reads no others for limits and dossiers)."""
        return cast(Services, self)

    def close(self) -> None:
        """Release the adapters' clients."""
        self.platform.close()
        for source in self.traffic:
            closer = getattr(source, "close", None)
            if callable(closer):
                closer()


def _plan(args: argparse.Namespace) -> int:
    request = _request(args)
    reading = _Reading(request)
    try:
        protocol.check_limits(request, reading.services)
        dossier = protocol.build_dossier(reading.services, request)
    finally:
        reading.close()
    print(dossier.model_dump_json(indent=2) if args.json else dossier_markdown(dossier, request))
    if dossier.refusals:  # a plan that can never finish is refused: `retire start` would refuse it too
        print(f"retire plan: refused ({len(dossier.refusals)} reason(s)):", file=sys.stderr)
        for reason in dossier.refusals:
            print(f"- {reason}", file=sys.stderr)
        return 1
    return 0


def _start(args: argparse.Namespace) -> int:
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments import run_deployment

    from retirement.cli._prefect import use_server

    request = _request(args)
    # Everything the run would refuse at once is refused here, before it opens the retirement (a ledger line,
    # a state, the model's claim): the limits, the traffic sources, the platform's rules for references,
    # versions that do not exist, and the plan's refusals (what would keep it from ever finishing).
    reading = _Reading(request)
    try:
        protocol.check_limits(request, reading.services)
        registry = reading.platform.registry
        for field, ref in (("model", request.ref), ("replacement", request.replacement_ref)):
            if ref is not None and not registry.exists(ref):
                raise InputError(field, f"{ref} does not exist on {ref.platform}", "an existing version")
        refusals = protocol.build_dossier(reading.services, request).refusals
    finally:
        reading.close()
    if refusals:
        raise SafetyError(
            f"refused, nothing was started ({len(refusals)} reason(s); `retire plan` shows the dossier):\n"
            + "\n".join(f"- {reason}" for reason in refusals)
        )
    use_server(RetireSettings())
    run: FlowRun = run_deployment(  # type: ignore[assignment]
        DEPLOYMENT, parameters={"request": request.model_dump(mode="json")}, timeout=0, as_subflow=False
    )
    print(f"started retirement of {request.model}: flow run {run.name} ({run.id})")
    print(f"follow it with `retire status`; answer gates in the UI or with `retire approve {run.id} ...`")
    return 0


def _resume(args: argparse.Namespace) -> int:
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments import run_deployment

    from retirement.cli._prefect import live_runs, use_server

    settings = RetireSettings()
    use_server(settings)
    _, states = stores(settings)
    state = states.load(args.retirement_id)
    if state.stopped:
        raise InputError("ID", f"retirement {state.id} is {state.status}: it cannot go on", "an open retirement")
    busy = live_runs(state.id)
    if busy:
        raise ConflictError(f"retirement {state.id} is carried by run {busy[0].name} ({busy[0].state.name}) already")
    phase = state.next_phase if state.status == "waiting" and state.next_phase else state.phase
    count = len(state.resumes) + 1
    run: FlowRun = run_deployment(  # type: ignore[assignment]
        DEPLOYMENT,
        parameters={"request": state.request.model_dump(mode="json"), "phase": phase.value, "retirement_id": state.id},
        timeout=0,
        as_subflow=False,
        idempotency_key=f"{state.id}:resume:{count}",
        tags=[state.id],
        flow_run_name=f"retire {state.ref} · {phase.value}",
    )
    with states.transaction(state.id) as change:
        change.state.attention = ""
        change.state.resumes.append(
            {"at": utcnow().isoformat(), "phase": phase.value, "run": str(run.id), "why": f"resumed by {args.by}"}
        )
        change.record("decision", "resume", actor=args.by, detail={"phase": phase.value, "flow_run": str(run.id)})
    print(f"{state.id} resumed at {phase.value} by {args.by}: flow run {run.name} ({run.id})")
    return 0


def _approve(args: argparse.Namespace) -> int:
    from retirement.cli._prefect import answer_gate, use_server

    use_server(RetireSettings())
    answer: dict[str, Any] = {
        "decision": "reject" if args.reject else "approve",
        "approver": args.approver,
        "comment": args.comment,
    }
    if args.typed_reference is not None:
        answer["typed_reference"] = args.typed_reference
    gate = answer_gate(args.run_id, answer)
    print(f"{gate}: {answer['decision']} by {args.approver} accepted; the run resumes")
    return 0


def _status(args: argparse.Namespace) -> int:
    settings = RetireSettings()
    _, states = stores(settings)
    if args.retirement_id:
        found = [states.load(args.retirement_id)]
    else:  # every open retirement, then the newest finished ones (the store may hold millions)
        found = states.by_status(OPEN) + states.by_status(TERMINAL, limit=None if args.all else args.finished)
    runs = _run_truth(settings, [s for s in found if not s.stopped])
    if args.retirement_id:
        print(_describe(found[0], runs.get(found[0].id)))
        return 0
    if not found:
        print("no retirements yet")
    for state in found:
        nxt = (
            f" next {state.next_phase.value} at {state.next_run_at:%Y-%m-%d %H:%M:%S}"
            if state.next_run_at and state.next_phase and not state.stopped
            else ""
        )
        truth = f" [{runs[state.id]}]" if state.id in runs else ""
        print(f"{state.id}  {state.ref}  {state.phase.value:<14} {state.status}{nxt}{truth}  {state.status_reason}")
    return 0


def _run_truth(settings: RetireSettings, open_states: list[RetirementState]) -> dict[str, str]:
    """For each open retirement, what carries it now: its live run, or why none does."""
    if not open_states:
        return {}
    try:
        from retirement.cli._prefect import LIVE_TYPES, retirement_runs, use_server

        use_server(settings)
        truth: dict[str, str] = {}
        for state in open_states:
            # A gate's deadline run (scheduled for when the gate fails safe) carries nothing.
            runs = [r for r in retirement_runs(state.id) if not (r.parameters or {}).get("expire_gate")]
            live = [r for r in runs if r.state is not None and r.state.type.value in LIVE_TYPES]
            if live:
                run = live[0]
                when = run.expected_start_time if run.state.type.value == "SCHEDULED" else None
                truth[state.id] = f"live run {run.name}: {run.state.name}" + (
                    f" at {when:%Y-%m-%d %H:%M:%S}" if when else ""
                )
            elif state.attention:
                truth[state.id] = f"no live run: needs attention because {state.attention}"
            elif state.resumes:
                truth[state.id] = f"no live run: last resumed at {state.resumes[-1]['at'][11:16]} UTC"
            else:
                last = runs[0] if runs else None
                ended = f"; its last run {last.name} ended {last.state.name}" if last and last.state else ""
                truth[state.id] = f"no live run{ended}: the reconciler resumes it within a minute"
        return truth
    except Exception as exc:  # status must answer even when the Prefect API is down
        return {s.id: f"Prefect API unreachable ({type(exc).__name__}): runs unknown" for s in open_states}


def _describe(state: RetirementState, truth: str | None = None) -> str:
    lines = [
        f"{state.id}: {state.ref} on {state.ref.platform} - {state.status} {state.status_reason}".rstrip(),
        f"requested by {state.request.requester}: {state.request.reason}",
    ]
    if truth:
        lines.append(truth)
    lines += ["", "phases:"]
    for rec in state.history:
        took = f"{(rec.ended_at - rec.started_at).total_seconds():7.1f}s" if rec.ended_at else "   ...  "
        lines.append(f"  {rec.phase.value:<14} {rec.started_at:%H:%M:%S} {took}  {rec.outcome}")
    lines += ["approvals:"] + [
        f"  {a.gate}: {a.decision} by {a.approver} {a.comment}".rstrip() for a in state.approvals
    ]
    if state.backup_location:
        lines.append(f"backup: {state.backup_location} (manifest sha256 {state.backup_manifest_sha256})")
    if state.receipt:
        lines.append(
            f"deleted: {state.receipt.deleted_at:%Y-%m-%d %H:%M:%S} verified gone: {state.receipt.verified_gone}"
        )
    if state.resumes:
        lines.append("resumed by the reconciler:")
        lines += [f"  {r['at'][:19]} at {r['phase']}: {r['why']}" for r in state.resumes]
    if state.next_phase and state.next_run_at and not state.stopped:
        lines.append(f"next: {state.next_phase.value} at {state.next_run_at.isoformat(timespec='seconds')}")
    return "\n".join(lines)


def _cancel(args: argparse.Namespace) -> int:
    from retirement.cli._prefect import LIVE_TYPES, cancel_runs, live_runs, retirement_runs, use_server

    settings = RetireSettings()
    use_server(settings)
    _, states = stores(settings)
    state = states.load(args.retirement_id)
    if state.stopped:
        raise InputError("ID", f"retirement {state.id} is already {state.status}", "a running or waiting retirement")
    svc = services(state.request.platform, list(state.request.traffic_sources))
    try:
        live_before = {str(r.id) for r in retirement_runs(state.id) if r.state and r.state.type.value in LIVE_TYPES}
        # First the store: from this commit on, every destructive call of every run refuses.
        if not protocol.halt(svc, state, f"cancelled by {args.by}", status="cancelled", actor=args.by):
            raise InputError("ID", f"retirement {state.id} was {state.status} meanwhile", "a running retirement")
        cancelled = cancel_runs(state.id)
        deadline = time.monotonic() + args.wait
        while live_runs(state.id) and time.monotonic() < deadline:  # a call already under way finishes first
            time.sleep(1)
        still = [f"{r.name} ({r.state.name})" for r in live_runs(state.id)]
        # A run at work sees the cancel in the store and stops by itself, often before it could be cancelled.
        by_itself = [
            f"{r.name} ({r.state.name})"
            for r in retirement_runs(state.id)
            if str(r.id) in live_before
            and str(r.id) not in {run_id for run_id, _ in cancelled}
            and r.state is not None
            and r.state.type.value not in LIVE_TYPES
        ]
        undone = protocol.compensate(svc, state)
    finally:
        svc.close()
    print(f"{state.id} cancelled by {args.by}: nothing destructive happens after this.")
    print(f"runs cancelled ({len(cancelled)}): " + (", ".join(line for _, line in cancelled) or "none"))
    if by_itself:
        print(f"runs that stopped by themselves when the cancel landed ({len(by_itself)}): " + ", ".join(by_itself))
    for line in undone:
        print(line)
    if still:
        print(f"still stopping after {args.wait:g} s (they refuse every destructive call): " + ", ".join(still))
    if not any("deleted" in line for line in undone):
        print(f"{state.ref} left in place.")
    return 0


def _check_deployments(args: argparse.Namespace) -> int:
    from retirement.cli._prefect import PREFECT_YAML, validate_prefect_yaml

    problems = validate_prefect_yaml()
    for problem in problems:
        print(problem)
    print(f"{PREFECT_YAML}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
    return 1 if problems else 0


def _serve(args: argparse.Namespace) -> int:
    from retirement.cli._prefect import serve_all, use_server

    use_server(RetireSettings())
    serve_all()
    return 0


def _server(args: argparse.Namespace) -> int:
    from retirement.cli._prefect import ensure_server, stop_server

    settings = RetireSettings()
    if args.action == "stop":
        print(stop_server(settings))
        return 0
    api, started = ensure_server(settings, args.port)
    print(f"Prefect server {'started' if started else 'already running'}: {api.removesuffix('/api')}")
    return 0


# --- the demo -------------------------------------------------------------------------------------


def _demo(args: argparse.Namespace) -> int:
    from retirement.cli._prefect import ensure_server, paused_runs, stop_server
    from retirement.cli.local import parse_size
    from retirement.gateway.loadgen import TrafficGenerator
    from retirement.gateway.server import GatewayProcess
    from retirement.platforms.local import LocalRegistry

    # Windows of seconds: this machine allows it for the demo only (a run parameter never could).
    os.environ["RETIRE_MIN_TRAFFIC_WINDOW_HOURS"] = "0"
    os.environ["RETIRE_CUTOVER_GRACE_SECONDS"] = "3"
    settings = RetireSettings()
    say = _Say()
    api, started = ensure_server(settings, args.port)
    ui = api.removesuffix("/api")
    os.environ.update({"PREFECT_API_URL": api, "PREFECT_UI_URL": ui, "PREFECT_RUNNER_POLL_FREQUENCY": "2"})
    say(f"Prefect server {'started' if started else 'reused'} at {ui}")

    gateway = _start_gateway(settings, GatewayProcess)
    say(f"local gateway at {settings.gateway_url}")
    registry = LocalRegistry(settings.local_dir)
    old, new = registry.seed_demo(parse_size(args.size), reset=True)
    say(f"seeded {old} (production) and its replacement {new}, {args.size} each, under {settings.local_dir}")
    traffic = TrafficGenerator(settings.gateway_url, f"{old.name}@production", rate_per_second=5)
    traffic.start()
    say(f"steady traffic on {old.name}@production (5 requests/s)")

    sources = ["local"]
    prometheus = None
    if args.prometheus:
        prometheus, prometheus_url = _start_prometheus(settings)
        os.environ.update(
            {
                "RETIRE_PROMETHEUS_URL": prometheus_url,
                "RETIRE_PROMETHEUS_MAX_SCRAPE_GAP_SECONDS": "5",
                "RETIRE_PROMETHEUS_STEP_SECONDS": "2",
            }
        )
        sources.append("prometheus")
        say(f"Prometheus at {prometheus_url} scraping the gateway every second")
    server = subprocess.Popen(
        [sys.executable, "-m", "retirement", "serve"],
        env=os.environ.copy(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        request = RetirementRequest(
            model=str(old),
            replacement=str(new),
            requester=DEMO_REQUESTER,
            approvers=[DEMO_APPROVER],
            reason="demo: v2 replaces v1",
            traffic_window_hours=10 / 3600,
            bake_minutes=0.1,
            soft_delete=True,
            pending_delete_hours=5 / 3600,
            monitor_days=20 / 86400,
            monitor_interval_hours=10 / 3600,
            backup_retention_days=30,
            traffic_sources=sources,
        )
        run_id = _trigger(request)
        say(f"retirement started: {ui}/flow-runs/flow-run/{run_id}")
        if not args.auto_approve:
            say(
                "answer the approval gates in the Prefect UI (or `retire approve RUN_ID --approver "
                f"{DEMO_APPROVER} ...`); waiting"
            )
        state = _wait(settings, run_id, args.timeout, paused_runs if args.auto_approve else None, say)
        summary = _summary(settings, state, traffic.stats())
    finally:
        traffic.stop()
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        gateway.stop()
        if prometheus is not None:
            prometheus.terminate()
            prometheus.wait(timeout=20)
        if started and args.stop_server:
            stop_server(settings)
    print()
    print(summary)
    if started and not args.stop_server:
        print(f"\nThe Prefect UI stays up at {ui}; stop it with `retire server stop`.")
    return 0 if state.status == "done" else 1


class _Say:
    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def __call__(self, text: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.1f}s] {text}", flush=True)


def _start_gateway(settings: RetireSettings, gateway_cls: Any) -> Any:
    """The demo's own gateway on RETIRE_GATEWAY_PORT; one already there may serve another root, so refuse it."""
    try:
        answered = httpx.get(f"{settings.gateway_url}/healthz", timeout=2).status_code
    except httpx.HTTPError:
        answered = None
    if answered is not None:
        raise ConflictError(
            f"something already answers on {settings.gateway_url}: stop it, or run the demo with another "
            "RETIRE_GATEWAY_PORT"
        )
    return gateway_cls(settings, settings.gateway_port).start()


def _start_prometheus(settings: RetireSettings) -> tuple[subprocess.Popen[bytes], str]:
    """A Prometheus on 127.0.0.1 scraping the local gateway every second (Debian's `prometheus`)."""
    import shutil
    import socket

    binary = shutil.which("prometheus")
    if binary is None:
        raise ConfigError("`prometheus` is not installed (Debian: apt-get install prometheus)")
    folder = settings.home.expanduser() / "prometheus"
    folder.mkdir(parents=True, exist_ok=True)
    target = settings.gateway_url.removeprefix("http://")
    (folder / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, scrape_timeout: 900ms}\n"
        f"scrape_configs:\n  - job_name: retire-gateway\n    static_configs: [{{targets: ['{target}']}}]\n"
    )
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(folder / "prometheus.log", "ab"),  # noqa: SIM115
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.terminate()
    raise ConfigError(f"Prometheus did not become ready; see {folder / 'prometheus.log'}")


def _trigger(request: RetirementRequest) -> str:
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments import run_deployment

    deadline = time.monotonic() + 60
    while True:
        try:
            run: FlowRun = run_deployment(  # type: ignore[assignment]
                DEPLOYMENT, parameters={"request": request.model_dump(mode="json")}, timeout=0, as_subflow=False
            )
            return str(run.id)
        except Exception as exc:  # the served deployment registers a few seconds after `retire serve` starts
            if time.monotonic() > deadline:
                raise NotFoundError(f"deployment {DEPLOYMENT} did not appear: {exc}") from exc
            time.sleep(1)


def _wait(settings: RetireSettings, run_id: str, timeout: float, paused: Any, say: _Say) -> RetirementState:
    _, states = stores(settings)
    deadline = time.monotonic() + timeout
    seen: tuple[str, str] | None = None
    answered: set[str] = set()
    state: RetirementState | None = None
    while time.monotonic() < deadline:
        state = states.by_flow_run(run_id) or state
        failed = _failed_run([run_id, *(state.flow_runs if state else [])])
        if failed is not None and (state is None or not state.stopped):
            raise SafetyError(f"flow run {failed.name} ended {failed.state.name}: {failed.state.message}")
        if state is not None:
            here = (state.phase.value, state.status)
            if here != seen:
                say(f"{state.ref}: {state.phase.value} - {state.status}")
                seen = here
            if state.stopped:
                return state
            if paused is not None:
                for run in paused(state.flow_runs):
                    key = run.state.state_details.pause_key
                    if key in answered:
                        continue
                    answer = {"decision": "approve", "approver": DEMO_APPROVER, "comment": "demo auto-approval"}
                    if key.startswith(protocol.GATE_DELETION):
                        answer["typed_reference"] = str(state.ref)
                    from retirement.cli._prefect import answer_gate

                    try:
                        gate = answer_gate(str(run.id), answer)
                    except InputError as exc:  # the gate's form is saved a moment after the run pauses
                        if "schema not found" in str(exc):
                            continue
                        raise
                    say(f"approving {gate} as {DEMO_APPROVER}")
                    answered.add(key)
        time.sleep(1)
    raise SafetyError(f"the demo retirement did not finish within {timeout:.0f} s (see `retire status`)")


def _failed_run(flow_run_ids: list[str]) -> Any:
    """The first of these runs that failed or crashed, if any."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(i) for i in set(flow_run_ids)]))
        )
    return next((r for r in runs if r.state is not None and (r.state.is_failed() or r.state.is_crashed())), None)


def _summary(settings: RetireSettings, state: RetirementState, traffic: dict[str, dict[str, int]]) -> str:
    lines = [_describe(state), ""]
    lines.append("traffic generator: " + ", ".join(f"v{v}: {c.get('ok', 0)} ok" for v, c in sorted(traffic.items())))
    try:
        old = httpx.post(f"{settings.gateway_url}/v1/models/{state.ref}/predict", json={"inputs": [1]}, timeout=5)
        lines.append(f"gateway now answers {old.status_code} for {state.ref}")
    except httpx.HTTPError:
        pass
    count, last = stores(settings)[0].verify()
    lines.append(f"ledger verify: OK ({count} entries, last hash {last[:16]}...)")
    if state.receipt is not None:
        until = state.receipt.deleted_at + timedelta(days=state.request.backup_retention_days)
        lines.append(
            f"backup kept until {until:%Y-%m-%d}: restore with `retire backup restore {state.backup_location}`"
        )
    return "\n".join(lines)
