"""Probe data (already decoded JSON: the probes' 2.0-compatible writer, or 5.1's ConvertTo-Json) ->
typed models. Pure functions; cms.ps_json reads both shapes. A field the product version does not
report (null in the probes' answer, see workers/probes/_lib.ps1) becomes None where the model says so.

What a server says is bounded and checked before it is kept: every string is cut to a length
(cms.ps_json.MAX_TEXT, event messages MAX_MESSAGE) and says "truncated" when it was; every host name it
names (ActiveMasterFqdn, the File Transfer Agents, replicas, pools, the addresses the port test
used, SQL servers) must be one, or it is left out of the model and the model's `notes` say so."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from cms.discovery import parse_discover
from cms.doctor import parse_doctor
from cms.models import (
    Ace,
    BackupModule,
    BackupStatus,
    CertificateInfo,
    CmdletRun,
    CmsService,
    CmsStatus,
    ConfigurationFile,
    EventLog,
    GroupMembership,
    Location,
    Membership,
    Model,
    PoolBackup,
    PortTest,
    Reachability,
    ReplicaHealth,
    ReplicaStatus,
    ReplicationEvent,
    ReplicationFailure,
    ReplicationRequest,
    ServiceStart,
    ShareAcl,
    StoreStatus,
)
from cms.ps_json import (
    MAX_MESSAGE,
    as_ace_allow,
    as_bool,
    as_datetime,
    as_host,
    as_hosts,
    as_list,
    as_optional_bool,
    as_service_state,
    as_str,
    as_strings,
    clip,
)


class ParseError(ValueError):
    pass


def not_reported(data: dict[str, Any], prop: str) -> bool:
    """Whether the probe said this product version has no such cmdlet property: data.NotReported lists
    "<cmdlet>: <property>" (workers/probes/_lib.ps1); 5.1 output has no such list."""
    return any(entry.rsplit(": ", 1)[-1] == prop for entry in as_strings(data.get("NotReported")))


def _mapping(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ParseError(f"{what}: expected an object, got {type(value).__name__}")
    return value


def parse_cms_status(data: Any) -> CmsStatus:
    d = _mapping(data, "cms-status")
    store = _mapping(d.get("Store") or {}, "cms-status Store")
    notes: list[str] = []
    replicas = []
    for row in as_list(d.get("Replicas")):
        row = _mapping(row, "cms-status replica")
        fqdn = as_host(row.get("ReplicaFqdn"), "ReplicaFqdn", notes)
        if not fqdn:
            continue
        replicas.append(ReplicaStatus(
            fqdn=fqdn,
            up_to_date=as_bool(row.get("UpToDate")),
            last_status_report=as_datetime(row.get("LastStatusReport")),
            last_update_creation=as_datetime(row.get("LastUpdateCreation")),
            product_version=as_str(row.get("ProductVersion")),
        ))
    services = _cms_services((_mapping(x, "cms-status service") for x in as_list(d.get("Services"))), notes)
    collected = as_datetime(d.get("CollectedAt"))
    if collected is None:
        raise ParseError("cms-status: CollectedAt missing")
    return CmsStatus(
        collected_at=collected,
        product_version=as_str(d.get("ProductVersion")),
        replicas=replicas,
        store=StoreStatus(
            active_master_fqdn=as_host(store.get("ActiveMasterFqdn"), "ActiveMasterFqdn", notes),
            active_file_transfer_agents=as_hosts(store.get("ActiveFileTransferAgents"), "ActiveFileTransferAgents",
                                                 notes),
            active_replicas=as_hosts(store.get("ActiveReplicas"), "ActiveReplicas", notes),
            deleted_replicas=None if not_reported(d, "DeletedReplicas")
            else as_hosts(store.get("DeletedReplicas"), "DeletedReplicas", notes),
        ),
        services=services,
        notes=notes,
    )


def _cms_services(rows: Iterable[dict[str, Any]], notes: list[str]) -> list[CmsService]:
    """Get-CsService -CentralManagement's objects, as cms-status and cms-location both report them."""
    services = []
    for s in rows:
        pool = as_host(s.get("PoolFqdn"), "PoolFqdn", notes)
        if pool:
            services.append(CmsService(
                pool_fqdn=pool,
                site_id=as_str(s.get("SiteId")),
                version=as_str(s.get("Version")),
                active=as_optional_bool(s.get("Active")),  # None: not reported (Lync Server 2010)
            ))
    return services


def parse_location(data: Any) -> Location:
    """Where the CMS lives by its own account: Get-CsManagementConnection, Get-CsService
    -CentralManagement, the pools' pairing and back-end SQL (cms-location)."""
    if not isinstance(data, dict):
        raise ParseError("cms-location: expected an object")
    raw_conn = data.get("Connection")
    conn = raw_conn if isinstance(raw_conn, dict) else {}
    notes: list[str] = []
    services = _cms_services((s for s in as_list(data.get("Services")) if isinstance(s, dict)), notes)
    pairs = {as_host(p.get("PoolFqdn"), "PoolFqdn", notes) or "": as_host(p.get("BackupPoolFqdn"), "BackupPoolFqdn",
                                                                           notes)
             for p in as_list(data.get("Pairs")) if isinstance(p, dict)}
    backend = {as_host(p.get("PoolFqdn"), "PoolFqdn", notes) or "": as_host(p.get("BackendSql"), "BackendSql", notes)
               for p in as_list(data.get("Pools")) if isinstance(p, dict)}
    pairs.pop("", None)
    backend.pop("", None)
    return Location(store_sql=as_host(conn.get("SqlServer"), "SqlServer", notes), store_text=as_str(conn.get("Source")),
                    services=services, pairs=pairs, backend_sql=backend, notes=notes)


def _collected(d: dict[str, Any], what: str):
    collected = as_datetime(d.get("CollectedAt"))
    if collected is None:
        raise ParseError(f"{what}: CollectedAt missing")
    return collected


def parse_replica_health(server: str, data: Any) -> ReplicaHealth:
    d = _mapping(data, "replica-health")
    services = _mapping(d.get("Services") or {}, "replica-health Services")
    return ReplicaHealth(
        fqdn=server,
        collected_at=_collected(d, "replica-health"),
        product_version=as_str(d.get("ProductVersion")),
        services={name: as_service_state(v) for name, v in services.items()},
        acl=_share_acl(d) if any(k in d for k in ("Share", "Folder", "ShareError", "FolderError")) else None,
        certificate=_certificate(d.get("Certificate")),
        certificate_error=as_str(d.get("CertificateError")),
    )


def _share_acl(d: dict[str, Any]) -> ShareAcl:
    share = d.get("Share")
    folder = d.get("Folder")
    return ShareAcl(
        path=as_str((share or {}).get("Path")) or as_str((folder or {}).get("Path")),
        share=[Ace(identity=as_str(a.get("Account")) or "?", rights=as_str(a.get("Right")) or "",
                   allow=as_ace_allow(a.get("Type")))
               for a in map(_ace, as_list(share.get("Access")))] if isinstance(share, dict) else None,
        folder=[Ace(identity=as_str(a.get("Identity")) or "?", rights=as_str(a.get("Rights")) or "",
                    allow=as_ace_allow(a.get("Type")), inherited=as_bool(a.get("Inherited")))
                for a in map(_ace, as_list(folder.get("Access")))] if isinstance(folder, dict) else None,
        owner=as_str((folder or {}).get("Owner")) if isinstance(folder, dict) else None,
        share_error=as_str(d.get("ShareError")),
        folder_error=as_str(d.get("FolderError")),
    )


def _ace(value: Any) -> dict[str, Any]:
    return _mapping(value, "ACL entry")


def _certificate(value: Any) -> CertificateInfo | None:
    if not isinstance(value, dict):
        return None
    return CertificateInfo(
        use=as_str(value.get("Use")) or "Default",
        thumbprint=as_str(value.get("Thumbprint")),
        subject=as_str(value.get("Subject")),
        dns_names=as_strings(value.get("DnsNames")),
        has_private_key=as_bool(value.get("HasPrivateKey")),
        not_after=as_datetime(value.get("NotAfter")),
        issuer=as_str(value.get("Issuer")),
        root=as_str(value.get("Root")),
        chain_status=as_strings(value.get("ChainStatus")),
    )


def parse_replication_events(data: Any) -> tuple[str | None, list[ReplicationEvent]]:
    d = _mapping(data, "replication-events")
    computer = as_str(d.get("Computer"))
    events = []
    for e in as_list(d.get("Events")):
        e = _mapping(e, "replication event")
        time = as_datetime(e.get("TimeCreated"))
        event_id = e.get("Id")
        if time is None or not isinstance(event_id, (int, str)) or not str(event_id).isdigit():
            continue
        events.append(ReplicationEvent(id=int(event_id), source=as_str(e.get("Source")) or "", time=time,
                                       level=as_str(e.get("Level")), message=clip(str(e.get("Message") or ""),
                                                                                  MAX_MESSAGE),
                                       computer=computer))
    return computer, sorted(events, key=lambda ev: ev.time, reverse=True)


def parse_reachability(server: str, data: Any) -> Reachability:
    d = _mapping(data, "reachability")
    notes: list[str] = []
    results = []
    for r in as_list(d.get("Results")):
        r = _mapping(r, "reachability result")
        fqdn = as_host(r.get("Fqdn"), "Fqdn", notes)
        if not fqdn:
            continue
        share = r.get("ShareWritable")
        results.append(PortTest(
            fqdn=fqdn, address=as_host(r.get("Address"), f"Address of {fqdn}", notes, address=True) or fqdn,
            port=int(r.get("Port") or 0),
            connected=as_bool(r.get("Connected")), error=as_str(r.get("Error")),
            elapsed_ms=int(r["ElapsedMs"]) if isinstance(r.get("ElapsedMs"), (int, float)) else None,
            share_writable=None if share is None or share == "" else as_bool(share),
            share_error=as_str(r.get("ShareError")),
        ))
    return Reachability(source=as_host(d.get("From"), "From", notes) or server, identity=as_str(d.get("Identity")),
                        collected_at=_collected(d, "reachability"), results=results, notes=notes)


def parse_ad_membership(data: Any) -> GroupMembership:
    d = _mapping(data, "ad-membership")
    computers = []
    for c in as_list(d.get("Computers")):
        c = _mapping(c, "ad-membership computer")
        name = as_str(c.get("Name"))
        if name:
            computers.append(Membership(computer=name, found=as_bool(c.get("Found")), member=as_bool(c.get("Member")),
                                        distinguished_name=as_str(c.get("DistinguishedName"))))
    return GroupMembership(group=as_str(d.get("Group")), computers=computers)


def parse_backup_status(data: Any, notes: list[str] | None = None) -> list[PoolBackup]:
    """`notes`, when given, gets what was left out (an invalid pool name) and why."""
    d = _mapping(data, "backup-status")
    notes = [] if notes is None else notes
    pools = []
    for p in as_list(d.get("Pools")):
        p = _mapping(p, "backup-status pool")
        pool = as_host(p.get("PoolFqdn"), "PoolFqdn", notes)
        if not pool:
            continue
        modules = [BackupModule(identity=as_str(m.get("Identity")) or "?", export_status=as_str(m.get("ExportStatus")),
                                import_status=as_str(m.get("ImportStatus")))
                   for m in (_mapping(x, "backup module") for x in as_list(p.get("Modules")))]
        pools.append(PoolBackup(pool=pool, backup_pool=as_host(p.get("BackupPoolFqdn"), "BackupPoolFqdn", notes),
                                modules=modules, error=as_str(p.get("Error"))))
    return pools


def parse_backup(data: Any) -> BackupStatus:
    notes: list[str] = []
    return BackupStatus(pools=parse_backup_status(data, notes), notes=notes)


# -- the change probes ----------------------------------------------------------------------------


def parse_service_start(data: Any) -> ServiceStart:
    d = _mapping(data, "start-service")
    return ServiceStart(name=as_str(d.get("Name")), before=as_str(d.get("Before")), after=as_str(d.get("After")))


def parse_configuration_file(data: Any) -> ConfigurationFile:
    """export-configuration, import-configuration and reseed-local all describe one zip."""
    d = _mapping(data, "configuration file")
    size = d.get("Bytes")
    # the zip's base64 is kept whole: the transport bounds the answer (CMSBOT_WINRM_MAX_ANSWER_MB), and the
    # SHA-256 checks it end to end
    return ConfigurationFile(path=as_str(d.get("Path")), bytes=int(size) if isinstance(size, (int, float)) else None,
                             sha256=as_str(d.get("Sha256")) or "", content=as_str(d.get("Content"), None) or "")


def parse_replication_request(data: Any) -> ReplicationRequest:
    d = _mapping(data, "force-replication")
    errors = [_mapping(e, "replication error") for e in as_list(d.get("Errors"))]
    return ReplicationRequest(
        replicas=as_strings(d.get("Replicas")),
        errors=[ReplicationFailure(replica=as_str(e.get("Replica")) or "*", message=as_str(e.get("Message")) or "")
                for e in errors])


def parse_cmdlet_run(data: Any) -> CmdletRun:
    """cms-failover and cms-restore: Succeeded is true when the cmdlet wrote no error."""
    d = _mapping(data, "cmdlet run")
    return CmdletRun(command=as_str(d.get("Command")), succeeded=as_bool(d.get("Succeeded")),
                     errors=as_strings(d.get("Errors")), warnings=as_strings(d.get("Warnings")))


# -- one registry: every probe's answer becomes its model as it arrives ------------------------

_ANSWERS: dict[str, Callable[[str, Any], Model]] = {
    "cms-status": lambda server, d: parse_cms_status(d),
    "cms-location": lambda server, d: parse_location(d),
    "replica-health": parse_replica_health,
    "backup-status": lambda server, d: parse_backup(d),
    "replication-events": lambda server, d: EventLog(computer=(log := parse_replication_events(d))[0], events=log[1]),
    "reachability": parse_reachability,
    "ad-membership": lambda server, d: parse_ad_membership(d),
    "start-service": lambda server, d: parse_service_start(d),
    "export-configuration": lambda server, d: parse_configuration_file(d),
    "import-configuration": lambda server, d: parse_configuration_file(d),
    "reseed-local": lambda server, d: parse_configuration_file(d),
    "force-replication": lambda server, d: parse_replication_request(d),
    "cms-failover": lambda server, d: parse_cmdlet_run(d),
    "cms-restore": lambda server, d: parse_cmdlet_run(d),
    "discover": lambda server, d: parse_discover(d),  # cmsbot discover (cms/discovery.py)
    "doctor": parse_doctor,  # cmsbot doctor (cms/doctor.py)
}
PARSED_PROBES = frozenset(_ANSWERS)


def parse_answer(probe: str, server: str, data: Any) -> Model:
    """The model of one probe's data from one server; ParseError when it cannot be read."""
    parse = _ANSWERS.get(probe)
    if parse is None:
        raise ParseError(f"no parser for probe {probe!r}")
    try:
        return parse(server, data)
    except ParseError:
        raise
    except (ValueError, TypeError, KeyError) as e:
        raise ParseError(f"{probe}: {e}") from e
