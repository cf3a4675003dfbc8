"""CloudStack usage types and which usage events open, close or split them.

The table is the contract's section 3 (``metering-contract.md``). Every metered usage event
names the resource in its ``id``; the usage type decides which open interval of that
resource the event acts on. TEMPLATE and ISO intervals are also keyed by the event's ``zone``.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Final


class UsageType(IntEnum):
    """CloudStack usage type ids (``org.apache.cloudstack.usage.UsageTypes``) metered here."""

    RUNNING_VM = 1
    ALLOCATED_VM = 2
    IP_ADDRESS = 3
    VOLUME = 6
    TEMPLATE = 7
    ISO = 8
    SNAPSHOT = 9
    SECURITY_GROUP = 10
    LOAD_BALANCER_POLICY = 11
    PORT_FORWARDING_RULE = 12
    NETWORK_OFFERING = 13
    VPN_USERS = 14
    VM_SNAPSHOT = 25
    VOLUME_SECONDARY = 26
    VM_SNAPSHOT_ON_PRIMARY = 27
    BACKUP = 28
    NETWORK = 30
    VPC = 31


OPEN: Final = 1
"""Open an interval; opening what is already open changes nothing (rule 2)."""
CLOSE: Final = 2
"""Close the open interval at the event time; closing what is not open changes nothing."""
SPLIT: Final = 3
"""Close the open interval at the event time and open a new one; opens if nothing is open."""

U = UsageType
TRANSITIONS: Final[dict[str, tuple[tuple[UsageType, int], ...]]] = {
    "VM.START": ((U.RUNNING_VM, OPEN),),
    "VM.STOP": ((U.RUNNING_VM, CLOSE),),
    "VM.DESTROY": ((U.RUNNING_VM, CLOSE), (U.ALLOCATED_VM, CLOSE), (U.NETWORK_OFFERING, CLOSE)),
    "VM.DYNAMIC.SCALE": ((U.RUNNING_VM, SPLIT), (U.ALLOCATED_VM, SPLIT)),
    "VM.CREATE": ((U.ALLOCATED_VM, OPEN),),
    "VM.UPGRADE": ((U.ALLOCATED_VM, SPLIT),),
    "NET.IPASSIGN": ((U.IP_ADDRESS, OPEN),),
    "NET.IPRELEASE": ((U.IP_ADDRESS, CLOSE),),
    "VOLUME.CREATE": ((U.VOLUME, OPEN), (U.VOLUME_SECONDARY, CLOSE)),
    "VOLUME.DELETE": ((U.VOLUME, CLOSE), (U.VOLUME_SECONDARY, CLOSE)),
    "VOLUME.RESIZE": ((U.VOLUME, SPLIT),),
    "VOLUME.UPLOAD": ((U.VOLUME_SECONDARY, OPEN),),
    "TEMPLATE.CREATE": ((U.TEMPLATE, OPEN),),
    "TEMPLATE.COPY": ((U.TEMPLATE, OPEN),),
    "TEMPLATE.DELETE": ((U.TEMPLATE, CLOSE),),
    "ISO.CREATE": ((U.ISO, OPEN),),
    "ISO.COPY": ((U.ISO, OPEN),),
    "ISO.DELETE": ((U.ISO, CLOSE),),
    "SNAPSHOT.CREATE": ((U.SNAPSHOT, OPEN),),
    "SNAPSHOT.DELETE": ((U.SNAPSHOT, CLOSE),),
    "SG.ASSIGN": ((U.SECURITY_GROUP, OPEN),),
    "SG.REMOVE": ((U.SECURITY_GROUP, CLOSE),),
    "LB.CREATE": ((U.LOAD_BALANCER_POLICY, OPEN),),
    "LB.DELETE": ((U.LOAD_BALANCER_POLICY, CLOSE),),
    "NET.RULEADD": ((U.PORT_FORWARDING_RULE, OPEN),),
    "NET.RULEDELETE": ((U.PORT_FORWARDING_RULE, CLOSE),),
    "NETWORK.OFFERING.ASSIGN": ((U.NETWORK_OFFERING, OPEN),),
    "NETWORK.OFFERING.REMOVE": ((U.NETWORK_OFFERING, CLOSE),),
    "VPN.USER.ADD": ((U.VPN_USERS, OPEN),),
    "VPN.USER.REMOVE": ((U.VPN_USERS, CLOSE),),
    "VMSNAPSHOT.CREATE": ((U.VM_SNAPSHOT, OPEN),),
    "VMSNAPSHOT.DELETE": ((U.VM_SNAPSHOT, CLOSE),),
    "VMSNAPSHOT.ON_PRIMARY": ((U.VM_SNAPSHOT_ON_PRIMARY, OPEN),),
    "VMSNAPSHOT.OFF_PRIMARY": ((U.VM_SNAPSHOT_ON_PRIMARY, CLOSE),),
    "BACKUP.OFFERING.ASSIGN": ((U.BACKUP, OPEN),),
    "BACKUP.OFFERING.BACKUPS.DEL": ((U.BACKUP, CLOSE),),
    "NETWORK.CREATE": ((U.NETWORK, OPEN),),
    "NETWORK.DELETE": ((U.NETWORK, CLOSE),),
    "NETWORK.UPDATE": ((U.NETWORK, SPLIT),),
    "VPC.CREATE": ((U.VPC, OPEN),),
    "VPC.DELETE": ((U.VPC, CLOSE),),
}
"""Usage event type -> ((usage type, OPEN | CLOSE | SPLIT), ...), applied in order."""

ZONE_KEYED: Final = frozenset({U.TEMPLATE, U.ISO})
"""Usage types whose interval key includes the event's ``zone`` (one interval per zone)."""

EXPLICITLY_IGNORED: Final = frozenset(
    {
        "NET.IP6ASSIGN",
        "NET.IP6RELEASE",
        "PORTABLE.IPASSIGN",
        "PORTABLE.IPRELEASE",
        "SNAPSHOT.COPY",
        "SNAPSHOT.ON_PRIMARY",
        "SNAPSHOT.OFF_PRIMARY",
        "VOLUME.DETACH",
        "VOLUME.IMPORT",
        "VOLUME.UNMANAGE",
        "BACKUP.USAGE.METRIC",
    }
)
"""Usage event types the contract names as ignored (plus ``GLOBAL.LB.*`` and unknown types)."""

NAMES: Final = {t.value: t.name for t in UsageType}
"""Usage type id -> name, for example ``1 -> "RUNNING_VM"``."""
