"""The remediations an operator may start from a button: each kind with its label and the exact
action it takes, as the button, the confirmation dialog, the thread and the audit show them."""

from __future__ import annotations

from enum import Enum


class UnknownRemediation(ValueError):
    pass


class RemediationKind(str, Enum):
    start_replica = "start-replica"
    force_replication = "force-replication"
    reseed = "reseed"

    @classmethod
    def parse(cls, value: str) -> RemediationKind:
        try:
            return cls(value)
        except ValueError:
            raise UnknownRemediation(f"unknown remediation {value!r}") from None

    @property
    def label(self) -> str:
        return _LABELS[self]

    def action(self, target: str) -> str:
        """What it changes, in the words of the cmdlets."""
        return _ACTIONS[self].format(target=target)

    def describe(self, target: str) -> str:
        """The whole run: the change, then the check that shows whether it worked."""
        return _DESCRIPTIONS[self].format(action=self.action(target))


_LABELS = {
    RemediationKind.start_replica: "Start REPLICA",
    RemediationKind.force_replication: "Force replication and re-check",
    RemediationKind.reseed: "Re-seed local store",
}
_ACTIONS = {
    RemediationKind.start_replica: "Start-CsWindowsService -Name REPLICA on {target}",
    RemediationKind.force_replication: "Invoke-CsManagementStoreReplication -ReplicaFqdn {target} on a CMS Front End",
    RemediationKind.reseed: ("Export-CsConfiguration on a CMS Front End, copy the zip to {target}, "
                             "Import-CsConfiguration -LocalStore on {target}"),
}
_DESCRIPTIONS = {
    RemediationKind.start_replica: "{action}, then force replication and re-check",
    RemediationKind.force_replication: "{action}, then re-check",
    RemediationKind.reseed: "{action}, then re-check",
}


def describe(kind: str, target: str) -> str:
    """The exact action of a remediation named by its wire value; unknown kinds are refused."""
    return RemediationKind.parse(kind).describe(target)
