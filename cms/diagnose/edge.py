"""Edge servers: the File Transfer Agent reaches them over HTTPS 4443 and trusts their internal
certificate; they are often not reachable over WinRM, so the FTA's side tells most of it."""

from __future__ import annotations

from cms.diagnose.common import (
    Clues,
    event_evidence,
    finding,
    port_evidence,
    socket_error,
    start_button,
    unreachable_note,
    when,
)
from cms.eventlog import classify
from cms.knowledge import KNOWLEDGE, FindingCode
from cms.models import Evidence, Finding, ReplicationEvent, ServiceState, Severity, StatusReport


def front_end_root(report: StatusReport) -> str | None:
    """The root CA of the CMS pool Front Ends' certificates (what an Edge must share)."""
    for h in report.health:
        if report.roles.get(h.fqdn) == "frontend" and h.certificate and h.certificate.root:
            return h.certificate.root
    return None


def edge_findings(clues: Clues, report: StatusReport, fe_root: str | None) -> list[Finding]:
    found: list[Finding] = []
    subject = clues.status.fqdn
    https_event = clues.latest(FindingCode.replica_https_unreachable)
    cert_event = clues.latest(FindingCode.replica_edge_cert_invalid)
    port = clues.port
    replica_state = clues.health.services.get("REPLICA") if clues.health else None

    evidence: list[Evidence] = []
    if https_event:
        evidence.append(event_evidence(https_event, f"{subject}: Https destination unavailable"))
    if port is not None:
        evidence.append(port_evidence(port, report))
    if replica_state is not None:
        assert clues.health is not None  # replica_state was read from it
        evidence.append(Evidence(text=f"REPLICA is {replica_state.value}", source=f"Get-Service on {subject}",
                                 at=clues.health.collected_at))

    if replica_state is not None and replica_state is not ServiceState.running:
        found.append(finding(FindingCode.replica_replica_stopped, Severity.error, subject,
                             f"REPLICA (Replica Replicator Agent) is {replica_state.value} on the Edge {subject}",
                             evidence, actions=[start_button(subject)]))
    elif port is not None and not port.connected and port.error == "ConnectionRefused":
        found.append(finding(FindingCode.replica_replica_stopped, Severity.error, subject,
                             f"Nothing listens on TCP 4443 on the Edge {subject}: REPLICA is most likely stopped",
                             evidence,
                             unchecked=[unreachable_note(clues, "REPLICA state")] if replica_state is None else []))
    elif port is not None and not port.connected:
        found.append(finding(FindingCode.replica_https_unreachable, Severity.error, subject,
                             f"TCP 4443 from the FTA host to the Edge {subject} ({port.address}) fails: "
                             f"{socket_error(port.error)}", evidence,
                             unchecked=[unreachable_note(clues, "REPLICA state")] if replica_state is None else []))
    elif https_event:
        note = []
        if port is not None and port.connected:
            note = ["TCP 4443 connects now: the failure may be intermittent or already fixed"]
        found.append(finding(FindingCode.replica_https_unreachable, Severity.error, subject,
                             f"The File Transfer Agent cannot deliver to the Edge {subject} over HTTPS 4443",
                             evidence,
                             unchecked=note + ([] if port is not None else ["TCP 4443 test from the FTA host: not run"])
                             + ([unreachable_note(clues, "REPLICA state")] if replica_state is None else [])))

    found += certificate_findings(clues, cert_event, fe_root)
    return found


def certificate_findings(clues: Clues, cert_event: ReplicationEvent | None, fe_root: str | None) -> list[Finding]:
    subject = clues.status.fqdn
    cert = clues.health.certificate if clues.health else None
    evidence = []
    if cert_event:
        facts = classify(cert_event.id, cert_event.source, cert_event.message).certificate
        presented = f" (presented {facts.subject})" if facts and facts.subject else ""
        evidence.append(event_evidence(cert_event, f"unable to match host/cluster against certificate{presented}"))
    if cert is None:
        if not cert_event:
            return []
        unchecked = [unreachable_note(clues, "the internal certificate")]
        facts = classify(cert_event.id, cert_event.source, cert_event.message).certificate
        names = {n.lower() for n in (facts.host, facts.cluster) if n} if facts else set()
        if facts and facts.subject_cn and names and facts.subject_cn.lower() not in names:
            return [finding(FindingCode.replica_edge_cert_name_mismatch, Severity.error, subject,
                            f"The Edge {subject} presents a certificate for {facts.subject_cn}, not for "
                            f"{' or '.join(sorted(names))}", evidence, unchecked=unchecked)]
        return [finding(FindingCode.replica_edge_cert_invalid, Severity.error, subject,
                        f"The Edge {subject} presented a certificate the File Transfer Agent rejects", evidence,
                        unchecked=unchecked + ["whether the key, names, root or expiry is the cause: see the checks"],
                        fix=[*KNOWLEDGE[FindingCode.replica_edge_cert_invalid].checks,
                             *KNOWLEDGE[FindingCode.replica_edge_cert_invalid].fix])]
    facts_text = (f"internal certificate {cert.subject} (SAN {', '.join(cert.dns_names) or 'none'}), issued by "
                  f"{cert.issuer}, root {cert.root}, expires {when(cert.not_after)}, "
                  f"private key {'present' if cert.has_private_key else 'MISSING'}")
    evidence.append(Evidence(text=facts_text, source=f"Get-CsCertificate -Type {cert.use} on {subject}",
                             at=clues.health.collected_at if clues.health else None))
    out = []
    names = {n.lower() for n in cert.dns_names} | {(cert.subject or "").split(",")[0].removeprefix("CN=").lower()}
    if not cert.has_private_key:
        out.append(finding(FindingCode.replica_edge_cert_no_private_key, Severity.error, subject,
                           f"The Edge {subject}'s internal certificate has no private key", evidence))
    if subject.lower() not in names and (clues.pool or "").lower() not in names:
        out.append(finding(FindingCode.replica_edge_cert_name_mismatch, Severity.error, subject,
                           f"The Edge {subject}'s internal certificate does not name it: {cert.subject}", evidence))
    root_note = [] if fe_root else ["the root CA was not compared: no Front End certificate was read in this check"]
    if fe_root and cert.root and cert.root != fe_root:
        out.append(finding(FindingCode.replica_edge_cert_other_root, Severity.error, subject,
                           f"The Edge {subject}'s internal certificate chains to {cert.root}, the Front Ends' to "
                           f"{fe_root}", evidence))
    if cert.not_after and cert.not_after < (clues.health.collected_at if clues.health else cert.not_after):
        out.append(finding(FindingCode.replica_edge_cert_expired, Severity.error, subject,
                           f"The Edge {subject}'s internal certificate expired on {when(cert.not_after)}", evidence))
    if not out and cert_event:
        looked = "key, names and expiry" + ("" if root_note else ", root")
        out.append(finding(FindingCode.replica_edge_cert_invalid, Severity.error, subject,
                           f"The Edge {subject} presented a certificate the File Transfer Agent rejects, though its "
                           f"{looked} look right", evidence,
                           unchecked=root_note + ["revocation and intermediate certificates: "
                                                  "check the chain in the snap-in"]))
    return out
