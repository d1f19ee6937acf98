"""A steady stream of predict requests to the gateway, to watch a cutover move traffic between versions."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import defaultdict

import httpx

from retirement.errors import InputError
from retirement.platforms.local import GOLDEN_INPUTS

logger = logging.getLogger(__name__)

UNRESOLVED = "?"


class TrafficGenerator:
    """Sends ``rate_per_second`` predict requests to ``<base_url>/v1/models/<target>/predict`` from a thread.

    Args:
        base_url: the gateway, e.g. ``http://127.0.0.1:8765``.
        target: ``name@alias_or_version``, e.g. ``churn-model@production``.
        rate_per_second: requests per second (0 < rate <= 1000).
        client: HTTP client to use (one is made, and closed on stop, when None).
    """

    def __init__(
        self, base_url: str, target: str, rate_per_second: float = 5.0, *, client: httpx.Client | None = None
    ) -> None:
        name, sep, alias = target.partition("@")
        if not sep or not name or not alias or "/" in target:
            raise InputError("target", f"{target!r} is not of the form name@alias_or_version", "churn-model@production")
        if isinstance(rate_per_second, bool) or not isinstance(rate_per_second, int | float):
            raise InputError("rate_per_second", f"{rate_per_second!r} is not a number", "a number from 0.01 to 1000")
        if not 0.01 <= rate_per_second <= 1000:
            raise InputError("rate_per_second", f"{rate_per_second} is out of range", "a number from 0.01 to 1000")
        self.url = f"{base_url.rstrip('/')}/v1/models/{target}/predict"
        self.target = target
        self.rate = float(rate_per_second)
        self._client = client
        self._own_client = client is None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stats: dict[str, dict[str, int]] = defaultdict(lambda: {"sent": 0, "ok": 0, "errors": 0})

    def start(self) -> TrafficGenerator:
        """Start sending in a background thread."""
        if self._thread is not None:
            return self
        if self._client is None:
            self._client = httpx.Client(timeout=10.0)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="traffic-generator", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> dict[str, dict[str, int]]:
        """Stop sending; return the final ``stats()``."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        if self._own_client and self._client is not None:
            self._client.close()
            self._client = None
        return self.stats()

    def stats(self) -> dict[str, dict[str, int]]:
        """Per resolved version (``"?"`` when the gateway named none): requests sent, ok (2xx) and errors."""
        with self._lock:
            return {version: dict(counts) for version, counts in sorted(self._stats.items())}

    def _run(self) -> None:
        interval = 1.0 / self.rate
        next_at = time.monotonic()
        for i in itertools.count():
            if self._stop.is_set():
                return
            self._send(i)
            next_at += interval
            delay = next_at - time.monotonic()
            if delay < -1.0:
                next_at = time.monotonic()  # fell behind by more than a second: do not burst to catch up
            if delay > 0 and self._stop.wait(delay):
                return

    def _send(self, i: int) -> None:
        assert self._client is not None
        version = UNRESOLVED
        ok = False
        try:
            response = self._client.post(self.url, json={"inputs": GOLDEN_INPUTS[i % len(GOLDEN_INPUTS)]})
            ok = response.is_success
            try:
                body = response.json()
                found = body.get("version") if ok else (body.get("error") or {}).get("version")
                version = str(found) if found else UNRESOLVED
            except ValueError:
                pass
        except httpx.HTTPError as exc:
            logger.debug("traffic to %s: %s", self.url, type(exc).__name__)
        with self._lock:
            counts = self._stats[version]
            counts["sent"] += 1
            counts["ok" if ok else "errors"] += 1


__all__ = ["UNRESOLVED", "TrafficGenerator"]
