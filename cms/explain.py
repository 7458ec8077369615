"""`explain`: a pasted Event Viewer entry -> what it means, how to check, how to fix.

Pure: parses the text, classifies it against the known CMS replication
signatures, and never names a scenario the text does not match.
"""

from __future__ import annotations

from datetime import datetime

from cms.eventlog import CertificateFacts, classify, parse_pasted
from cms.knowledge import KNOWLEDGE, FindingCode
from cms.models import Model

UNKNOWN = "not a known CMS replication signature"


class Explanation(Model):
    source: str | None
    event_id: int | None
    level: str | None
    computer: str | None
    time: datetime | None
    date_text: str | None
    date_ambiguous: bool
    replicas: list[str]
    paths: list[str]
    code: FindingCode | None
    summary: str
    meaning: str | None = None
    checks: list[str] = []
    fix: list[str] = []


def _names_another_host(facts: CertificateFacts) -> bool:
    names = {n.lower() for n in (facts.host, facts.cluster) if n}
    return bool(facts.subject_cn and names and facts.subject_cn.lower() not in names)


def certificate_code(facts: CertificateFacts | list[CertificateFacts] | None) -> FindingCode:
    """1015 alone: a name mismatch when every presented CN is neither its host nor its cluster."""
    every = facts if isinstance(facts, list) else [facts] if facts else []
    if every and all(_names_another_host(f) for f in every):
        return FindingCode.replica_edge_cert_name_mismatch
    return FindingCode.replica_edge_cert_invalid


def explain(text: str) -> Explanation:
    pasted = parse_pasted(text)
    c = classify(pasted.event_id, pasted.source, pasted.description)
    code = (certificate_code(c.certificates or c.certificate) if c.code is FindingCode.replica_edge_cert_invalid
            else c.code)
    fields = dict(source=pasted.source, event_id=pasted.event_id, level=pasted.level, computer=pasted.computer,
                  time=pasted.time, date_text=pasted.date_text, date_ambiguous=pasted.date_ambiguous,
                  replicas=c.replicas, paths=c.paths, code=code)
    if code is None:
        return Explanation(**fields, summary=UNKNOWN)
    k = KNOWLEDGE[code]
    who = ", ".join(c.replicas) or "the replica"
    summary = f"{k.title}: {who}"
    subjects = [f.subject for f in (c.certificates or ([c.certificate] if c.certificate else [])) if f.subject]
    if subjects:
        summary += f" (presented {'; '.join(dict.fromkeys(subjects))})"
    fix = [step.replace("<replica>", c.replicas[0]) if c.replicas else step for step in k.fix]
    return Explanation(**fields, summary=summary, meaning=k.meaning, checks=list(k.checks), fix=fix)
