"""Benchmark: our one-pass backup through the local gateway against `curl -o` + `sha256sum`.

Run on demand (not a test)::

    .venv/bin/python benchmarks/backup_throughput.py --size 1GiB --reps 3

In a temporary RETIRE_HOME it seeds a demo model (version 1 of about ``--size`` bytes), starts the
gateway, and per repetition times, in the same run:

* ours: a child process that backs the version up through the gateway with FilesystemBackupStore
  (download, hash and write in one pass; fsync; manifest) and then verifies it by re-reading;
  the child reports its own peak RSS;
* shell: ``curl -s -o FILE URL`` for each file, one after the other, then ``sha256sum`` of the files.

It prints a table per repetition and the medians; the ratio is ours/shell (lower is better;
the target is <= 1.0). Everything it wrote is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

_UNITS = {"": 1, "B": 1, "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "KB": 10**3, "MB": 10**6, "GB": 10**9}


def parse_size(text: str) -> int:
    """'1GiB', '512MiB', '2000000' -> bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    if match is None or match.group(2).upper() not in _UNITS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 1GiB or 512MiB")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def child(args: argparse.Namespace) -> None:
    """Back up churn-model@1 through the gateway, verify it, and print timings and peak RSS as JSON."""
    from datetime import timedelta

    from retirement.backup.filesystem import FilesystemBackupStore
    from retirement.models import ModelRef, utcnow
    from retirement.platforms import get_platform
    from retirement.settings import RetireSettings

    settings = RetireSettings()
    ref = ModelRef.parse(args.ref)
    store = FilesystemBackupStore(settings.backup_dir, workers=args.workers, fsync=not args.no_fsync)
    platform = get_platform("local", settings)
    try:
        started = time.perf_counter()
        items = platform.registry.export(ref)
        manifest = store.write(ref, items, retain_until=utcnow() + timedelta(days=30))
        written = time.perf_counter()
    finally:
        platform.close()
    report = store.verify(manifest.location)
    verified = time.perf_counter()
    result = {
        "location": manifest.location,
        "bytes": manifest.total_bytes,
        "files": {f.path: f.sha256 for f in manifest.files},
        "write_s": written - started,
        "verify_s": verified - written,
        "ok": report.ok,
        "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }
    sys.stdout.write(json.dumps(result) + "\n")


def run_ours(args: argparse.Namespace, env: dict[str, str]) -> dict[str, object]:
    command = [sys.executable, __file__, "--child", "--ref", args.ref, "--workers", str(args.workers)]
    if args.no_fsync:
        command.append("--no-fsync")
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"our backup failed:\n{done.stderr}")
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_s"] = elapsed
    return result


def run_shell(base_url: str, name: str, version: str, paths: list[str], folder: Path) -> dict[str, object]:
    folder.mkdir(parents=True)
    targets = []
    started = time.perf_counter()
    for index, path in enumerate(paths):
        target = folder / f"{index}.bin"
        url = f"{base_url}/v1/models/{quote(name)}/versions/{version}/files/{quote(path)}"
        subprocess.run(["curl", "-s", "-f", "-o", str(target), url], check=True)
        targets.append(target)
    downloaded = time.perf_counter()
    out = subprocess.run(["sha256sum", *map(str, targets)], check=True, capture_output=True, text=True).stdout
    hashed = time.perf_counter()
    sums = {paths[i]: line.split()[0] for i, line in enumerate(out.splitlines())}
    return {"curl_s": downloaded - started, "sha_s": hashed - downloaded, "files": sums}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=parse_size, default=parse_size("1GiB"), help="Demo version size (1GiB).")
    parser.add_argument("--reps", type=int, default=3, help="Repetitions (3).")
    parser.add_argument("--workers", type=int, default=2, help="Files written at the same time (2).")
    parser.add_argument("--no-fsync", action="store_true", help="Do not fsync the backup (as curl does not).")
    parser.add_argument("--tmp", type=Path, default=None, help="Where to put the temporary RETIRE_HOME.")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ref", default="churn-model@1", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    from retirement.gateway.server import GatewayProcess
    from retirement.platforms.local import LocalRegistry
    from retirement.settings import RetireSettings

    home = Path(tempfile.mkdtemp(prefix="retire-bench-", dir=args.tmp))
    env = dict(os.environ)
    for key in list(env):
        if key.startswith("RETIRE_"):
            del env[key]
    env["RETIRE_HOME"] = str(home)
    os.environ.update(env)
    settings = RetireSettings(home=home)
    gateway = GatewayProcess(settings)
    rows = []
    try:
        seed_started = time.perf_counter()
        registry = LocalRegistry(settings.local_dir)
        old, _ = registry.seed_demo(total_bytes=args.size, name="churn-model")
        paths = [path for path, _ in registry.files(old)]
        registry.close()
        print(f"seeded {old} ({args.size / 2**20:,.0f} MiB x 2 versions) in {time.perf_counter() - seed_started:.1f}s")
        gateway.start()
        env["RETIRE_GATEWAY_PORT"] = str(gateway.port)
        print(f"gateway {gateway.url} pid {gateway.pid}; workers={args.workers} fsync={not args.no_fsync}")
        header = (
            f"{'rep':>3} {'ours write':>10} {'verify':>7} {'process':>8} {'curl':>7} {'sha256sum':>9} "
            f"{'shell':>7} {'ratio':>6} {'ratio+verify':>12} {'ours MiB/s':>10} {'peak RSS':>9}"
        )
        print(header)
        for rep in range(1, args.reps + 1):
            ours = run_ours(args, env)
            shutil.rmtree(settings.backup_dir, ignore_errors=True)
            shell_dir = home / f"shell-{rep}"
            shell = run_shell(gateway.url, old.name, old.version or "1", paths, shell_dir)
            shutil.rmtree(shell_dir, ignore_errors=True)
            if shell["files"] != ours["files"] or not ours["ok"]:
                raise SystemExit(f"hashes differ between ours and sha256sum: {ours['files']} vs {shell['files']}")
            write_s = float(ours["write_s"])  # type: ignore[arg-type]
            verify_s = float(ours["verify_s"])  # type: ignore[arg-type]
            shell_s = float(shell["curl_s"]) + float(shell["sha_s"])  # type: ignore[arg-type]
            row = {
                "write_s": write_s,
                "verify_s": verify_s,
                "process_s": float(ours["process_s"]),  # type: ignore[arg-type]
                "curl_s": float(shell["curl_s"]),  # type: ignore[arg-type]
                "sha_s": float(shell["sha_s"]),  # type: ignore[arg-type]
                "shell_s": shell_s,
                "ratio": write_s / shell_s,
                "ratio_verify": (write_s + verify_s) / shell_s,
                "mibs": int(ours["bytes"]) / 2**20 / write_s,  # type: ignore[call-overload]
                "rss_mib": int(ours["peak_rss_kib"]) / 1024,  # type: ignore[call-overload]
            }
            rows.append(row)
            print(
                f"{rep:>3} {row['write_s']:>9.2f}s {row['verify_s']:>6.2f}s {row['process_s']:>7.2f}s "
                f"{row['curl_s']:>6.2f}s {row['sha_s']:>8.2f}s {row['shell_s']:>6.2f}s {row['ratio']:>6.2f} "
                f"{row['ratio_verify']:>12.2f} {row['mibs']:>10.0f} {row['rss_mib']:>7.1f}MiB"
            )
        median = {key: statistics.median(r[key] for r in rows) for key in rows[0]}
        print(
            f"median: ours {median['write_s']:.2f}s (+ verify {median['verify_s']:.2f}s), "
            f"shell {median['shell_s']:.2f}s (curl {median['curl_s']:.2f}s + sha256sum {median['sha_s']:.2f}s); "
            f"ratio ours/shell {median['ratio']:.2f} (with verify {median['ratio_verify']:.2f}); "
            f"our peak RSS {max(r['rss_mib'] for r in rows):.1f} MiB"
        )
    finally:
        gateway.stop()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
