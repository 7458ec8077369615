"""What each probe prints on a simulated server, in Windows PowerShell 5.1's JSON.

Answers are derived from the lab state only, and written the way 5.1's
`ConvertTo-Json -Compress` writes them: dates as "\\/Date(ms)\\/", strings for
values the probe casts with [string], arrays where the probe wraps with @().
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Callable

from lab.deployment import LabServer, LabState, now


class UnknownProbe(LookupError):
    pass


def ms_date(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return f"/Date({int(moment.timestamp() * 1000)})/"


def to_ps51_json(doc: dict[str, Any]) -> str:
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
    # 5.1 escapes the slashes of its date literal.
    return text.replace('"/Date(', '"\\/Date(').replace(')/"', ')\\/"')


def server_version_text(state: LabState) -> str:
    name, build = state.product
    return f"{name} ({build}): Volume license key installed."


Answer = Callable[[LabState, LabServer, dict[str, Any]], dict[str, Any]]
ANSWERS: dict[str, Answer] = {}


def answers(name: str) -> Callable[[Answer], Answer]:
    def register(fn: Answer) -> Answer:
        ANSWERS[name] = fn
        return fn
    return register


def run(state: LabState, server: LabServer, probe: str, version: int, params: dict[str, Any]) -> str:
    if probe not in ANSWERS:
        raise UnknownProbe(probe)
    data = ANSWERS[probe](state, server, params)
    return to_ps51_json({"probe": probe, "version": version, "data": data})


@answers("cms-status")
def _cms_status(state: LabState, server: LabServer, params: dict[str, Any]) -> dict[str, Any]:
    _, build = state.product
    replicas = []
    for s in state.servers.values():
        replicas.append({
            "ReplicaFqdn": s.fqdn,
            "UpToDate": s.up_to_date,
            "LastStatusReport": ms_date(s.last_status_report),
            "LastUpdateCreation": ms_date(state.last_change),
            "ProductVersion": build if s.reports_version and s.last_status_report else "",
        })
    services = [
        {"PoolFqdn": pool, "SiteId": state.sites[pool], "Version": build.split(".")[0], "Active": pool in state.active_pools}
        for pool in ([state.cms_pool] + ([state.pairs[state.cms_pool]] if state.cms_pool in state.pairs else []))
    ]
    return {
        "CollectedAt": ms_date(now()),
        "ProductVersion": server_version_text(state),
        "Replicas": replicas,
        "Store": {
            "ActiveMasterFqdn": state.active_master or "",
            "ActiveFileTransferAgents": list(state.ftas),
            "ActiveReplicas": [s.fqdn for s in state.servers.values()],
            "DeletedReplicas": [],
        },
        "Services": services,
    }


@answers("replica-health")
def _replica_health(state: LabState, server: LabServer, params: dict[str, Any]) -> dict[str, Any]:
    services = {name: server.services.get(name, "Missing") for name in ("REPLICA", "MASTER", "FTA", "LYNCBACKUP")}
    return {"CollectedAt": ms_date(now()), "ProductVersion": server_version_text(state), "Services": services}
