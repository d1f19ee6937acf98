"""`retire gateway`: serve the local gateway, send it traffic, read its request log."""

from __future__ import annotations

import argparse
import logging
import time

from retirement.errors import InputError
from retirement.gateway.requestlog import RequestLog
from retirement.settings import RetireSettings


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `retire gateway serve|traffic|log`."""
    parser = subparsers.add_parser("gateway", help="The local gateway: serve it, send it traffic, read its log.")
    sub = parser.add_subparsers(dest="gateway_command", metavar="ACTION", required=True)

    serve = sub.add_parser("serve", help="Serve the gateway until Ctrl-C.")
    serve.add_argument("--host", default=None, help="Address to bind (default RETIRE_GATEWAY_HOST, 127.0.0.1).")
    serve.add_argument("--port", type=int, default=None, help="Port (default RETIRE_GATEWAY_PORT, 8765).")
    serve.set_defaults(func=_serve)

    traffic = sub.add_parser("traffic", help="Send a steady stream of predict requests and count who answers.")
    traffic.add_argument("--target", default="churn-model@production", help="name@alias_or_version.")
    traffic.add_argument("--rate", type=float, default=5.0, help="Requests per second (default 5).")
    traffic.add_argument("--duration", type=float, default=30.0, help="Seconds to run (default 30).")
    traffic.add_argument("--url", default=None, help="Gateway URL (default from RETIRE_GATEWAY_HOST/PORT).")
    traffic.set_defaults(func=_traffic)

    log = sub.add_parser("log", help="Show the last requests the gateway logged.")
    log.add_argument("--limit", type=int, default=20, help="How many (default 20).")
    log.add_argument("--model", default=None, help="Only this model.")
    log.set_defaults(func=_log)


def _serve(args: argparse.Namespace) -> int:
    from retirement.gateway.server import check_port_free, serve

    settings = RetireSettings()
    host = args.host or settings.gateway_host
    port = settings.gateway_port if args.port is None else args.port
    check_port_free(host, port)
    print(f"gateway on http://{host}:{port} for {settings.local_dir} (Ctrl-C to stop)", flush=True)
    serve(settings, host, port)
    return 0


def _print_stats(stats: dict[str, dict[str, int]], elapsed: float) -> None:
    parts = [f"v{v}: {c['sent']} sent, {c['ok']} ok, {c['errors']} errors" for v, c in stats.items()]
    print(f"[{elapsed:5.1f}s] " + ("; ".join(parts) or "no request yet"), flush=True)


def _traffic(args: argparse.Namespace) -> int:
    from retirement.gateway.loadgen import TrafficGenerator

    if not 0 < args.duration <= 7 * 24 * 3600:
        raise InputError("--duration", f"{args.duration} is out of range", "seconds, more than 0, at most a week")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request would drown the summary
    url = args.url or RetireSettings().gateway_url
    generator = TrafficGenerator(url, args.target, args.rate).start()
    started = time.monotonic()
    print(f"sending {args.rate:g} req/s to {url}/v1/models/{args.target}/predict for {args.duration:g}s", flush=True)
    try:
        while (elapsed := time.monotonic() - started) < args.duration:
            time.sleep(min(5.0, args.duration - elapsed))
            _print_stats(generator.stats(), time.monotonic() - started)
    finally:
        stats = generator.stop()
    print("by version (v? = the gateway named no version, e.g. unknown alias or gateway down):")
    _print_stats(stats, time.monotonic() - started)
    return 0


def _log(args: argparse.Namespace) -> int:
    log = RequestLog(RetireSettings().local_dir)
    if not log.path.exists():
        print(f"no request log at {log.path} yet: start the gateway with `retire gateway serve`")
        return 0
    records = log.recent(args.limit, args.model)
    for r in records:
        print(
            f"{r.at.strftime('%Y-%m-%d %H:%M:%S.%f')[:-3]}  {r.model}@{r.requested:<12} -> "
            f"v{r.version or '?':<4} {r.status}  {r.latency_ms:7.2f} ms"
        )
    beat = log.last_heartbeat()
    print(f"{len(records)} request(s); last gateway heartbeat: {beat.isoformat() if beat else 'never'}")
    return 0
