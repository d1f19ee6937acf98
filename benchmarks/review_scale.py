"""Scale of the quarterly review: 1k/10k/50k versions on the local platform and on a paged HTTP catalogue.

Measures, at each size, the time and peak Python memory (tracemalloc, separate run) of one
``run_review`` and compares it with the naive design, a Prefect flow calling one trivial task per
version (under a temporary Prefect server), at 1k and 10k versions.

    .venv/bin/python benchmarks/review_scale.py [--sizes 1000 10000 50000] [--baseline 1000 10000]

(a) local: the LocalRegistry's SQLite catalogue is filled in bulk, straight into its tables in
    one transaction (the registry has no bulk API; its add_version writes files per version).
(b) http: a ThreadingHTTPServer on 127.0.0.1 serves numbered pages of versions; the catalogue
    reads page 1, learns the page count, then fetches the other pages with a thread pool.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
from pydantic import TypeAdapter

from retirement.models import CatalogEntry, ModelRef
from retirement.platforms.base import Catalog
from retirement.platforms.local import LocalRegistry
from retirement.policy import Policy
from retirement.review import review_entries, run_review

# The baseline's 10k task-run log lines would be measured as well otherwise.
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_LOGGING_LOG_PRINTS", "false")

NOW = datetime(2026, 11, 15, tzinfo=UTC)
VERSIONS_PER_MODEL = 20
PAGE_SIZE = 500
_ENTRIES = TypeAdapter(list[CatalogEntry])


def synthetic(n: int, seed: int = 7) -> Iterator[dict[str, Any]]:
    """``n`` versions, 20 per model: a production lineage, staging, failed experiments, tags, consumers."""
    rng = random.Random(seed)
    for i in range(n):
        model, v = divmod(i, VERSIONS_PER_MODEL)
        age = (VERSIONS_PER_MODEL - v) * 20 + rng.random()
        kind = v % 5
        row: dict[str, Any] = {
            "name": f"model-{model:05d}",
            "version": v + 1,
            "created": NOW - timedelta(days=age + 5),
            "stage": ["archived", "staging", "failed", "experiment", "archived"][kind],
            "status": ["superseded", "rejected", "failed", None, "superseded"][kind],
            "status_at": NOW - timedelta(days=age),
            "aliases": ["production"] if v == VERSIONS_PER_MODEL - 1 else [],
            "tags": {"keep": "true"} if rng.random() < 0.03 else {},
            "consumer": "batch-scoring" if rng.random() < 0.05 else None,
            "size": rng.randrange(1_000_000, 2_000_000_000),
        }
        if v == VERSIONS_PER_MODEL - 1:
            row["stage"], row["status"] = "production", "promoted"
        yield row


def seed_local(root: Path, n: int) -> LocalRegistry:
    """A LocalRegistry with ``n`` versions inserted straight into its catalogue, in one transaction."""
    registry = LocalRegistry(root)
    registry.init()
    conn = sqlite3.connect(registry.db_path)
    with conn:
        models, versions, files, aliases, events, consumers = [], [], [], [], [], []
        for r in synthetic(n):
            name, v, created = r["name"], r["version"], r["created"].timestamp()
            if v == 1:
                models.append((name, created, VERSIONS_PER_MODEL + 1))
            versions.append((name, v, created, r["stage"], json.dumps(r["tags"])))
            files.append((name, v, "weights.bin", r["size"], "0" * 64))
            aliases += [(name, a, v, created) for a in r["aliases"]]
            if r["status"]:  # superseded, promoted, rejected, failed: what the local platform records
                events.append((name, v, r["status"], r["status_at"].timestamp()))
            if r["consumer"]:
                consumers.append((name, v, r["consumer"], created))
        conn.executemany("INSERT INTO models (name, created_at, next_version) VALUES (?, ?, ?)", models)
        conn.executemany(
            "INSERT INTO versions (name, version, created_at, stage, tags) VALUES (?, ?, ?, ?, ?)", versions
        )
        conn.executemany("INSERT INTO files (name, version, path, size, sha256) VALUES (?, ?, ?, ?, ?)", files)
        conn.executemany("INSERT INTO aliases (name, alias, version, updated_at) VALUES (?, ?, ?, ?)", aliases)
        conn.executemany("INSERT INTO events (name, version, event, at) VALUES (?, ?, ?, ?)", events)
        conn.executemany("INSERT INTO consumers (name, version, consumer, added_at) VALUES (?, ?, ?, ?)", consumers)
    conn.close()
    return registry


def page_bodies(n: int) -> list[bytes]:
    """The HTTP fake's pages, serialized once up front (the server's cost is not the review's)."""
    entries = [
        CatalogEntry(
            reference=ModelRef(platform="http", name=r["name"], version=str(r["version"])),
            created_at=r["created"],
            stage=r["stage"],
            status=r["status"],
            status_changed_at=r["status_at"],
            aliases=r["aliases"],
            tags=r["tags"],
            dependents=[{"kind": "consumer", "name": r["consumer"]}] if r["consumer"] else [],
            size_bytes=r["size"],
        ).model_dump(mode="json")
        for r in synthetic(n)
    ]
    pages = [entries[i : i + PAGE_SIZE] for i in range(0, len(entries), PAGE_SIZE)] or [[]]
    return [json.dumps({"page": k + 1, "pages": len(pages), "items": p}).encode() for k, p in enumerate(pages)]


class PagedServer:
    """GET /versions?page=K on 127.0.0.1 (free port); stopped by ``stop``."""

    def __init__(self, pages: list[bytes]) -> None:
        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests += 1
                page = int(parse_qs(urlparse(self.path).query).get("page", ["1"])[0])
                body = pages[page - 1]
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


class PagedHttpCatalog:
    """A Catalog over numbered pages: page 1 says how many there are, the rest are fetched concurrently."""

    def __init__(self, client: httpx.Client, workers: int = 8) -> None:
        self.client = client
        self.workers = workers

    def _page(self, k: int) -> dict[str, Any]:
        response = self.client.get("/versions", params={"page": k})
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    def list_versions(self) -> Iterator[CatalogEntry]:
        first = self._page(1)
        yield from _ENTRIES.validate_python(first["items"])
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            for page in pool.map(self._page, range(2, first["pages"] + 1)):
                yield from _ENTRIES.validate_python(page["items"])


def measure(fn: Callable[[], Any]) -> tuple[float, float]:
    """Seconds of one call, then peak MiB of a second call under tracemalloc."""
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return seconds, peak


def task_per_version(sizes: list[int]) -> dict[int, float]:
    """The naive design: one Prefect task per version (the task does nothing), under a temporary server."""
    from prefect import flow, task
    from prefect.testing.utilities import prefect_test_harness

    @task
    def look_at(entry: dict[str, Any]) -> str:
        return str(entry["name"])

    @flow
    def per_version(entries: list[dict[str, Any]]) -> int:
        return len([look_at(e) for e in entries])

    results = {}
    with prefect_test_harness():
        per_version([])  # warm-up
        for n in sizes:
            rows = [{"name": r["name"], "version": r["version"]} for r in synthetic(n)]
            start = time.perf_counter()
            per_version(rows)
            results[n] = time.perf_counter() - start
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 50_000])
    parser.add_argument("--baseline", type=int, nargs="*", default=[1_000, 10_000])
    args = parser.parse_args()
    policy = Policy.default()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            local = seed_local(Path(tmp) / f"local-{n}", n)
            pages = page_bodies(n)
            server = PagedServer(pages)
            try:
                with httpx.Client(base_url=server.url, timeout=30) as client:
                    catalogs: dict[str, Catalog] = {"local": local, "http": PagedHttpCatalog(client)}
                    for label, catalog in catalogs.items():
                        report = run_review({label: catalog}, policy, now=NOW)
                        assert report.totals.versions == n, (label, report.totals.versions)
                        seconds, peak = measure(lambda c=catalog, lb=label: run_review({lb: c}, policy, now=NOW))
                        start = time.perf_counter()
                        entries = list(catalog.list_versions())
                        listed = time.perf_counter() - start
                        start = time.perf_counter()
                        review_entries(entries, policy, now=NOW, platforms=[label])
                        evaluated = time.perf_counter() - start
                        rows.append((label, n, seconds, listed, evaluated, peak, report.totals.candidates))
            finally:
                server.stop()
    baseline = task_per_version(args.baseline) if args.baseline else {}
    header = [("catalogue", 10, "<"), ("versions", 9, ">"), ("review s", 10, ">"), ("us/version", 12, ">")]
    header += [("list s", 9, ">"), ("policy s", 9, ">"), ("peak MiB", 10, ">"), ("candidates", 11, ">")]
    print("".join(f"{h:{a}{w}}" for h, w, a in header) + "  vs task/version")
    for label, n, seconds, listed, evaluated, peak, candidates in rows:
        ratio = f"{baseline[n] / seconds:.0f}x faster" if n in baseline else ""
        print(
            f"{label:<10}{n:>9}{seconds:>10.3f}{seconds / n * 1e6:>12.1f}{listed:>9.3f}{evaluated:>9.3f}"
            f"{peak:>10.1f}{candidates:>11}  {ratio}"
        )
    for n, seconds in sorted(baseline.items()):
        per = seconds / n * 1e6
        print(f"{'task/ver':<10}{n:>9}{seconds:>10.3f}{per:>12.1f}{'':>39}  (one Prefect task per version)")


if __name__ == "__main__":
    main()
