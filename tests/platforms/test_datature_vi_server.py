"""The Datature Vi adapter end to end against the stateful fake Vi server over real HTTP."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from retirement.errors import DeletionBlockedError, NotFoundError
from retirement.models import ModelRef, TrafficVerdict
from retirement.platforms import datature_vi, get_platform
from retirement.platforms.datature_vi import DatatureViRegistry, DatatureViServing, DatatureViTraffic
from retirement.settings import RetireSettings
from tests.fakes.datature_vi import KEY, ORG, FakeVi, fake_vi

__all__ = ["fake_vi"]

WEIGHTS = {"c1": bytes(range(256)) * 300, "c2": b"second checkpoint" * 5000, "c3": b"third"}


def _ref(run: str, ckpt: str | None = None) -> ModelRef:
    return ModelRef(platform="datature-vi", name=run, version=ckpt)


def test_retirement_of_a_run_over_http(fake_vi: FakeVi, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_vi.add_run("run-old", WEIGHTS)
    fake_vi.add_run("run-new", {"n1": b"new weights"})
    fake_vi.add_deployment("prod", "run-old", "c2")
    monkeypatch.setenv("DATATURE_VI_SECRET_KEY", KEY)
    monkeypatch.setenv("DATATURE_VI_ORGANIZATION_ID", ORG)
    monkeypatch.setenv("RETIRE_DATATURE_VI_BASE_URL", fake_vi.base_url)
    monkeypatch.setenv("RETIRE_DATATURE_VI_PRODUCTION_DEPLOYMENT", "prod")
    monkeypatch.setattr(datature_vi, "PAGE_SIZE", 2)  # three checkpoints: the outputs come in two pages
    platform = get_platform("datature-vi", RetireSettings())
    registry, serving, traffic = platform.registry, platform.serving, platform.traffic
    assert isinstance(registry, DatatureViRegistry)
    assert isinstance(serving, DatatureViServing)
    assert isinstance(traffic, DatatureViTraffic)
    old = _ref("run-old", "c1")
    try:
        # The dossier names every checkpoint the delete takes, and the confirmation is the run id.
        dossier = registry.describe(old)
        assert [v.version for v in dossier.versions] == ["c1", "c2", "c3"]
        assert "c1, c2, c3" in dossier.known_issues[0]
        assert registry.confirmation_reference(old) == "run-old"
        assert "downloadUrl" not in json.dumps(dossier.metadata)

        # The production deployment serves ANOTHER checkpoint of the same run: still blocked.
        blockers = registry.deletion_blockers(old)
        assert [(b.code, b.cleared_by_protocol) for b in blockers] == [("deployment", True)]
        with pytest.raises(DeletionBlockedError, match="run-old@c2"):
            registry.delete(old)
        assert not [r for r in fake_vi.requests if r[0] == "DELETE"]

        # Live statistics cannot vouch for the past: a window with no snapshots is NODATA.
        now = datetime.now(UTC)
        past = traffic.sample(old, now - timedelta(days=2), now - timedelta(days=1))
        assert past.verdict is TrafficVerdict.NODATA

        # Cutover moves the deployment and reports what it served.
        assert serving.switch(_ref("run-new", "n1")) == _ref("run-old", "c2")
        assert fake_vi.deployments["prod"]["spec"] == {"runId": "run-new", "ckpt": "n1"}
        assert serving.production(_ref("run-old")) == _ref("run-new", "n1")
        assert registry.deletion_blockers(old) == []

        # The backup streams every checkpoint's exact bytes, and no signed URL lands in metadata.
        items = {item.path: item for item in registry.export(old)}
        assert sorted(items) == [
            "checkpoints/c1/c1.zip",
            "checkpoints/c2/c2.zip",
            "checkpoints/c3/c3.zip",
            "metadata/outputs.json",
            "metadata/run.json",
        ]
        for ckpt, data in WEIGHTS.items():
            item = items[f"checkpoints/{ckpt}/{ckpt}.zip"]
            digest = hashlib.sha256()
            for chunk in item.open():
                digest.update(chunk)
            assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
            assert item.size == len(data)
        metadata = b"".join(b"".join(items[p].open()) for p in ("metadata/outputs.json", "metadata/run.json"))
        assert b"X-Signature" not in metadata

        receipt = registry.delete(old)
        assert receipt.verified_gone
        assert receipt.removed == [
            "training run run-old",
            "checkpoint run-old@c1",
            "checkpoint run-old@c2",
            "checkpoint run-old@c3",
        ]
        with httpx.Client(
            base_url=fake_vi.base_url, headers={"Authorization": f"Bearer {KEY}", "Organization-Id": ORG}
        ) as http:
            assert http.get(f"/workspaces/{ORG}/runs/run-old").status_code == 404
        assert not registry.exists(_ref("run-old", "c2"))
        with pytest.raises(NotFoundError, match="Run run-old not found"):
            registry.delete(old)
        assert registry.exists(_ref("run-new", "n1"))
    finally:
        platform.close()
