"""Markdown for people: the dossier, and what each approval gate is about to let happen."""

from __future__ import annotations

from retirement.models import Dossier, RetirementRequest


def dossier_markdown(dossier: Dossier, request: RetirementRequest) -> str:
    """The dossier as a Prefect UI artifact."""
    caps = dossier.capabilities
    lines = [
        f"# Dossier: {dossier.reference} on {dossier.reference.platform}",
        "",
        f"**Reason:** {request.reason}  ",
        f"**Requested by:** {request.requester}; **approvers:** {', '.join(request.approvers)}  ",
        f"**Replacement:** {request.replacement or 'none'}",
        "",
    ]
    if dossier.refusals:
        lines += [
            "## Refused: this retirement could never finish as asked",
            "",
            "Nothing was done. Each reason says its remedy; plan again once they are resolved.",
            "",
        ]
        lines += [f"{n}. {reason}" for n, reason in enumerate(dossier.refusals, 1)]
        lines.append("")
    if dossier.description:
        lines += [dossier.description, ""]
    lines += ["## Versions", "", "| version | stage | aliases | created | active |", "|---|---|---|---|---|"]
    for v in dossier.versions:
        created = v.created_at.date().isoformat() if v.created_at else ""
        lines.append(f"| {v.version} | {v.stage or ''} | {', '.join(v.aliases)} | {created} | {v.active} |")
    if dossier.metrics:
        lines += ["", "## Metrics", ""] + [f"- {k}: {v}" for k, v in dossier.metrics.items()]
    lines += ["", "## Where it serves", ""] + ([f"- {d}" for d in dossier.deployed_at] or ["- nowhere found"])
    lines += ["", "## Dependents", ""]
    lines += [
        f"- {d.kind} **{d.name}** {d.detail}".rstrip()
        + (" (moved by the staging or cutover step)" if d.movable and request.replacement else "")
        for d in dossier.dependents
    ] or ["- none found"]
    lines += ["", "## Deletion blockers", ""]
    lines += [
        f"- `{b.code}`: {b.message}"
        + (f" - {b.remedy}" if b.remedy else "")
        + (
            (" (lifted by this protocol)" if request.replacement else " (only a cutover lifts it, and none is planned)")
            if b.cleared_by_protocol
            else ""
        )
        for b in dossier.blockers
    ] or (
        ["- none of the platform's own rules; every dependent above blocks the delete until it is gone"]
        if dossier.dependents
        else ["- none"]
    )
    if caps is not None:
        lines += ["", "## What the backup can and cannot capture", ""]
        lines += [f"- captures: {', '.join(caps.exports) or 'metadata only'}"]
        lines += [f"- **cannot capture: {', '.join(caps.not_exportable)}**"] if caps.not_exportable else []
        lines += [f"- a delete also removes: {', '.join(caps.cascade)}"] if caps.cascade else []
        lines += [f"- restore onto the platform: {'possible' if caps.restore else 'not possible'}"]
    if dossier.known_issues:
        lines += ["", "## Known issues", ""] + [f"- {i}" for i in dossier.known_issues]
    lines += ["", "## Plan", "", "| phase | action | gate | when | destructive |", "|---|---|---|---|---|"]
    for step in dossier.plan:
        destructive = "yes" if step.destructive else ""
        lines.append(f"| {step.phase.value} | {step.action} | {step.gate or ''} | {step.when} | {destructive} |")
    return "\n".join(lines)


def gate_markdown(title: str, what: str, dossier: Dossier | None, extra: list[str] | None = None) -> str:
    """The description shown above an approval form."""
    lines = [f"## {title}", "", what, ""]
    if dossier is not None:
        lines += ["### Summary", "", dossier.summary(), ""]
        destructive = [s for s in dossier.plan if s.destructive]
        if destructive:
            lines += ["### Destructive steps in the plan", ""]
            lines += [f"- {s.phase.value}: {s.action}" for s in destructive]
            lines.append("")
    lines += extra or []
    lines += [
        "",
        "Choose **approve** to go on or **reject** to stop the retirement here: after a rejection nothing "
        "destructive happens.",
    ]
    return "\n".join(lines)
