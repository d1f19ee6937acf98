"""A stateful fake of the OpenAI API over real HTTP on 127.0.0.1: models, fine-tuning jobs, files, usage.

It speaks the documented shapes (specs/openai-openapi.yaml): ``{object: "list", data, has_more}``
lists, ``DELETE /models/{id}`` answering ``{id, object, deleted}`` for fine-tuned models only, file
metadata and content, fine-tuning jobs whose base may itself be a fine-tune (its lineage), their
checkpoints (each a model id of its own), checkpoint permissions (admin key: the projects a fine-tune
or checkpoint is shared with, ``checkpoint.permission`` items paged by ``after``), and the
organisation usage API (admin key) with one bucket per ``bucket_width`` for the part of the window that
has already happened. Errors are ``{error: {message, type, param, code}}``.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

from tests.fakes.replicate_api import HttpFake, Reply

API_KEY = "sk-fake-project-key-0123456789"
ADMIN_KEY = "sk-admin-fake-0123456789"
ORG = "org-acme"
_WIDTHS = {"1m": 60, "1h": 3600, "1d": 86400}


def _error(status: int, message: str, kind: str, code: str | None, param: str | None = None) -> Reply:
    return status, {"error": {"message": message, "type": kind, "param": param, "code": code}}


class OpenAIApi(HttpFake):
    """One organisation's view of the OpenAI API under ``/v1``."""

    def __init__(self) -> None:
        super().__init__()
        self.models: dict[str, dict[str, Any]] = {}
        self.jobs: list[dict[str, Any]] = []
        self.files: dict[str, tuple[dict[str, Any], bytes]] = {}
        self.usage: list[tuple[str, int]] = []
        """(model, unix time) of every request the usage API reports."""
        self.permissions: dict[str, list[dict[str, Any]]] = {}
        """checkpoint or fine-tuned model id -> its checkpoint permissions (the projects it is shared with)."""

    # -- seeding ------------------------------------------------------------------------------

    def add_base_model(self, model_id: str) -> None:
        self.models[model_id] = {"id": model_id, "object": "model", "created": 1_700_000_000, "owned_by": "system"}

    def add_file(self, filename: str, content: bytes, purpose: str) -> str:
        fid = f"file-{secrets.token_hex(8)}"
        meta = {
            "id": fid,
            "object": "file",
            "bytes": len(content),
            "created_at": 1_720_000_000,
            "filename": filename,
            "purpose": purpose,
        }
        self.files[fid] = (meta, content)
        return fid

    def add_fine_tune(self, base: str, suffix: str, status: str = "succeeded") -> tuple[str, dict[str, Any]]:
        """A fine-tuning job on ``base`` and, once succeeded, the model it produced; returns (model id, job).

        ``base`` may be a fine-tuned model (or a checkpoint): the child's id names the original base model,
        as OpenAI names it, and the job's ``model`` names the parent.
        """
        training = self.add_file("train.jsonl", b'{"messages": []}\n' * 50, "fine-tune")
        result = self.add_file("step_metrics.csv", b"step,train_loss\n1,0.9\n2,0.4\n", "fine-tune-results")
        root = base.split(":")[1] if base.startswith("ft:") else base
        model_id = f"ft:{root}:{ORG.removeprefix('org-')}:{suffix}:{secrets.token_hex(4)}"
        job = {
            "id": f"ftjob-{secrets.token_hex(8)}",
            "object": "fine_tuning.job",
            "created_at": 1_720_000_000,
            "finished_at": 1_720_003_600 if status == "succeeded" else None,
            "model": base,
            "fine_tuned_model": model_id if status == "succeeded" else None,
            "organization_id": ORG,
            "status": status,
            "hyperparameters": {"n_epochs": 3},
            "training_file": training,
            "validation_file": None,
            "result_files": [result],
            "trained_tokens": 12_345,
            "error": None,
            "seed": 7,
        }
        self.jobs.append(job)
        if status == "succeeded":
            self.models[model_id] = {"id": model_id, "object": "model", "created": 1_720_003_600, "owned_by": ORG}
        return model_id, job

    def share(self, checkpoint: str, project_id: str) -> str:
        """Share a fine-tuned model or checkpoint with another project (a checkpoint permission); returns its id."""
        permission = {
            "object": "checkpoint.permission",
            "id": f"cp_{secrets.token_hex(12)}",
            "created_at": 1_721_764_867,
            "project_id": project_id,
        }
        self.permissions.setdefault(checkpoint, []).append(permission)
        return str(permission["id"])

    # -- answers ------------------------------------------------------------------------------

    def route(self, method: str, path: str, query: dict[str, list[str]], headers: dict[str, str], body: Any) -> Reply:
        parts = [p for p in path.split("/") if p]
        if parts[:1] != ["v1"]:
            return _error(404, f"Invalid URL ({method} {path})", "invalid_request_error", None)
        parts = parts[1:]
        auth = headers.get("authorization", "")
        if parts[:2] == ["organization", "usage"]:
            if auth != f"Bearer {ADMIN_KEY}":
                return _error(401, "The usage API needs an admin key", "invalid_request_error", "invalid_api_key")
            return self._usage(query)
        if parts[:2] == ["fine_tuning", "checkpoints"] and len(parts) == 4 and parts[3] == "permissions":
            if auth != f"Bearer {ADMIN_KEY}":
                return _error(401, "This endpoint requires an admin key", "invalid_request_error", "invalid_api_key")
            if method != "GET":
                return _error(405, f"{method} is not allowed", "invalid_request_error", None)
            return self._permissions(parts[2], query)
        if auth != f"Bearer {API_KEY}":
            return _error(401, "Incorrect API key provided", "invalid_request_error", "invalid_api_key")
        if parts == ["models"] and method == "GET":
            return 200, {"object": "list", "data": list(self.models.values())}
        if parts[:1] == ["models"] and len(parts) == 2:
            return self._model(method, parts[1])
        if parts == ["fine_tuning", "jobs"] and method == "GET":
            return 200, {"object": "list", "data": list(reversed(self.jobs)), "has_more": False}
        if parts[:2] == ["fine_tuning", "jobs"] and len(parts) == 4 and parts[3] == "checkpoints":
            job = next((j for j in self.jobs if j["id"] == parts[2]), None)
            if job is None:
                return _error(404, f"Fine-tuning job {parts[2]} not found", "invalid_request_error", None, "id")
            checkpoint = {
                "object": "fine_tuning.job.checkpoint",
                "id": f"ftckpt-{parts[2]}",
                "created_at": 1_720_003_000,
                "fine_tuned_model_checkpoint": checkpoint_of(str(job["fine_tuned_model"])),
                "step_number": 2,
                "metrics": {"step": 2, "train_loss": 0.4},
                "fine_tuning_job_id": parts[2],
            }
            return 200, {"object": "list", "data": [checkpoint], "has_more": False}
        if parts[:1] == ["files"] and len(parts) in (2, 3) and method == "GET":
            found = self.files.get(parts[1])
            if found is None:
                return _error(404, f"No such File object: {parts[1]}", "invalid_request_error", None, "id")
            return (200, found[1]) if len(parts) == 3 and parts[2] == "content" else (200, found[0])
        return _error(404, f"Invalid URL ({method} {path})", "invalid_request_error", None)

    def _model(self, method: str, model_id: str) -> Reply:
        model = self.models.get(model_id)
        if model is None:
            return _error(
                404, f"The model '{model_id}' does not exist", "invalid_request_error", "model_not_found", "model"
            )
        if method == "GET":
            return 200, model
        if method == "DELETE":
            if model["owned_by"] != ORG:
                return _error(403, "You are not allowed to delete this model", "invalid_request_error", None)
            del self.models[model_id]
            return 200, {"id": model_id, "object": "model", "deleted": True}
        return _error(405, f"{method} is not allowed", "invalid_request_error", None)

    def _permissions(self, checkpoint: str, query: dict[str, list[str]]) -> Reply:
        known = checkpoint in self.models or any(
            checkpoint_of(str(j["fine_tuned_model"])) == checkpoint for j in self.jobs
        )
        if not known:
            return _error(404, f"Checkpoint {checkpoint} not found", "invalid_request_error", None, "checkpoint")
        found = list(self.permissions.get(checkpoint, []))
        if "project_id" in query:
            found = [p for p in found if p["project_id"] == query["project_id"][0]]
        if "after" in query:
            ids = [p["id"] for p in found]
            found = found[ids.index(query["after"][0]) + 1 :] if query["after"][0] in ids else []
        limit = int(query.get("limit", ["10"])[0])
        page = found[:limit]
        return 200, {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(found) > limit,
        }

    def _usage(self, query: dict[str, list[str]]) -> Reply:
        try:
            start, end = int(query["start_time"][0]), int(query["end_time"][0])
            width = _WIDTHS[query.get("bucket_width", ["1d"])[0]]
        except (KeyError, ValueError):
            return _error(400, "start_time, end_time and bucket_width are required", "invalid_request_error", None)
        models = set(query.get("models[]", []) + query.get("models", []))
        now = datetime.now(UTC).timestamp()
        buckets = []
        for b_start in range(start, end, width):
            if b_start >= now:  # the usage API reports only what has happened
                break
            b_end = b_start + width
            counts: dict[str, int] = {}
            for model, at in self.usage:
                if b_start <= at < b_end and (not models or model in models):
                    counts[model] = counts.get(model, 0) + 1
            results = [
                {"object": "organization.usage.completions.result", "model": m, "num_model_requests": n}
                for m, n in counts.items()
            ]
            buckets.append({"object": "bucket", "start_time": b_start, "end_time": b_end, "results": results})
        return 200, {"object": "page", "data": buckets, "has_more": False, "next_page": None}


def checkpoint_of(model_id: str) -> str:
    """The model id of the one checkpoint the fake keeps of a fine-tune (step 2)."""
    return f"{model_id}:ckpt-step-2"


__all__ = ["ADMIN_KEY", "API_KEY", "ORG", "OpenAIApi", "checkpoint_of"]
