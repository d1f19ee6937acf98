"""Approval gates: a RunInput form per gate, answered in the Prefect UI or with `retire approve`.

Deployed runs suspend at a gate (no process is held; the run replays from the top on resume and
every step before the gate finds its work already recorded); other runs pause. The form's schema
lists the allowed approvers and, at the deletion gate, the exact reference to type, so the server
refuses a wrong answer before the run resumes.
"""

from __future__ import annotations

from typing import Any, Literal
from uuid import UUID

from prefect.context import FlowRunContext
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run, suspend_flow_run
from prefect.input import RunInput
from prefect.input.actions import read_flow_run_input
from pydantic import Field, create_model

from retirement.errors import ApprovalError
from retirement.gates import GatePrep
from retirement.models import Approval, RetirementRequest, utcnow
from retirement.settings import RetireSettings
from tasks.gates import prepare_gate, record_decision
from tasks.lifecycle import schedule_gate_expiry

_REGEX_SPECIAL = set(".^$*+?()[]{}|\\/")


def exact_pattern(text: str) -> str:
    """A JSON-schema pattern accepting exactly ``text`` (or nothing, for a rejection)."""
    return "^(" + "".join("\\" + c if c in _REGEX_SPECIAL else c for c in text) + ")?$"


def gate_form(gate: str, approvers: list[str], confirm: str | None) -> type[RunInput]:
    """The form of one gate; its JSON schema is what the Prefect UI shows and the server enforces."""
    fields: dict[str, Any] = {
        "decision": (
            Literal["approve", "reject"],
            Field(
                description="**approve** lets the retirement go on; **reject** stops it here and nothing "
                "destructive happens after it."
            ),
        ),
        "approver": (
            str,
            Field(
                json_schema_extra={"enum": list(approvers)},  # a choice in the UI, enforced by the server
                description="Who answers: one of the approvers named in the request"
                + (" (not the requester)." if confirm else "."),
            ),
        ),
        "comment": (str, Field(default="", description="Why; goes into the ledger and the final report.")),
    }
    if confirm is not None:
        fields["typed_reference"] = (
            str,
            Field(
                default="",
                pattern=exact_pattern(confirm),
                description=f"To approve the deletion, type exactly `{confirm}`. Leave empty to reject.",
            ),
        )
    name = "".join(part.capitalize() for part in gate.split("-")) + "Form"
    return create_model(name, __base__=RunInput, **fields)


def _answer_left(prep: GatePrep, context: FlowRunContext | None) -> dict[str, Any] | None:
    """The answer a person gave at this very gate to an earlier run that died before recording it.

    A run killed between the answer (which resumes it) and the record leaves the answer on that run only;
    the run that carries the retirement on must not ask the same question again. Whatever it says is
    checked again by ``record_decision`` like any answer.
    """
    current = str(context.flow_run.id) if context is not None and context.flow_run is not None else None
    if not prep.asked_on or prep.asked_on == current:
        return None
    for kind in ("suspended", "paused"):  # Prefect keys the answer by the state the run waited in
        found = read_flow_run_input(f"{kind}-{prep.key}-response", flow_run_id=UUID(prep.asked_on))
        if isinstance(found, dict):
            return {k: v for k, v in found.items() if k != "metadata"}
    return None


def ask(
    request: RetirementRequest, retirement_id: str, gate: str, title: str, what: str, checklist: list[str] | None = None
) -> Approval:
    """Ask a gate and return the approval.

    Raises:
        ApprovalError: the gate was rejected or timed out (the retirement must halt).
    """
    for _ in range(3):
        prep = prepare_gate(request, retirement_id, gate, title, what, checklist or [])
        if prep.answered is not None:
            approval = prep.answered
        else:
            context = FlowRunContext.get()
            answer = _answer_left(prep, context)
            if answer is None:
                form = gate_form(gate, prep.approvers, prep.confirm).with_initial_data(description=prep.description)
                timeout = max(1, int((prep.deadline - utcnow()).total_seconds()))
                deployed = context is not None and context.flow_run is not None and context.flow_run.deployment_id
                if deployed:
                    schedule_gate_expiry(request, retirement_id, prep.key, prep.deadline)
                    answer = suspend_flow_run(wait_for_input=form, timeout=timeout, key=prep.key).model_dump()
                else:
                    try:
                        answer = pause_flow_run(
                            wait_for_input=form,
                            timeout=timeout,
                            poll_interval=RetireSettings().gate_poll_seconds,
                            key=prep.key,
                        ).model_dump()
                    except FlowPauseTimeout:
                        raise ApprovalError(
                            f"approval gate {gate} timed out after {request.gate_timeout_hours:g} h"
                        ) from None
            try:
                approval = record_decision(request, retirement_id, gate, answer, prep.confirm)
            except ApprovalError:
                continue
        if approval.decision != "approve":
            raise ApprovalError(
                f"{gate} rejected by {approval.approver}" + (f": {approval.comment}" if approval.comment else "")
            )
        return approval
    raise ApprovalError(f"{gate}: three refused answers")
