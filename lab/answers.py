"""What each probe prints on a simulated server: the JSON of the probes' own writer.

Answers are derived from the lab state only, and written the way the JSON writer of
`workers/probes/_lib.ps1` writes them on every host (Windows PowerShell 2.0 has no ConvertTo-Json):
one line of plain ASCII (every character outside 0x20-0x7E escaped), dates as ISO 8601 UTC with
milliseconds ("2023-11-14T22:13:20.000Z"), strings for values the probe casts with [string],
arrays for every list (empty or one item too), and the envelope
`{"probe", "version", "ps", "data" | "error"}` where "ps" is the host's Windows PowerShell. A
cmdlet property the deployment does not emit (the drop-property scenario) is what the probe's
Get-Field makes of it: null, and listed in data.NotReported as "<cmdlet>: <property>".
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from cms.topology import ServerRole, Version
from lab import powershell
from lab.deployment import (
    DOMAIN,
    EVENT_EVERY,
    HOSTILE_NAME,
    HUGE_ANSWER,
    HUGE_ERROR,
    REPLICATOR_GROUP,
    REPORT_EVERY,
    RUNNING,
    LabServer,
    LabState,
    now,
)

FTA_SOURCE = "LS File Transfer Agent Service"
MRA_SOURCE = "LS Master Replicator Agent Service"
GROUP_DN = "CN=RTCUniversalConfigReplicator,CN=Users,DC=contoso,DC=com"
LOG_WINDOW = timedelta(hours=24)


class UnknownProbe(LookupError):
    pass


# The Windows PowerShell each lab version answers from ($PSVersionTable.PSVersion as the probes report it):
# Lync Server 2010 on Windows Server 2008 R2 (2.0), Lync Server 2013 on 2008 R2 with WMF 3.0, Skype for
# Business Server 2015 on Windows Server 2012 R2 (4.0), 2019 on Windows Server 2019 (5.1, build 17763).
POWERSHELL = {Version.lync2010: "2.0", Version.lync2013: "3.0", Version.sfb2015: "4.0",
              Version.sfb2019: "5.1.17763.1"}

# The cmdlet behind each property a probe reads with Get-Field -Source (workers/probes/*.ps1), for
# data.NotReported; a property not listed here is labelled with the probe's name.
SOURCES: dict[str, dict[str, str]] = {
    "cms-status": {
        **dict.fromkeys(("ReplicaFqdn", "UpToDate", "LastStatusReport", "LastUpdateCreation"),
                        "Get-CsManagementStoreReplicationStatus"),
        **dict.fromkeys(("ActiveMasterFqdn", "ActiveFileTransferAgents", "ActiveReplicas", "DeletedReplicas"),
                        "Get-CsManagementStoreReplicationStatus -CentralManagementStoreStatus"),
        **dict.fromkeys(("PoolFqdn", "SiteId", "Version", "Active"), "Get-CsService -CentralManagement"),
    },
    "cms-location": {
        **dict.fromkeys(("StoreProvider", "SqlServer", "SqlInstance"), "Get-CsManagementConnection"),
        **dict.fromkeys(("SiteId", "Version", "Active"), "Get-CsService -CentralManagement"),
    },
    "discover": {"Active": "Get-CsService -CentralManagement"},
    "backup-status": {
        "BackupPoolFqdn": "Get-CsPoolBackupRelationship",
        **dict.fromkeys(("Identity", "ExportStatus", "ImportStatus"), "Get-CsBackupServiceStatus BackupModules"),
    },
}


# Properties a product version's cmdlets do not have at all: Get-CsService -CentralManagement has Active
# from Lync Server 2013 on (CMS failover and pool pairing came with 2013).
VERSION_LACKS: dict[Version, dict[str, set[str]]] = {
    Version.lync2010: {"cms-status": {"Active"}, "cms-location": {"Active"}, "discover": {"Active"}},
}


def json_date(moment: datetime | None) -> str | None:
    """A date as the probes' writer prints it: ISO 8601 UTC, milliseconds (truncated, as .NET's 'fff')."""
    if moment is None:
        return None
    utc = moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def to_probe_json(doc: dict[str, Any]) -> str:
    """One line of plain ASCII JSON, as ConvertTo-ProbeJson (_lib.ps1) writes it: Python's escapes with
    ensure_ascii are the writer's (\\" \\\\ \\b \\f \\n \\r \\t, else \\uxxxx in lower-case hex, 0x7F too)."""
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=True)




def powershell_of(state: LabState, server: LabServer | None) -> str:
    """The Windows PowerShell a server runs: its version's, unless a scenario says otherwise (powershell-2)."""
    return (server.powershell if server is not None else None) or POWERSHELL[state.version]


# Import-CsModule's error (workers/probes/_lib.ps1) on a server without the module (module-missing)
MODULE_MISSING = "Neither the SkypeForBusiness nor the Lync PowerShell module is installed on this server"
MODULE_CAUGHT = {"replica-health", "doctor"}  # they load the module inside a try and report its error as data


def error_answer(state: LabState, probe: str, version: int, message: str, category: str = "InvalidOperation",
                 command: str = "", server: LabServer | None = None) -> str:
    """Invoke-Probe's error document."""
    return to_probe_json({"probe": probe, "version": version, "ps": powershell_of(state, server),
                          "error": {"message": message, "category": category, "command": command}})


def not_reported(state: LabState, probe: str, data: Any) -> Any:
    """The answer when the cmdlets do not emit a property (the drop-property scenarios, or one the version
    lacks): what the probe's Get-Field makes of it (null, at any depth) and data.NotReported listing each."""
    names = {prop for p, prop in state.dropped if p == probe} | VERSION_LACKS.get(state.version, {}).get(probe, set())
    if not names or not isinstance(data, dict):
        return data
    seen: list[str] = []

    def null(value: Any) -> Any:
        if isinstance(value, dict):
            out: dict[str, Any] = {}
            for k, v in value.items():
                if k in names:
                    label = f"{SOURCES.get(probe, {}).get(k, probe)}: {k}"
                    if label not in seen:
                        seen.append(label)
                    out[k] = None
                else:
                    out[k] = null(v)
            return out
        if isinstance(value, list):
            return [null(v) for v in value]
        return value

    out = null(data)
    if seen:
        out["NotReported"] = seen
    return out


def server_version_text(state: LabState) -> str:
    name, build = state.product
    return f"{name} ({build}): Volume license key installed."


Answer = Callable[[LabState, LabServer, dict[str, Any]], dict[str, Any]]
ANSWERS: dict[str, Answer] = {}
READS_STDIN = {"import-configuration"}


class ProbeError(Exception):
    """What the probe itself reports as its error (Invoke-Probe's error document)."""


def answers(name: str) -> Callable[[Answer], Answer]:
    def register(fn: Answer) -> Answer:
        ANSWERS[name] = fn
        return fn
    return register


def run(state: LabState, server: LabServer, probe: str, version: int, params: dict[str, Any],
        stdin: bytes | None = b"") -> str:
    """`stdin` None: the command's standard input is a console (WINRS_CONSOLEMODE_STDIN), not a pipe."""
    if probe not in ANSWERS:
        raise UnknownProbe(probe)
    state.tick()
    if server.oversize == "error":  # the oversize-error scenario
        return error_answer(state, probe, version, "E" * HUGE_ERROR, server=server)
    try:
        data = ANSWERS[probe](state, server, {**params, "_stdin": stdin} if probe in READS_STDIN else params)
    except ProbeError as e:
        return error_answer(state, probe, version, str(e), server=server)
    if server.oversize == "answer":  # the oversize-answer scenario: the same answer, grown to HUGE_ANSWER
        data = {**data, "Padding": "x" * HUGE_ANSWER} if isinstance(data, dict) else data
    return to_probe_json({"probe": probe, "version": version, "ps": powershell_of(state, server),
                          "data": not_reported(state, probe, data)})


def _reported(state: LabState, s: LabServer) -> datetime | None:
    """Healthy replicas report every few seconds; failing ones stopped when they failed."""
    if s.failing_since or s.stuck or s.reported_at is None:
        return s.reported_at
    return max(s.reported_at, now() - REPORT_EVERY)


@answers("cms-status")
def _cms_status(state: LabState, server: LabServer, params: dict[str, Any]) -> dict[str, Any]:
    _, build = state.product
    replicas = []
    for s in state.servers.values():
        reported = _reported(state, s)
        replicas.append({
            "ReplicaFqdn": s.fqdn,
            "UpToDate": state.up_to_date(s),
            "LastStatusReport": json_date(reported),
            "LastUpdateCreation": json_date(state.last_change),
            "ProductVersion": build if reported else "",
        })
    services = [
        {"PoolFqdn": pool, "SiteId": state.sites[pool], "Version": build.split(".")[0],
         "Active": pool in state.active_pools}
        for pool in ([state.cms_pool] + ([state.pairs[state.cms_pool]] if state.cms_pool in state.pairs else []))
    ]
    return {
        "CollectedAt": json_date(now()),
        "ProductVersion": server_version_text(state),
        "Replicas": replicas,
        "Store": {
            "ActiveMasterFqdn": HOSTILE_NAME if state.hostile_names else state.active_master or "",
            "ActiveFileTransferAgents": list(state.ftas) + ([HOSTILE_NAME] if state.hostile_names else []),
            "ActiveReplicas": [s.fqdn for s in state.servers.values()] if state.active_master else [],
            "DeletedReplicas": [],
        },
        "Services": services,
    }


@answers("replica-health")
def _replica_health(state: LabState, server: LabServer, params: dict[str, Any]) -> dict[str, Any]:
    services = {name: server.services.get(name, "Missing") for name in ("REPLICA", "MASTER", "FTA", "LYNCBACKUP")}
    path = "C:\\RtcReplicaRoot\\xds-replica"
    group = f"{server.netbios}\\{REPLICATOR_GROUP}"
    share = [{"Account": "BUILTIN\\Administrators", "Right": "Full", "Type": "Allow"}]
    folder = [{"Identity": "NT AUTHORITY\\SYSTEM", "Rights": "FullControl", "Type": "Allow", "Inherited": False},
              {"Identity": "BUILTIN\\Administrators", "Rights": "FullControl", "Type": "Allow", "Inherited": False}]
    if server.share_acl_ok:
        share.append({"Account": group, "Right": "Change", "Type": "Allow"})
        folder.append({"Identity": group, "Rights": "Modify, Synchronize", "Type": "Allow", "Inherited": False})
    cert = server.cert if server.module else None
    no_module = None if server.module else f"the management module could not be loaded: {MODULE_MISSING}"
    return {
        "CollectedAt": json_date(now()),
        "ProductVersion": server_version_text(state) if server.module else None,
        "ProductVersionError": no_module,
        "Services": services,
        "Share": {"Name": "xds-replica", "Path": path, "Access": share},
        "ShareError": None,
        "Folder": {"Path": path, "Owner": "BUILTIN\\Administrators", "Access": folder},
        "FolderError": None,
        "Certificate": None if cert is None else {
            "Use": cert.use, "Thumbprint": cert.thumbprint, "Subject": cert.subject, "DnsNames": list(cert.dns_names),
            "HasPrivateKey": cert.has_private_key, "NotAfter": json_date(cert.not_after), "Issuer": cert.issuer,
            "Root": cert.root, "ChainStatus": [] if cert.root.startswith("CN=Contoso") else ["PartialChain"],
        },
        "CertificateError": None if cert else no_module or (
            f"no certificate is assigned for {'Internal' if server.role is ServerRole.edge else 'Default'}"),
    }


@answers("replication-events")
def _replication_events(state: LabState, server: LabServer, params: dict[str, Any]) -> dict[str, Any]:
    events = fta_log(state) if server.fqdn == state.fta_host.fqdn else []
    since = now() - timedelta(hours=float(params.get("sinceHours", 24)))
    limit = int(params.get("maxEvents", 200))  # replication-events.ps1's default
    events = [e for e in events if e["_time"] >= since][:limit]
    return {
        "CollectedAt": json_date(now()),
        "Computer": server.fqdn,
        "Events": [{k: (json_date(v) if k == "TimeCreated" else v) for k, v in e.items() if k != "_time"}
                   for e in events],
    }


def fta_log(state: LabState) -> list[dict[str, Any]]:
    """The File Transfer Agent's errors for every failing replica, newest first,
    repeated every EVENT_EVERY while the failure lasts, in the seed's wording."""
    t = now()
    product = state.product_name
    failing = [(s, state.failure(s)) for s in state.servers.values() if s.failing_since]
    failing = [(s, why) for s, why in failing if why in ("https", "certificate", "access", "master-watch")]
    if not failing:
        return []
    since = {s.fqdn: s.failing_since for s, _ in failing if s.failing_since}  # every failing server has one
    start = max(min(since.values()), t - LOG_WINDOW)
    events: list[dict[str, Any]] = []
    slot = t - timedelta(minutes=1)
    while slot >= start:
        https = [s.fqdn for s, why in failing if why == "https" and since[s.fqdn] <= slot]
        if https:
            events.append(_event(slot, 1017, _https_text(product, https)))
        watched = [s.fqdn for s, why in failing if why == "master-watch" and since[s.fqdn] <= slot]
        if watched:
            events.append(_event(slot, 2020, _master_watch_text(product, state, watched), MRA_SOURCE))
        for s, why in failing:
            if since[s.fqdn] > slot:
                continue
            if why == "certificate" and s.cert:
                events.append(_event(slot, 1015, _cert_text(product, s)))
            elif why == "access":
                events.append(_event(slot, 1034, _access_text(product, s.fqdn)))
        slot -= EVENT_EVERY
    return events


def _event(moment: datetime, event_id: int, message: str, source: str = FTA_SOURCE) -> dict[str, Any]:
    return {"Id": event_id, "Source": source, "TimeCreated": moment, "Level": "Error", "Message": message,
            "_time": moment}


def _https_text(product: str, replicas: list[str]) -> str:
    # Windows writes the entries back to back, no separator after the period (as in the 2020 event of
    # Microsoft's article on unsupported file store shares)
    failures = "".join(f"{r}: Https destination unavailable." for r in replicas)
    return (f"File transfer failed for some replica machines. {product}, File Transfer Agent will continuously "
            "attempt to replicate to these machines.\r\nWhile this condition persists, configuration changes will "
            f"not be delivered to these replica machines.\r\n\r\nReplica file transfer failures: {failures}\r\n\r\n"
            "Cause: Possible issues with transferring files to the replicas listed above.\r\n\r\n"
            "Resolution: Check the accessibility of file shares or https web services listed above.")


def _cert_text(product: str, s: LabServer) -> str:
    assert s.cert
    return (f"File transfer failed. {product}, File Transfer Agent will continuously attempt to transfer the files."
            f"\r\n\r\nReason: Unable to match host/cluster against certificate, host={s.fqdn}, cluster={s.pool}, "
            f"{s.cert.subject}, OU=Certificates, OU=Server, O=Contoso.\r\n\r\n"
            f"Cause: {product}, Replica Replicator Agent presented an invalid certificate.\r\n\r\n"
            f"Resolution: Ensure that the certificate configured for {product}, Replica Replicator Agent is valid.")


def _master_watch_text(product: str, state: LabState, replicas: list[str]) -> str:
    """Event 2020's wording, from Microsoft's article on unsupported file store shares."""
    share = state.cms_pool.split(".")[0]
    store = f"\\\\fs01.{DOMAIN}\\{share}\\1-CentralMgmt-1\\CMSFileStore\\xds-master\\replicas"
    failures = "".join(f"{r}: Access failed. (Can't watch {store}\\{r}\\from-replica.)" for r in replicas)
    return (f"File transfer failed for some replica machines. {product}, Master Replicator Agent will continuously "
            "attempt to replicate with these machines.\r\nWhile this condition persists, configuration changes will "
            f"not be delivered to these replica machines.\r\nReplica file transfer failures:\r\n{failures}\r\n"
            "Cause: Possible issues with writing files to the file shares listed above.\r\nResolution:\r\n"
            "Check the accessibility of the file shares listed above.")


def _access_text(product: str, fqdn: str) -> str:
    return (f"{product}, File Transfer Agent service encountered an error while accessing a file share and will "
            "continuously attempt to access this file share until this issue is resolved. While this condition "
            "persists, replication to replica machines might not occur.\r\n\r\n"
            f"Access denied. (\\\\{fqdn}\\xds-replica\\from-master\\data.zip)\r\n\r\n"
            "Cause: Possible issues with file share permissions. This can occur if the computer hosting the file "
            "share has outdated cached credentials for the computer that is trying to access the file share.\r\n\r\n"
            "Resolution: For details about how to resolve file share permission issues, see the product documentation")


@answers("reachability")
def _reachability(state: LabState, server: LabServer, params: dict[str, Any]) -> dict[str, Any]:
    timeout = int(params.get("timeoutMs", 3000))  # reachability.ps1's default
    results = []
    for target in params.get("targets", []):
        fqdn, port = str(target.get("fqdn", "")), int(target.get("port", 0))
        s = state.servers.get(fqdn.lower())
        row: dict[str, Any] = {"Fqdn": fqdn, "Address": target.get("address", fqdn), "Port": port, "Connected": True,
                               "Error": None, "ElapsedMs": 1, "ShareWritable": None, "ShareError": None}
        if s is None or (not s.resolves and row["Address"] == fqdn):
            row.update(Connected=False, Error="HostNotFound", ElapsedMs=3)
        elif s.fault == "unreachable" or (port == 4443 and s.port_4443_blocked):
            row.update(Connected=False, Error="TimedOut", ElapsedMs=timeout)
        elif port == 4443 and s.services.get("REPLICA") != RUNNING:
            row.update(Connected=False, Error="ConnectionRefused", ElapsedMs=1)
        elif target.get("share"):
            writable = s.share_acl_ok
            row.update(ShareWritable=writable, ShareError=None if writable else (
                f"Access to the path '\\\\{fqdn}\\xds-replica\\from-master\\cmsbot-write-test-"
                "5f0c2d7e-2b1f-4a59-9d7e-0c1a3c2b9e11.tmp' is denied."))
        results.append(row)
    return {"CollectedAt": json_date(now()), "From": server.fqdn, "Identity": "CONTOSO\\cmsbot", "Results": results}


@answers("ad-membership")
def _ad_membership(state: LabState, server: LabServer, params: dict[str, Any]) -> dict[str, Any]:
    by_name = {s.netbios: s for s in state.servers.values()}
    computers = []
    for name in params.get("computers", []):
        s = by_name.get(str(name).upper())
        computers.append({"Name": name, "Found": s is not None,
                          "DistinguishedName": f"CN={s.netbios},OU=Lync Servers,DC=contoso,DC=com" if s else None,
                          "Member": bool(s and s.in_group)})
    return {"CollectedAt": json_date(now()), "Group": GROUP_DN, "Computers": computers}


@answers("backup-status")
def _backup_status(state: LabState, server: LabServer, params: dict[str, Any]) -> dict[str, Any]:
    pools = []
    for pool in params.get("pools", []):
        if pool not in state.pools:
            pools.append({"PoolFqdn": pool, "BackupPoolFqdn": None, "Modules": [],
                          "Error": f"Cannot find pool \"{pool}\" in the topology."})
            continue
        export = "ErrorState" if pool in state.backup_errors else "SteadyState"
        pools.append({"PoolFqdn": pool, "BackupPoolFqdn": state.pairs.get(pool),
                      "Modules": [{"Identity": "CentralMgmt.CMSMaster", "ExportStatus": export,
                                   "ImportStatus": "NormalState"}], "Error": None})
    return {"CollectedAt": json_date(now()), "Pools": pools}


# -- remediations: they change the state the way the cmdlets would ----------------------

SERVICES = {"REPLICA", "MASTER", "FTA", "LYNCBACKUP"}


@answers("start-service")
def _start_service(state: LabState, server: LabServer, params: dict[str, Any]) -> dict[str, Any]:
    name = str(params.get("name", ""))
    if name not in SERVICES:
        raise ProbeError(f"service {name!r} is not one this probe may start")
    if name not in server.services:
        raise ProbeError(f"Cannot find any service with service name '{name}'.")
    before = server.services[name]
    server.services[name] = RUNNING
    return {"CollectedAt": json_date(now()), "Name": name, "Before": before, "After": RUNNING,
            "Started": before != RUNNING}


@answers("force-replication")
def _force_replication(state: LabState, server: LabServer, params: dict[str, Any]) -> dict[str, Any]:
    replicas = [str(r).lower() for r in params.get("replicas", [])]
    errors = []
    if not replicas:
        state.replicate()
    for r in replicas:
        if r not in state.servers:
            errors.append({"Replica": r, "Message": f"Cannot find replica \"{r}\"."})
        else:
            state.replicate(only=r)
    return {"CollectedAt": json_date(now()), "Replicas": replicas or ["*"], "Errors": errors}


EXPORT_DIR = "C:\\ProgramData\\cmsbot\\exports"


def _export_bytes(state: LabState) -> bytes:
    """A stand-in for the configuration zip: deterministic for the current change."""
    seed = f"{state.cms_pool}|{state.last_change.isoformat()}".encode()
    return b"PK\x03\x04" + b"".join(hashlib.sha256(seed + i.to_bytes(4, "big")).digest() for i in range(2000))


@answers("export-configuration")
def _export_configuration(state: LabState, server: LabServer, params: dict[str, Any]) -> dict[str, Any]:
    if not state.active_master:
        raise ProbeError("Cannot export the configuration: the Central Management Store is not available.")
    blob = _export_bytes(state)
    return {"CollectedAt": json_date(now()), "Path": f"{EXPORT_DIR}\\{params.get('fileName')}", "Bytes": len(blob),
            "Sha256": hashlib.sha256(blob).hexdigest().upper(), "Content": base64.b64encode(blob).decode()}


@answers("import-configuration")
def _import_configuration(state: LabState, server: LabServer, params: dict[str, Any]) -> dict[str, Any]:
    if params.get("_stdin") is None:  # the probe's own check of [Console]::IsInputRedirected
        raise ProbeError("standard input is a console, not the zip (the caller must send it on stdin)")
    try:
        blob = base64.b64decode(b"".join(params["_stdin"].split()), validate=True)
    except ValueError:
        raise ProbeError("the configuration arrived on stdin is not base64") from None
    digest = hashlib.sha256(blob).hexdigest().upper()
    if digest != str(params.get("sha256", "")).upper():
        raise ProbeError("checksum mismatch: the copied configuration is not the exported one")
    t = now()
    server.synced_at = server.reported_at = t
    server.failing_since, server.stuck = None, False
    return {"CollectedAt": json_date(t), "Path": f"C:\\ProgramData\\cmsbot\\imports\\{params.get('fileName')}",
            "Bytes": len(blob), "Sha256": digest, "Imported": True}


# -- CMS failover and recovery -------------------------------------------------------------

BEING_MOVED = ("###50020:XDSForceReplication: This central management store is being moved to another location. "
               "No changes can be made until this move is complete")
AD_MISMATCH = "The Central Management Store database in Active Directory doesn't match the one in the topology"


def _not_backup(pool: str) -> str:
    return (f'Cannot fail over the Central Management Server. The new Central Management Store located at "{pool}" '
            "is not in Backup mode.")


def _in_progress(pool: str) -> str:
    return (f"Central Management Server cannot be moved to pool {pool} because either a previous failover attempt "
            "failover or there is already a failover in progress. If the central management server was recently "
            "moved to another pool this condition might be caused by a delay in Active Directory Replication")


@answers("cms-location")
def _cms_location(state: LabState, server: LabServer, params: dict[str, Any]) -> dict[str, Any]:
    owner_sql = state.sql.get(state.owner_pool, "")
    pair = [state.cms_pool] + ([state.pairs[state.cms_pool]] if state.cms_pool in state.pairs else [])
    _, build = state.product
    return {
        "CollectedAt": json_date(now()),
        "Connection": {"StoreProvider": "Sql", "SqlServer": owner_sql, "SqlInstance": "rtc",
                       "Source": f"SQL Server: {owner_sql}\\rtc"},
        "ConnectionError": None,
        "Services": [{"PoolFqdn": p, "SiteId": state.sites[p], "Version": build.split(".")[0],
                      "Active": p in state.active_pools} for p in pair],
        "Pairs": [{"PoolFqdn": p, "BackupPoolFqdn": state.pairs.get(p)} for p in params.get("pools", [])],
        "Pools": [{"PoolFqdn": p, "Computers": list(state.pools.get(p, [])), "BackendSql": state.sql.get(p)}
                  for p in params.get("pools", [])],
    }


def _cmdlet_result(mode: str, command: str, started: datetime, errors: list[str], warnings: list[str],
                   output: str = "") -> dict[str, Any]:
    return {"CollectedAt": json_date(now()), "StartedAt": json_date(started), "Mode": mode, "Command": command,
            "Succeeded": not errors, "Warnings": warnings, "Errors": errors, "Output": output}


@answers("cms-failover")
def _cms_failover(state: LabState, server: LabServer, params: dict[str, Any]) -> dict[str, Any]:
    """Invoke-CsManagementServerFailover on a server of the pool that takes over."""
    started, mode, target = now(), str(params.get("mode", "")), server.pool
    if state.version.value == "lync2010":
        raise ProbeError("The term 'Invoke-CsManagementServerFailover' is not recognized as the name of a cmdlet, "
                         "function, script file, or operable program.")
    if mode == "disaster":
        sql = str(params.get("backupSqlServerFqdn", ""))
        command = f"Invoke-CsManagementServerFailover -BackupSqlServerFqdn {sql} -Force -Confirm:$false"
    elif mode == "normal":
        command = "Invoke-CsManagementServerFailover -Confirm:$false"
    else:
        raise ProbeError(f"mode {mode!r} is not normal or disaster")
    if state.forced_from and state.forced_from in state.active_pools:
        return _cmdlet_result(mode, command, started, [BEING_MOVED], [AD_MISMATCH])
    if state.moving_to:
        return _cmdlet_result(mode, command, started, [_in_progress(target)], [])
    if target == state.cms_pool:
        return _cmdlet_result(mode, command, started,
                              [f"The Central Management Store is already in pool {target}."], [])
    if mode == "normal":
        if not state.active_master:
            return _cmdlet_result(mode, command, started, [
                "Cannot contact the Central Management Store. To fail over while it is unavailable, use "
                "-BackupSqlServerFqdn (disaster recovery)."], [])
        if target in state.active_pools:
            return _cmdlet_result(mode, command, started, [_not_backup(target)], [])
        state.moving_to, state.moving_until = target, now() + state.convergence
        return _cmdlet_result(mode, command, started, [], [],
                              f"Central Management Server failover to {target} started.")
    if sql != state.sql.get(target):
        return _cmdlet_result(mode, command, started, [f"Cannot connect to SQL Server {sql}."], [])
    source = state.cms_pool
    state._make_cms(target)
    state.forced_from = source
    state.last_change = now()
    state.replicate()
    return _cmdlet_result(mode, command, started, [], [], f"Central Management Server moved to {target} (forced).")


@answers("cms-restore")
def _cms_restore(state: LabState, server: LabServer, params: dict[str, Any]) -> dict[str, Any]:
    """Invoke-CsManagementServerFailover -Restore on a server of the pool that owns the CMS store."""
    started, pool = now(), server.pool
    command = "Invoke-CsManagementServerFailover -Restore -Confirm:$false"
    if pool != state.owner_pool:
        return _cmdlet_result("restore", command, started, [
            f"Cannot restore the Central Management Store: pool {pool} does not host its database "
            f"({state.sql.get(state.owner_pool)} does)."], [])
    state._make_cms(pool)
    state.forced_from, state.moving_to, state.moving_until = None, None, None
    state.last_change = now()  # replicas catch up through export/import and replication
    return _cmdlet_result("restore", command, started, [], [], f"Central Management Store restored in {pool}.")


@answers("reseed-local")
def _reseed_local(state: LabState, server: LabServer, params: dict[str, Any]) -> dict[str, Any]:
    if not state.active_master:
        raise ProbeError("Export-CsConfiguration: the Central Management Store is not available.")
    blob = _export_bytes(state)
    t = now()
    server.synced_at = server.reported_at = t
    server.failing_since, server.stuck = None, False
    return {"CollectedAt": json_date(t), "Path": f"{EXPORT_DIR}\\{params.get('fileName')}", "Bytes": len(blob),
            "Sha256": hashlib.sha256(blob).hexdigest().upper(), "Imported": True}


# -- onboarding: what `cmsbot discover` and `cmsbot doctor` read --------------------------------------


@answers("discover")
def _discover(state: LabState, server: LabServer, params: dict[str, Any]) -> dict[str, Any]:
    """The deployment as Get-CsPool, Get-CsComputer, Get-CsService and Get-CsPoolBackupRelationship describe it
    (workers/probes/discover.ps1): sites as "Site:<name>", service identities as "<Role>:<pool>", the back-end SQL
    servers as pools of their own that run no Lync service (so Get-CsComputer does not list them)."""
    _, build = state.product
    major = build.split(".")[0]
    by_switch: dict[str, list[dict[str, Any]]] = {k: [] for k in (
        "Registrar", "Director", "EdgeServer", "MediationServer", "PersistentChatServer", "UserServer", "UserDatabase")}

    def service(switch: str, pool: str, site: str, kind: str | None = None, **extra: Any) -> None:
        by_switch[switch].append({"Switch": switch, "Identity": f"{kind or switch}:{pool}", "PoolFqdn": pool,
                                  "SiteId": f"Site:{site}", "Version": major, **extra})

    kinds = {ServerRole.frontend: ["UserServer", "Registrar", "WebServer", "ConferencingServer", "ApplicationServer"],
             ServerRole.director: ["Registrar", "WebServer"], ServerRole.edge: ["EdgeServer"],
             ServerRole.mediation: ["MediationServer"], ServerRole.persistentchat: ["PersistentChatServer"]}
    pools: list[dict[str, Any]] = []
    sql_sites: dict[str, str] = {}
    for pool, members in state.pools.items():
        role, site = state.roles[pool], state.sites[pool]
        pools.append({"Identity": pool, "Fqdn": pool, "Site": f"Site:{site}", "Computers": list(members),
                      "Services": [f"{k}:{pool}" for k in kinds.get(role, [])]})
        if role is ServerRole.frontend:
            service("Registrar", pool, site)
            if pool in state.sql:
                service("UserServer", pool, site, UserDatabase=f"UserDatabase:{state.sql[pool]}")
                sql_sites.setdefault(state.sql[pool], site)
        elif role is ServerRole.director:
            service("Registrar", pool, site)
            service("Director", pool, site, kind="Registrar")
        elif role is ServerRole.edge:
            service("EdgeServer", pool, site)
        elif role is ServerRole.mediation:
            service("MediationServer", pool, site)
    for sql, site in sql_sites.items():
        pools.append({"Identity": sql, "Fqdn": sql, "Site": f"Site:{site}", "Computers": [sql],
                      "Services": [f"UserDatabase:{sql}"]})
        service("UserDatabase", sql, site, SqlInstanceName="rtc")
    errors = []
    if state.version is Version.lync2010:  # -PersistentChatServer came with Lync Server 2013
        by_switch.pop("PersistentChatServer")
        errors.append({"Switch": "PersistentChatServer",
                       "Error": "Get-CsService has no -PersistentChatServer parameter on this version"})
    registrars = [p["Fqdn"] for p in pools if any(s.startswith("Registrar:") for s in p["Services"])]
    pair_pools = [state.cms_pool] + ([state.pairs[state.cms_pool]] if state.cms_pool in state.pairs else [])
    edges = [s for s in state.servers.values() if s.role is ServerRole.edge]
    return {
        "CollectedAt": json_date(now()),
        "From": server.fqdn,
        "ProductVersion": server_version_text(state),
        "ProductVersionError": None,
        "Pools": pools,
        "PoolsError": None,
        "Computers": [{"Identity": s.fqdn, "Fqdn": s.fqdn, "Pool": s.pool} for s in state.servers.values()],
        "ComputersError": None,
        "Services": [row for rows in by_switch.values() for row in rows],
        "ServiceErrors": errors,
        "CentralManagement": [{"PoolFqdn": p, "SiteId": f"Site:{state.sites[p]}", "Version": major,
                               "Active": p in state.active_pools} for p in pair_pools],
        "CentralManagementError": None,
        "Pairs": [] if state.version is Version.lync2010 else [
            {"PoolFqdn": p, "BackupPoolFqdn": state.pairs.get(p), "Error": None} for p in registrars],
        "PairsError": "Get-CsPoolBackupRelationship is not available on this server (pool pairing came with Lync "
                      "Server 2013)" if state.version is Version.lync2010 else None,
        "Addresses": [{"Fqdn": s.fqdn, "Addresses": [s.internal_address] if s.resolves and s.internal_address else [],
                       "Error": None if s.resolves else "No such host is known"} for s in edges],
    }


@answers("doctor")
def _doctor(state: LabState, server: LabServer, params: dict[str, Any]) -> dict[str, Any]:
    """What workers/probes/doctor.ps1 reads: the host's PowerShell and CLR, the module and the cmdlets it lacks,
    the WinRM account's RTC groups and the WinRM limits."""
    ps = powershell_of(state, server)
    lacks = powershell.LYNC2013_CMDLETS if state.version is Version.lync2010 else frozenset()
    module = ("Lync" if state.version in (Version.lync2010, Version.lync2013) else "SkypeForBusiness")
    winrm = dict(state.winrm_config)
    if server.max_envelope_kb:
        winrm["MaxEnvelopeSizekb"] = server.max_envelope_kb
    return {
        "CollectedAt": json_date(now()),
        "Computer": server.fqdn,
        "PSVersion": ps,
        "CLRVersion": "2.0.50727.5485" if ps.startswith("2.") else "4.0.30319.42000",
        "Module": module if server.module else None,
        "ModuleError": None if server.module else MODULE_MISSING,
        "MissingCmdlets": [str(c) for c in params.get("cmdlets", []) if not server.module or c in lacks],
        "Identity": "CONTOSO\\cmsbot",
        "Groups": list(server.groups),
        "IsAdministrator": True,
        "GroupsError": None,
        "WinRM": winrm,
        "WinRMError": None,
    }
