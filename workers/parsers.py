"""Probe data (5.1 JSON, already decoded) -> typed models. Pure functions."""

from __future__ import annotations

from typing import Any

from workers.models import CmsService, CmsStatus, ReplicaHealth, ReplicaStatus, StoreStatus
from workers.ps_json import as_bool, as_datetime, as_list, as_service_state, as_str, as_strings


class ParseError(ValueError):
    pass


def _mapping(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ParseError(f"{what}: expected an object, got {type(value).__name__}")
    return value


def parse_cms_status(data: Any) -> CmsStatus:
    d = _mapping(data, "cms-status")
    store = _mapping(d.get("Store") or {}, "cms-status Store")
    replicas = []
    for row in as_list(d.get("Replicas")):
        row = _mapping(row, "cms-status replica")
        fqdn = as_str(row.get("ReplicaFqdn"))
        if not fqdn:
            continue
        replicas.append(ReplicaStatus(
            fqdn=fqdn,
            up_to_date=as_bool(row.get("UpToDate")),
            last_status_report=as_datetime(row.get("LastStatusReport")),
            last_update_creation=as_datetime(row.get("LastUpdateCreation")),
            product_version=as_str(row.get("ProductVersion")),
        ))
    services = [
        CmsService(
            pool_fqdn=as_str(s.get("PoolFqdn")) or "",
            site_id=as_str(s.get("SiteId")),
            version=as_str(s.get("Version")),
            active=as_bool(s.get("Active")),
        )
        for s in (_mapping(x, "cms-status service") for x in as_list(d.get("Services")))
        if as_str(s.get("PoolFqdn"))
    ]
    collected = as_datetime(d.get("CollectedAt"))
    if collected is None:
        raise ParseError("cms-status: CollectedAt missing")
    return CmsStatus(
        collected_at=collected,
        product_version=as_str(d.get("ProductVersion")),
        replicas=replicas,
        store=StoreStatus(
            active_master_fqdn=as_str(store.get("ActiveMasterFqdn")),
            active_file_transfer_agents=as_strings(store.get("ActiveFileTransferAgents")),
            active_replicas=as_strings(store.get("ActiveReplicas")),
            deleted_replicas=as_strings(store.get("DeletedReplicas")),
        ),
        services=services,
    )


def parse_replica_health(server: str, data: Any) -> ReplicaHealth:
    d = _mapping(data, "replica-health")
    collected = as_datetime(d.get("CollectedAt"))
    if collected is None:
        raise ParseError("replica-health: CollectedAt missing")
    services = _mapping(d.get("Services") or {}, "replica-health Services")
    return ReplicaHealth(
        fqdn=server,
        collected_at=collected,
        product_version=as_str(d.get("ProductVersion")),
        services={name: as_service_state(v) for name, v in services.items()},
    )
