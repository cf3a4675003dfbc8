"""A seeded CloudStack cloud: accounts, resources and the bus records they cause.

A small discrete-event simulation. Every account and every resource is a Python generator
("process") that emits bus records and yields how long to wait (ms) before its next step;
a heap orders the processes by their next step. Records are kept in a second heap by
arrival time and released once no process can still emit an earlier one, so the output is
in publication order while memory stays proportional to the live resources, not to the
length of the run (millions of records stream straight to disk or Kafka).

The true usage is recorded by construction (:mod:`metering.simulate.truth`): a process that
starts a VM says so, next to the record it emits. Nothing here interprets events.

All times are UTC epoch milliseconds on whole seconds (CloudStack's ``eventDateTime`` has
second precision); ``eventDateTime`` is rendered in the management servers' offsets.
"""

from __future__ import annotations

import heapq
import random
import uuid
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NamedTuple

from metering.simulate.truth import Truth

SECOND = 1000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR

Process = Generator[int, None, None]
"""A simulated actor: yields the delay in ms until its next step."""

# Usage type ids (contract section 3), spelled out here so the truth does not borrow the
# metering core's tables.
RUNNING_VM, ALLOCATED_VM, IP_ADDRESS, VOLUME, TEMPLATE, ISO, SNAPSHOT = 1, 2, 3, 6, 7, 8, 9
SECURITY_GROUP, LB, PF, NETWORK_OFFERING, VPN_USERS = 10, 11, 12, 13, 14
VM_SNAPSHOT, VOLUME_SECONDARY, VM_SNAPSHOT_ON_PRIMARY, BACKUP, NETWORK, VPC = (
    25, 26, 27, 28, 30, 31)

VM_CLASS = "com.cloud.vm.VirtualMachine"
VOLUME_CLASS = "com.cloud.storage.Volume"
IP_CLASS = "com.cloud.network.dao.IPAddressVO"
TEMPLATE_CLASS = "com.cloud.template.VirtualMachineTemplate"
SNAPSHOT_CREATE_CLASS = "org.apache.cloudstack.storage.snapshot.SnapshotObject"
SNAPSHOT_DELETE_CLASS = "com.cloud.storage.SnapshotVO"
VMSNAPSHOT_CLASS = "com.cloud.vm.snapshot.VMSnapshot"
LB_CLASS = "com.cloud.network.lb.LoadBalancingRule"
PF_CLASS = "com.cloud.network.rules.PortForwardingRule"
VPN_CLASS = "com.cloud.network.VpnUserVO"
VPC_CLASS = "com.cloud.network.vpc.Vpc"
NETWORK_CLASS = "com.cloud.network.Network"
SG_CLASS = "com.cloud.network.security.SecurityGroup"
IP6_CLASS = "com.googlecode.ipv6.IPv6Address"
PORTABLE_IP_CLASS = "com.cloud.network.portable.PortableIpVO"


@dataclass(frozen=True)
class SimConfig:
    """What to simulate. Times are UTC epoch ms; offsets are minutes east of UTC."""

    seed: int = 1
    accounts: int = 20
    start_ms: int = 1_740_787_200_000  # 2025-03-01T00:00:00Z
    until_ms: int = 1_740_787_200_000 + 2 * DAY
    tz_offsets: tuple[int, ...] = (330,)
    """Management-server time zones; each record comes from one server, chosen at random."""
    malformed: float = 0.001
    """Fraction of extra malformed records (truncated, non-object, missing/impossible date)."""
    zones: int = 3
    domains: int | None = None
    """Child domains under ROOT (default: one per 25 accounts, at least 2)."""


class SimRecord(NamedTuple):
    """One bus record before rendering. ``value`` lacks ``eventDateTime`` (set at render)."""

    arrival_ms: int
    seq: int
    key: str | None
    value: dict[str, Any] | None
    event_ms: int | None
    """Event time (UTC ms) written as ``eventDateTime``; None: the record carries none."""
    category: str
    raw: bytes | None = None
    """Pre-rendered bytes (malformed records)."""
    server: int = 0
    """Index of the management server (its time-zone offset) that published it."""


@dataclass
class Account:
    uuid: str
    name: str
    domain: str
    user: str
    zone: str
    deleting: bool = False
    resources: int = 0


def gone(acct: Account) -> bool:
    """True once the account's deletion has begun (re-read after every yield)."""
    return acct.deleting


@dataclass
class Catalog:
    """Cloud-wide ids: zones, pods, offerings, public templates, the admin."""

    zones: list[str]
    pods: list[str]
    service_offerings: list[str]
    disk_offerings: list[str]
    network_offerings: list[str]
    templates: list[str]
    root_domain: str
    domains: list[str]
    admin_account: str
    admin_user: str
    role: str
    hosts: list[str] = field(default_factory=list)


class Cloud:
    """The simulation: processes, the output heap and the truth.

    Iterate :meth:`records` once; afterwards :attr:`truth` holds the true usage.
    """

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.now = config.start_ms
        self.until = config.until_ms
        self.truth = Truth(config.until_ms)
        self._procs: list[tuple[int, int, Process]] = []
        self._out: list[SimRecord] = []
        self._seq = 0
        self._pseq = 0
        self._servers = len(config.tz_offsets)
        rng = self.rng
        zones = [self.uuid() for _ in range(config.zones)]
        n_domains = config.domains if config.domains is not None else max(2, config.accounts // 25)
        self.catalog = Catalog(
            zones=zones,
            pods=[self.uuid() for _ in zones],
            service_offerings=[self.uuid() for _ in range(5)],
            disk_offerings=[self.uuid() for _ in range(4)],
            network_offerings=[self.uuid() for _ in range(2)],
            templates=[self.uuid() for _ in range(4)],
            root_domain=self.uuid(),
            domains=[self.uuid() for _ in range(n_domains)],
            admin_account=self.uuid(),
            admin_user=self.uuid(),
            role=self.uuid(),
            hosts=[f"host-{i}" for i in range(max(2, config.accounts // 10))],
        )
        self.spawn(self._domains(), config.start_ms)
        for i in range(config.accounts):
            at = config.start_ms + rng.randrange(0, 6 * 3600) * SECOND  # accounts appear early
            self.spawn(self._account(i), at)
        self.spawn(self._noise(), config.start_ms + rng.randrange(60, 600) * SECOND)

    # ------------------------------------------------------------------ engine

    def uuid(self) -> str:
        """A random (seeded) version-4 UUID string."""
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def spawn(self, proc: Process, at: int) -> None:
        """Run ``proc``'s first step at ``at`` (UTC ms)."""
        self._pseq += 1
        heapq.heappush(self._procs, (at, self._pseq, proc))

    def emit(
        self,
        at: int,
        key: str | None,
        value: dict[str, Any],
        category: str,
        event_ms: int | bool | None = True,
        truth: Callable[[], None] | None = None,
    ) -> bool:
        """Publish ``value`` at ``at``; ``truth`` runs only if the record is inside the horizon.

        ``event_ms`` True means "the event time is the arrival time"; None: no timestamp.
        """
        if at >= self.until:
            return False
        self._seq += 1
        ev = at if event_ms is True else (None if event_ms is False else event_ms)
        server = self.rng.randrange(self._servers) if self._servers > 1 else 0
        heapq.heappush(self._out, SimRecord(at, self._seq, key, value, ev, category, None, server))
        if truth is not None:
            truth()
        return True

    def records(self) -> Iterator[SimRecord]:
        """Every record in publication order (arrival time, then emission order)."""
        procs, out = self._procs, self._out
        while procs:
            at, _, proc = heapq.heappop(procs)
            if at >= self.until:
                break
            while out and out[0].arrival_ms < at:
                yield heapq.heappop(out)
            self.now = at
            try:
                delay = next(proc)
            except StopIteration:
                continue
            self._pseq += 1
            heapq.heappush(procs, (at + max(SECOND, delay), self._pseq, proc))
        while out:
            yield heapq.heappop(out)
        self.truth.finish()

    # ------------------------------------------------------------------ random helpers

    def secs(self, mean_s: float, low_s: float = 1.0) -> int:
        """An exponential duration in whole seconds (ms), at least ``low_s``."""
        return int(max(low_s, self.rng.expovariate(1.0 / mean_s))) * SECOND

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    # ------------------------------------------------------------------ record builders

    def usage(self, at: int, acct: Account, event: str, resource: str, rid: str | None,
              zone: str | None, truth: Callable[[], None] | None = None,
              event_ms: int | None = None) -> None:
        """A usage event (six keys; ``zone``/``id`` omitted when None). Key = ``id``."""
        value = {"account": acct.uuid, "zone": zone, "event": event, "resource": resource,
                 "id": rid}
        self.emit(at, rid, value, "usage", True if event_ms is None else event_ms, truth)

    def action(self, at: int, acct: Account, event: str, status: str, entity: str | None,
               entity_id: str | None, description: str, extra: dict[str, str] | None = None,
               owner: str | None = None, user: str | None = None) -> None:
        """An action event. Key = ``entityuuid``."""
        value: dict[str, Any] = {
            "user": user or acct.user, "account": owner or acct.uuid, "event": event,
            "status": status, "entity": entity, "entityuuid": entity_id,
            "description": description,
        }
        if extra:
            value.update(extra)
        self.emit(at, entity_id, value, "action")

    def state(self, at: int, resource: str, rid: str, old: str, new: str) -> None:
        """A resource-state transition: pre and post events (VMs carry ``status``)."""
        for status in ("preStateTransitionEvent", "postStateTransitionEvent"):
            value = {"resource": resource, "id": rid, "old-state": old, "new-state": new,
                     "status": status if resource == "VirtualMachine" else None}
            self.emit(at, rid, value, "resource_state")

    def job(self, at: int, acct: Account, command: str, event_type: str, instance_type: str,
            instance: str, status: str, result: dict[str, Any] | None = None,
            job_id: str | None = None) -> str:
        """An async-job event (no timestamp, nested maps). Key = ``instanceUuid``."""
        jid = job_id or self.uuid()
        code = "530" if status == "FAILED" else "0"
        value: dict[str, Any] = {
            "command": f"org.apache.cloudstack.api.command.user.{command}",
            "user": acct.user, "account": acct.uuid, "processStatus": "0", "resultCode": code,
            "instanceUuid": instance, "instanceType": instance_type,
            "commandEventType": event_type, "jobId": jid, "jobResult": result,
            "cmdInfo": {"id": instance, "cmdEventType": event_type, "response": "json",
                        "ctxDetails": {"interface com.cloud.vm.VirtualMachine": instance},
                        "userdata": "I2Nsb3VkLWNvbmZpZwpob3N0bmFtZTogd2Vi" + "=="
                        if command == "vm.DeployVMCmd" else None},
            "status": status,
        }
        self.emit(at, instance, value, "async_job", event_ms=False)
        return jid

    def async_op(self, at: int, acct: Account, event: str, command: str, entity: str,
                 entity_id: str, what: str, extra: dict[str, str] | None = None,
                 fail: bool = False) -> int:
        """Scheduled + submit, Started, then (caller's usage at ``at+2s``), Completed + complete.

        Returns the time of the Completed event (usage goes at ``at + 2 s``).
        """
        self.action(at, acct, event, "Scheduled", entity, entity_id, f"{what}: {entity_id}")
        jid = self.job(at, acct, command, event, entity, entity_id, "IN_PROGRESS")
        self.action(at + SECOND, acct, event, "Started", entity, entity_id,
                    f"Starting job for {what}. {entity} Id: {entity_id}")
        done = at + 4 * SECOND
        if fail:
            self.action(done, acct, event, "Completed", entity, entity_id,
                        f"Error while {what}. {entity} Id: {entity_id}", extra)
            self.job(done, acct, command, event, entity, entity_id, "FAILED",
                     {"errorcode": 530, "errortext": f"Unable to complete {what}",
                      "class": "org.apache.cloudstack.api.response.ExceptionResponse",
                      "object": "errorresponse"}, job_id=jid)
        else:
            self.action(done, acct, event, "Completed", entity, entity_id,
                        f"Successfully completed {what}. {entity} Id: {entity_id}", extra)
            self.job(done, acct, command, event, entity, entity_id, "SUCCEEDED",
                     {"id": entity_id, "class": f"org.apache.cloudstack.api.response."
                      f"{entity}Response", "object": entity.lower()}, job_id=jid)
        return done

    # ------------------------------------------------------------------ cloud-wide processes

    def _domains(self) -> Process:
        cat = self.catalog
        admin = Account(cat.admin_account, "admin", cat.root_domain, cat.admin_user,
                        cat.zones[0])
        for i, domain in enumerate(cat.domains):
            self.action(self.now + i * SECOND, admin, "DOMAIN.CREATE", "Completed", "Domain",
                        domain, f"Successfully completed creating Domain. Domain Name: d{i}",
                        {"Domain": domain})
        yield 0

    def _noise(self) -> Process:
        """Alerts (null key), logins, a Contrail-style record: never metered."""
        cat = self.catalog
        rng = self.rng
        mean_gap_s = max(10.0, 86400 / max(1, self.config.accounts))  # ~1/account/day
        while True:
            roll = rng.random()
            zi = rng.randrange(len(cat.zones))
            if roll < 0.45:
                host = rng.choice(cat.hosts)
                self.emit(self.now, None, {
                    "event": "ALERT.STORAGE.ALLOCATED", "dataCenterId": cat.zones[zi],
                    "podId": cat.pods[zi],
                    "subject": f"System Alert: Low Available Storage in cluster c{zi} on {host}",
                    "body": f"Available storage space is low, used > {rng.randrange(80, 99)}%",
                }, "alert")
            elif roll < 0.6:
                self.emit(self.now, None, {
                    "event": "ALERT.MANAGEMENT",
                    "subject": f"Management server node 10.0.0.{rng.randrange(2, 9)} is up",
                    "body": ""}, "alert")
            elif roll < 0.62:
                # Juniper Contrail variant: {event, status, details}, no timestamp, null key
                self.emit(self.now, None, {"event": "VM.CREATE", "status": "Completed",
                                           "details": "contrail vm created"}, "unknown",
                          event_ms=False)
            else:
                admin = Account(cat.admin_account, "admin", cat.root_domain, cat.admin_user,
                                cat.zones[0])
                self.action(self.now, admin, "USER.LOGIN", "Completed", "User",
                            cat.admin_user,
                            f"user has logged in from IP Address 10.1.1.{rng.randrange(2, 250)}")
            yield self.secs(mean_gap_s)

    # ------------------------------------------------------------------ accounts

    def _account(self, index: int) -> Process:
        rng = self.rng
        cat = self.catalog
        acct = Account(self.uuid(), f"acct{index}", rng.choice(cat.domains), self.uuid(),
                       rng.choice(cat.zones))
        name = f"{acct.name}-o'brien" if index % 7 == 3 else acct.name
        admin = Account(cat.admin_account, "admin", cat.root_domain, cat.admin_user,
                        cat.zones[0])
        self.action(
            self.now, admin, "ACCOUNT.CREATE", "Completed", "Account", acct.uuid,
            f"Successfully completed creating Account. Account Name: {name}, Domain Id:{index}",
            {"Account": acct.uuid, "Domain": acct.domain, "User": acct.user,
             "Role": cat.role})
        self.truth.accounts[acct.uuid] = {"domain_id": acct.domain, "deleted_at_ms": None}
        horizon = max(SECOND, self.until - self.now)

        def later(frac: float = 0.8) -> int:
            return self.now + SECOND + rng.randrange(0, max(1, int(horizon * frac) // SECOND)) \
                * SECOND

        plan: list[tuple[Callable[[Account], Process], int]] = [
            (self._vm, rng.randint(1, 3)),
            (self._data_volume, rng.randint(0, 2)),
            (self._ip, rng.randint(1, 2)),
            (self._network, 1),
            (self._template, 1 if self.chance(0.35) else 0),
            (self._iso, 1 if self.chance(0.25) else 0),
            (self._lb_rule, 1 if self.chance(0.3) else 0),
            (self._pf_rule, 1 if self.chance(0.4) else 0),
            (self._vpn_user, 1 if self.chance(0.25) else 0),
            (self._vpc, 1 if self.chance(0.2) else 0),
            (self._security_group, 1 if self.chance(0.2) else 0),
        ]
        for make, count in plan:
            for _ in range(count):
                self.spawn(self.alive(acct, make), later())
        if index == 0:  # every quirk, in every run (long enough): see _showcase
            self.spawn(self._showcase(acct), self.now + 10 * MINUTE)
        elif index == 1:  # a failed, then a successful deletion with resources open
            self.spawn(self._account_delete(acct, fail=True), self.now + 2 * HOUR)
            self.spawn(self._account_delete(acct, fail=False), self.now + 3 * HOUR)
            return
        if self.chance(0.04):
            self.spawn(self._account_delete(acct, fail=True), later(0.9))
        if self.chance(0.06):
            self.spawn(self._account_delete(acct, fail=False), later(0.95))
        yield 0

    @staticmethod
    def alive(acct: Account, make: Callable[[Account], Process]) -> Process:
        """Run ``make(acct)`` when its time comes, unless the account is being deleted."""
        if acct.deleting:
            return
        yield from make(acct)

    def _account_delete(self, acct: Account, fail: bool) -> Process:
        """``ACCOUNT.DELETE`` by the admin: Scheduled, Started, Completed (or failed).

        From Scheduled on, the account's processes stop (CloudStack publishes no usage events
        for a removed account); the truth closes everything at the Completed event's time.
        """
        if acct.deleting:
            return
        cat = self.catalog
        admin = Account(cat.admin_account, "admin", cat.root_domain, cat.admin_user,
                        cat.zones[0])
        t = self.now
        if not fail:
            acct.deleting = True
        extra = {"Account": acct.uuid}
        self.action(t, admin, "ACCOUNT.DELETE", "Scheduled", "Account", acct.uuid,
                    f"deleting account. Account Id: {acct.uuid}", extra)
        self.action(t + SECOND, admin, "ACCOUNT.DELETE", "Started", "Account", acct.uuid,
                    f"Starting job for deleting account. Account Id: {acct.uuid}", extra)
        done = t + self.secs(40, 25)
        if fail:
            self.action(done, admin, "ACCOUNT.DELETE", "Completed", "Account", acct.uuid,
                        "Error while deleting account", extra)
            return
        uid = acct.uuid

        def deleted() -> None:
            self.truth.close_account(uid, done)
            self.truth.accounts[uid]["deleted_at_ms"] = done

        self.emit(done, acct.uuid, {
            "user": admin.user, "account": admin.uuid, "event": "ACCOUNT.DELETE",
            "status": "Completed", "entity": "Account", "entityuuid": acct.uuid,
            "description": f"Successfully completed deleting account. Account Id: {uid}",
            "Account": uid}, "action", truth=deleted)
        yield 0

    def _showcase(self, acct: Account) -> Process:
        """A scripted tour of CloudStack's quirks, so that every run contains each of them.

        Within about two hours of simulated time: an HA restart (VM.START while running), a
        failed stop, a duplicated VM.STOP, an upgrade while stopped, a stop from a management
        server whose clock is behind (close before open), a destroy while running, a
        template in two zones copied to a third and deleted per zone then without zone, an
        orphan close, ignored usage types, a VPN user without zone, an upload that becomes a
        volume and a failed deploy.
        """
        tr, cat, a = self.truth, self.catalog, acct.uuid
        vm, zone, zones = self.uuid(), acct.zone, cat.zones
        t = self.now
        self.action(t, acct, "VM.CREATE", "Completed", "VirtualMachine", None,
                    "Error while creating entity for deploying Vm")
        self.action(t + SECOND, acct, "VM.CREATE", "Created", "VirtualMachine", vm,
                    f"Successfully created entity for deploying Vm. Vm Id: {vm}",
                    {"ServiceOffering": cat.service_offerings[1], "DataCenter": zone,
                     "VirtualMachineTemplate": cat.templates[0], "VirtualMachine": vm})
        self.usage(t + 2 * SECOND, acct, "VM.CREATE", VM_CLASS, vm, zone,
                   lambda: tr.open(a, ALLOCATED_VM, vm, zone, t + 2 * SECOND))
        self._vm_start_records(t + 3 * SECOND, acct, vm, zone, 2, scheduled=True)
        yield 10 * MINUTE
        t = self.now  # HA restart: VM.START again while running
        self.usage(t, acct, "VM.START", VM_CLASS, vm, zone,
                   lambda: tr.open(a, RUNNING_VM, vm, zone, t))
        yield 5 * MINUTE
        self.async_op(self.now, acct, "VM.STOP", "vm.StopVMCmd", "VirtualMachine", vm,
                      "stopping Vm", fail=True)
        yield 5 * MINUTE
        t = self.now
        self._vm_stop_records(t, acct, vm, zone, 2)
        self.usage(t + 2 * SECOND, acct, "VM.STOP", VM_CLASS, vm, zone)  # duplicated close
        yield 5 * MINUTE
        t = self.now
        self.action(t, acct, "VM.UPGRADE", "Completed", "VirtualMachine", vm,
                    f"Successfully completed upgrading Vm. Vm Id: {vm}",
                    {"ServiceOffering": cat.service_offerings[2], "VirtualMachine": vm})
        self.usage(t + SECOND, acct, "VM.UPGRADE", VM_CLASS, vm, zone)
        yield 5 * MINUTE
        t = self.now
        self._vm_start_records(t, acct, vm, zone, 1, scheduled=True)
        skew = t  # a server 3 s behind stops it: the close is earlier than the open
        self.usage(t + 6 * SECOND, acct, "VM.STOP", VM_CLASS, vm, zone,
                   lambda: tr.close(a, RUNNING_VM, vm, zone, skew), event_ms=skew)
        self.usage(t + 6 * SECOND, acct, "NETWORK.OFFERING.REMOVE", VM_CLASS, vm, zone,
                   lambda: tr.close(a, NETWORK_OFFERING, vm, zone, skew), event_ms=skew)
        yield 5 * MINUTE
        t = self.now
        self._vm_start_records(t, acct, vm, zone, 1, scheduled=True)
        yield 20 * MINUTE
        t = self.now  # destroy without a preceding stop

        def destroyed(at: int = t + 2 * SECOND) -> None:
            for ut in (RUNNING_VM, ALLOCATED_VM, NETWORK_OFFERING):
                tr.close(a, ut, vm, zone, at)

        self.async_op(t, acct, "VM.DESTROY", "vm.DestroyVMCmd", "VirtualMachine", vm,
                      "destroying Vm")
        self.usage(t + 2 * SECOND, acct, "VM.DESTROY", VM_CLASS, vm, zone, destroyed)
        # a template in two zones, copied to a third, deleted in one, then everywhere
        tpl = self.uuid()
        t = self.now + 10 * SECOND
        for z in zones[:2]:
            self.usage(t, acct, "TEMPLATE.CREATE", TEMPLATE_CLASS, tpl, z,
                       partial(tr.open, a, TEMPLATE, tpl, z, t))
        yield 10 * MINUTE
        t = self.now
        self.usage(t, acct, "TEMPLATE.COPY", TEMPLATE_CLASS, tpl, zones[-1],
                   lambda: tr.open(a, TEMPLATE, tpl, zones[-1], t))
        yield 10 * MINUTE
        t = self.now
        self.usage(t, acct, "TEMPLATE.DELETE", TEMPLATE_CLASS, tpl, zones[0],
                   lambda: tr.close(a, TEMPLATE, tpl, zones[0], t))
        yield 10 * MINUTE
        t = self.now
        self.usage(t, acct, "TEMPLATE.DELETE", TEMPLATE_CLASS, tpl, None,
                   lambda: tr.close_all_zones(a, TEMPLATE, tpl, t))
        # orphan close, ignored types, a VPN user without zone, an ISO
        self.usage(t + SECOND, acct, "NET.IPRELEASE", IP_CLASS, self.uuid(), zone)
        self.usage(t + SECOND, acct, "NET.IP6ASSIGN", IP6_CLASS, None, zone)
        self.usage(t + SECOND, acct, "PORTABLE.IPASSIGN", PORTABLE_IP_CLASS, self.uuid(), zone)
        self.usage(t + SECOND, acct, "SNAPSHOT.COPY", SNAPSHOT_DELETE_CLASS, self.uuid(), zone)
        self.emit(t + SECOND, None, {"event": "VM.CREATE", "status": "Completed",
                                     "details": "contrail vm created"}, "unknown",
                  event_ms=False)  # Juniper Contrail variant: no user, no account
        self.spawn(self._vpn_user(acct), t + 2 * SECOND)
        self.spawn(self._iso(acct), t + 3 * SECOND)
        # an upload that becomes a volume, resized, then deleted twice
        vol = self.uuid()
        self.usage(t + 4 * SECOND, acct, "VOLUME.UPLOAD", VOLUME_CLASS, vol, zone,
                   lambda: tr.open(a, VOLUME_SECONDARY, vol, zone, t + 4 * SECOND))
        yield 10 * MINUTE
        t = self.now

        def created(at: int = t) -> None:
            tr.close(a, VOLUME_SECONDARY, vol, zone, at)
            tr.open(a, VOLUME, vol, zone, at)

        self.usage(t, acct, "VOLUME.CREATE", VOLUME_CLASS, vol, zone, created)
        self.usage(t + MINUTE, acct, "VOLUME.RESIZE", VOLUME_CLASS, vol, zone)
        yield 10 * MINUTE
        t = self.now
        for _ in range(2):
            self.usage(t, acct, "VOLUME.DELETE", VOLUME_CLASS, vol, zone,
                       lambda: tr.close(a, VOLUME, vol, zone, t))

    # ------------------------------------------------------------------ VMs

    def _vm(self, acct: Account) -> Process:  # a VM's whole life, step by step
        rng, tr, cat = self.rng, self.truth, self.catalog
        vm, root = self.uuid(), self.uuid()
        zone = acct.zone if self.chance(0.8) else rng.choice(cat.zones)
        offering = rng.choice(cat.service_offerings)
        template = rng.choice(cat.templates)
        nics = rng.choice((1, 1, 2))
        a = acct.uuid
        running = False
        backup = False
        vmsnaps: list[tuple[str, bool]] = []

        # deploy: Scheduled, Created (first-class entities), usage, Completed
        t = self.now
        self.action(t, acct, "VM.CREATE", "Scheduled", "VirtualMachine", vm,
                    f"deploying Vm. Vm Id: {vm}")
        jid = self.job(t, acct, "vm.DeployVMCmd", "VM.CREATE", "VirtualMachine", vm,
                       "IN_PROGRESS")
        self.action(t + SECOND, acct, "VM.CREATE", "Created", "VirtualMachine", vm,
                    f"Successfully created entity for deploying Vm. Vm Id: {vm}",
                    {"ServiceOffering": offering, "VirtualMachineTemplate": template,
                     "DataCenter": zone, "VirtualMachine": vm})
        self.usage(t + 2 * SECOND, acct, "VM.CREATE", VM_CLASS, vm, zone,
                   lambda: tr.open(a, ALLOCATED_VM, vm, zone, t + 2 * SECOND))
        self.state(t + 2 * SECOND, "Volume", root, "Allocated", "Ready")
        self.usage(t + 2 * SECOND, acct, "VOLUME.CREATE", VOLUME_CLASS, root, zone,
                   lambda: tr.open(a, VOLUME, root, zone, t + 2 * SECOND))
        start_now = self.chance(0.9)
        if start_now:
            self._vm_start_records(t + 3 * SECOND, acct, vm, zone, nics)
            running = True
        self.action(t + 8 * SECOND, acct, "VM.CREATE", "Completed", "VirtualMachine", vm,
                    f"Successfully completed deploying Vm. Vm Id: {vm}")
        self.job(t + 8 * SECOND, acct, "vm.DeployVMCmd", "VM.CREATE", "VirtualMachine", vm,
                 "SUCCEEDED", {"id": vm, "state": "Running" if running else "Stopped",
                               "class": "org.apache.cloudstack.api.response.UserVmResponse",
                               "object": "virtualmachine"}, job_id=jid)
        if running and self.chance(0.01):
            # clock skew: a second management server, 3 s behind, stops the VM right away
            skew = t + 3 * SECOND + 2 * SECOND - 3 * SECOND
            self.usage(t + 9 * SECOND, acct, "VM.STOP", VM_CLASS, vm, zone,
                       lambda: tr.close(a, RUNNING_VM, vm, zone, skew), event_ms=skew)
            for _ in range(nics):
                self.usage(t + 9 * SECOND, acct, "NETWORK.OFFERING.REMOVE", VM_CLASS, vm, zone,
                           lambda: tr.close(a, NETWORK_OFFERING, vm, zone, skew),
                           event_ms=skew)
            running = False
        yield 12 * SECOND
        lifetime_end = self.now + self.secs(10 * 86400, 3600)
        while not acct.deleting:
            t = self.now
            if t >= lifetime_end or self.chance(0.02):
                break
            if running:
                roll = rng.random()
                if roll < 0.08:  # HA restart: VM.START again while running
                    self.emit(t, None, {
                        "event": "ALERT.USERVM", "dataCenterId": zone,
                        "podId": cat.pods[cat.zones.index(zone)],
                        "subject": f"VM (name: {acct.name}-vm, id: {vm[:8]}) stopped "
                                   f"unexpectedly on host {rng.choice(cat.hosts)}",
                        "body": "Virtual Machine was restarted by HA"}, "alert")
                    self.state(t + SECOND, "VirtualMachine", vm, "Starting", "Running")
                    self.usage(t + 2 * SECOND, acct, "VM.START", VM_CLASS, vm, zone,
                               partial(tr.open, a, RUNNING_VM, vm, zone, t + 2 * SECOND))
                elif roll < 0.12:  # a failed stop: no usage
                    self.async_op(t, acct, "VM.STOP", "vm.StopVMCmd", "VirtualMachine", vm,
                                  "stopping Vm", fail=True)
                elif roll < 0.15:  # dynamic scale: splits RUNNING_VM and ALLOCATED_VM
                    offering = rng.choice(cat.service_offerings)
                    self.action(t, acct, "VM.DYNAMIC.SCALE", "Completed", "VirtualMachine", vm,
                                f"Successfully completed scaling Vm. Vm Id: {vm}",
                                {"ServiceOffering": offering, "VirtualMachine": vm})
                    self.usage(t + SECOND, acct, "VM.DYNAMIC.SCALE", VM_CLASS, vm, zone)
                elif roll < 0.2 and not vmsnaps:
                    vmsnaps.append(self._vmsnapshot_create(t, acct, vm, zone))
                elif roll < 0.24 and vmsnaps:
                    self._vmsnapshot_delete(t, acct, vm, zone, *vmsnaps.pop())
                elif roll < 0.27 and not backup:
                    self.usage(t, acct, "BACKUP.OFFERING.ASSIGN", "Backup", vm, zone,
                               partial(tr.open, a, BACKUP, vm, zone, t))
                    backup = True
                elif roll < 0.3 and backup:
                    self.usage(t, acct, "BACKUP.USAGE.METRIC", "Backup", vm, zone)
                else:
                    self._vm_stop_records(t, acct, vm, zone, nics)
                    running = False
                    yield 10 * SECOND + self.secs(7 * 3600, 60)
                    continue
                yield 10 * SECOND + self.secs(12 * 3600, 60)
            else:
                if self.chance(0.2):  # offering upgrade while stopped: splits ALLOCATED_VM
                    offering = rng.choice(cat.service_offerings)
                    self.action(t, acct, "VM.UPGRADE", "Completed", "VirtualMachine", vm,
                                f"Successfully completed upgrading Vm. Vm Id: {vm}",
                                {"ServiceOffering": offering, "VirtualMachine": vm})
                    self.usage(t + SECOND, acct, "VM.UPGRADE", VM_CLASS, vm, zone)
                    yield 5 * SECOND
                    t = self.now
                    if gone(acct):
                        break
                self._vm_start_records(t, acct, vm, zone, nics, scheduled=True)
                running = True
                yield 10 * SECOND + self.secs(20 * 3600, 60)
        if acct.deleting:
            return
        # destroy, with (60 %) or without a preceding stop
        t = self.now
        if running and self.chance(0.6):
            self._vm_stop_records(t, acct, vm, zone, nics)
            running = False
            yield 10 * SECOND
            t = self.now
            if gone(acct):
                return
        if backup:
            self.usage(t, acct, "BACKUP.OFFERING.BACKUPS.DEL", "Backup", vm, zone,
                       lambda: tr.close(a, BACKUP, vm, zone, t))
        for snap in vmsnaps:
            self._vmsnapshot_delete(t, acct, vm, zone, *snap)
        self.async_op(t, acct, "VM.DESTROY", "vm.DestroyVMCmd", "VirtualMachine", vm,
                      "destroying Vm")
        self.state(t + 2 * SECOND, "VirtualMachine", vm, "Running" if running else "Stopped",
                   "Destroyed")

        def destroyed(at: int = t + 2 * SECOND) -> None:
            for ut in (RUNNING_VM, ALLOCATED_VM, NETWORK_OFFERING):
                tr.close(a, ut, vm, zone, at)

        self.usage(t + 2 * SECOND, acct, "VM.DESTROY", VM_CLASS, vm, zone, destroyed)
        self.usage(t + 3 * SECOND, acct, "VOLUME.DELETE", VOLUME_CLASS, root, zone,
                   lambda: tr.close(a, VOLUME, root, zone, t + 3 * SECOND))

    def _vm_start_records(self, t: int, acct: Account, vm: str, zone: str, nics: int,
                          scheduled: bool = False) -> None:
        tr, a = self.truth, acct.uuid
        if scheduled:
            self.action(t, acct, "VM.START", "Scheduled", "VirtualMachine", vm,
                        f"starting user vm: {vm}", {"VirtualMachine": vm})
            self.action(t + SECOND, acct, "VM.START", "Started", "VirtualMachine", vm,
                        f"Starting job for starting Vm. Vm Id: {vm}", {"VirtualMachine": vm})
        self.state(t + SECOND, "VirtualMachine", vm, "Stopped", "Starting")
        for _ in range(nics):  # one per NIC, identical on the bus
            self.usage(t + 2 * SECOND, acct, "NETWORK.OFFERING.ASSIGN", VM_CLASS, vm, zone,
                       lambda: tr.open(a, NETWORK_OFFERING, vm, zone, t + 2 * SECOND))
        self.usage(t + 3 * SECOND, acct, "VM.START", VM_CLASS, vm, zone,
                   lambda: tr.open(a, RUNNING_VM, vm, zone, t + 3 * SECOND))
        self.state(t + 3 * SECOND, "VirtualMachine", vm, "Starting", "Running")
        if scheduled:
            self.action(t + 4 * SECOND, acct, "VM.START", "Completed", "VirtualMachine", vm,
                        f"Successfully completed starting Vm. Vm Id: {vm}",
                        {"VirtualMachine": vm})

    def _vm_stop_records(self, t: int, acct: Account, vm: str, zone: str, nics: int) -> None:
        tr, a = self.truth, acct.uuid
        self.action(t, acct, "VM.STOP", "Scheduled", "VirtualMachine", vm,
                    f"stopping user vm: {vm}", {"VirtualMachine": vm})
        jid = self.job(t, acct, "vm.StopVMCmd", "VM.STOP", "VirtualMachine", vm,
                       "IN_PROGRESS")
        self.action(t + SECOND, acct, "VM.STOP", "Started", "VirtualMachine", vm,
                    f"Starting job for stopping Vm. Vm Id: {vm}", {"VirtualMachine": vm})
        self.state(t + SECOND, "VirtualMachine", vm, "Running", "Stopping")
        stop_at = t + 2 * SECOND
        copies = 2 if self.chance(0.03) else 1  # a duplicated close
        for _ in range(copies):
            self.usage(stop_at, acct, "VM.STOP", VM_CLASS, vm, zone,
                       lambda: tr.close(a, RUNNING_VM, vm, zone, stop_at))
        for _ in range(nics):
            self.usage(stop_at, acct, "NETWORK.OFFERING.REMOVE", VM_CLASS, vm, zone,
                       lambda: tr.close(a, NETWORK_OFFERING, vm, zone, stop_at))
        self.state(stop_at, "VirtualMachine", vm, "Stopping", "Stopped")
        self.action(t + 3 * SECOND, acct, "VM.STOP", "Completed", "VirtualMachine", vm,
                    f"Successfully completed stopping Vm. Vm Id: {vm}", {"VirtualMachine": vm})
        self.job(t + 3 * SECOND, acct, "vm.StopVMCmd", "VM.STOP", "VirtualMachine", vm,
                 "SUCCEEDED", {"id": vm, "state": "Stopped",
                               "class": "org.apache.cloudstack.api.response.UserVmResponse",
                               "object": "virtualmachine"}, job_id=jid)

    def _vmsnapshot_create(self, t: int, acct: Account, vm: str, zone: str) -> tuple[str, bool]:
        tr, a = self.truth, acct.uuid
        vs = self.uuid()
        # VM-snapshot actions are re-attributed to the parent VM
        self.action(t, acct, "VMSNAPSHOT.CREATE", "Completed", "VirtualMachine", vm,
                    f"Successfully completed creating vm snapshot. Vm Id: {vm}",
                    {"VMSnapshot": vs, "VirtualMachine": vm})
        for _ in range(self.rng.randint(1, 2)):  # one per volume, identical on the bus
            self.usage(t + SECOND, acct, "VMSNAPSHOT.CREATE", VMSNAPSHOT_CLASS, vs, zone,
                       lambda: tr.open(a, VM_SNAPSHOT, vs, zone, t + SECOND))
        on_primary = self.chance(0.5)
        if on_primary:
            self.usage(t + SECOND, acct, "VMSNAPSHOT.ON_PRIMARY", VMSNAPSHOT_CLASS, vs, zone,
                       lambda: tr.open(a, VM_SNAPSHOT_ON_PRIMARY, vs, zone, t + SECOND))
        return vs, on_primary

    def _vmsnapshot_delete(self, t: int, acct: Account, vm: str, zone: str, vs: str,
                           on_primary: bool) -> None:
        tr, a = self.truth, acct.uuid
        self.usage(t, acct, "VMSNAPSHOT.DELETE", VMSNAPSHOT_CLASS, vs, zone,
                   lambda: tr.close(a, VM_SNAPSHOT, vs, zone, t))
        if on_primary:
            self.usage(t, acct, "VMSNAPSHOT.OFF_PRIMARY", VMSNAPSHOT_CLASS, vs, zone,
                       lambda: tr.close(a, VM_SNAPSHOT_ON_PRIMARY, vs, zone, t))

    # ------------------------------------------------------------------ storage

    def _data_volume(self, acct: Account) -> Process:
        rng, tr, cat = self.rng, self.truth, self.catalog
        vol, zone, a = self.uuid(), acct.zone, acct.uuid
        offering = rng.choice(cat.disk_offerings)
        t = self.now
        if self.chance(0.15):  # uploaded first: secondary storage until it is created
            self.usage(t, acct, "VOLUME.UPLOAD", VOLUME_CLASS, vol, zone,
                       lambda: tr.open(a, VOLUME_SECONDARY, vol, zone, t))
            yield self.secs(3 * 3600, 60)
            if acct.deleting:
                return
            t = self.now
        self.action(t, acct, "VOLUME.CREATE", "Created", "Volume", vol,
                    f"Successfully created entity for creating volume. Volume Id: {vol}",
                    {"DiskOffering": offering, "Volume": vol, "DataCenter": zone})
        self.state(t + SECOND, "Volume", vol, "Allocated", "Ready")

        def created(at: int = t + SECOND) -> None:
            tr.close(a, VOLUME_SECONDARY, vol, zone, at)
            tr.open(a, VOLUME, vol, zone, at)

        self.usage(t + SECOND, acct, "VOLUME.CREATE", VOLUME_CLASS, vol, zone, created)
        yield 5 * SECOND
        end = self.now + self.secs(12 * 86400, 3600)
        while not acct.deleting and self.now < end:
            t = self.now
            roll = rng.random()
            if roll < 0.25:
                offering = rng.choice(cat.disk_offerings)
                self.async_op(t, acct, "VOLUME.RESIZE", "volume.ResizeVolumeCmd", "Volume",
                              vol, "resizing volume", {"DiskOffering": offering})
                self.usage(t + 2 * SECOND, acct, "VOLUME.RESIZE", VOLUME_CLASS, vol, zone)
            elif roll < 0.55:
                self.spawn(self.alive(acct, lambda acc: self._snapshot(acc, vol)), t + SECOND)
            elif roll < 0.6:
                self.usage(t, acct, "VOLUME.DETACH", VOLUME_CLASS, vol, zone)  # ignored type
            elif roll < 0.65:  # a failed delete: no usage
                self.async_op(t, acct, "VOLUME.DELETE", "volume.DeleteVolumeCmd", "Volume",
                              vol, "deleting volume", fail=True)
            yield self.secs(2 * 86400, 600)
        if acct.deleting or not self.chance(0.7):
            return
        t = self.now
        self.state(t, "Volume", vol, "Ready", "Destroy")
        for _ in range(2 if self.chance(0.05) else 1):  # sometimes a duplicated close

            def deleted(at: int = t + SECOND) -> None:
                tr.close(a, VOLUME, vol, zone, at)
                tr.close(a, VOLUME_SECONDARY, vol, zone, at)

            self.usage(t + SECOND, acct, "VOLUME.DELETE", VOLUME_CLASS, vol, zone, deleted)
        self.action(t + 2 * SECOND, acct, "VOLUME.DELETE", "Completed", "Volume", vol,
                    f"Successfully completed deleting volume. Volume Id: {vol}",
                    {"Volume": vol})

    def _snapshot(self, acct: Account, volume: str) -> Process:
        tr, a, zone = self.truth, acct.uuid, acct.zone
        snap = self.uuid()
        t = self.now
        self.state(t, "Snapshot", snap, "BackingUp", "BackedUp")
        self.usage(t + SECOND, acct, "SNAPSHOT.CREATE", SNAPSHOT_CREATE_CLASS, snap, zone,
                   lambda: tr.open(a, SNAPSHOT, snap, zone, t + SECOND))
        self.action(t + SECOND, acct, "SNAPSHOT.CREATE", "Completed", "Snapshot", snap,
                    f"Successfully completed creating snapshot for volume {volume}",
                    {"Snapshot": snap, "Volume": volume})
        if self.chance(0.2):  # copy to another zone: an ignored usage type
            self.usage(t + 2 * SECOND, acct, "SNAPSHOT.COPY", SNAPSHOT_DELETE_CLASS, snap,
                       self.rng.choice(self.catalog.zones))
        yield self.secs(4 * 86400, 600)
        if acct.deleting or not self.chance(0.7):
            return
        t = self.now
        self.usage(t, acct, "SNAPSHOT.DELETE", SNAPSHOT_DELETE_CLASS, snap, zone,
                   lambda: tr.close(a, SNAPSHOT, snap, zone, t))

    def _per_zone_image(self, acct: Account, kind: str, usage_type: int) -> Process:
        """A template or ISO: registered in some zones (one event per zone), copied, deleted
        per zone or everywhere at once (a delete without ``zone``)."""
        rng, tr, cat = self.rng, self.truth, self.catalog
        image, a = self.uuid(), acct.uuid
        zones = rng.sample(cat.zones, rng.randint(1, min(2, len(cat.zones))))
        t = self.now
        self.action(t, acct, f"{kind}.CREATE", "Completed", kind.title(), image,
                    f"Successfully completed registering {kind.lower()}. Id: {image}",
                    {"VirtualMachineTemplate": image})
        for z in zones:
            self.usage(t + SECOND, acct, f"{kind}.CREATE", TEMPLATE_CLASS, image, z,
                       partial(tr.open, a, usage_type, image, z, t + SECOND))
        yield self.secs(2 * 86400, 600)
        others = [z for z in cat.zones if z not in zones]
        if others and not acct.deleting and self.chance(0.5):
            t = self.now
            z = rng.choice(others)
            zones.append(z)
            self.usage(t, acct, f"{kind}.COPY", TEMPLATE_CLASS, image, z,
                       lambda: tr.open(a, usage_type, image, z, t))
            yield self.secs(2 * 86400, 600)
        if acct.deleting or not self.chance(0.6):
            return
        t = self.now
        if self.chance(0.5):
            self.usage(t, acct, f"{kind}.DELETE", TEMPLATE_CLASS, image, None,
                       lambda: tr.close_all_zones(a, usage_type, image, t))
        else:
            for z in zones:
                self.usage(t, acct, f"{kind}.DELETE", TEMPLATE_CLASS, image, z,
                           partial(tr.close, a, usage_type, image, z, t))

    def _template(self, acct: Account) -> Process:
        return self._per_zone_image(acct, "TEMPLATE", TEMPLATE)

    def _iso(self, acct: Account) -> Process:
        return self._per_zone_image(acct, "ISO", ISO)

    # ------------------------------------------------------------------ network

    def _simple(self, acct: Account, usage_type: int, open_event: str, close_event: str,
                resource: str, mean_life_s: float, zone: str | None, p_close: float = 0.6,
                entity: str = "", rid: str | None = None) -> Process:
        """A resource with one open and one close event (IP, rules, VPN users, VPC, SG)."""
        tr, a = self.truth, acct.uuid
        rid = rid or self.uuid()
        t = self.now
        if entity:
            self.action(t, acct, open_event, "Completed", entity, rid,
                        f"Successfully completed {open_event.lower()}. Id: {rid}",
                        {entity: rid})
        self.usage(t, acct, open_event, resource, rid, zone,
                   lambda: tr.open(a, usage_type, rid, zone, t))
        yield self.secs(mean_life_s, 600)
        if acct.deleting or not self.chance(p_close):
            return
        t = self.now
        self.usage(t, acct, close_event, resource, rid, zone,
                   lambda: tr.close(a, usage_type, rid, zone, t))

    def _ip(self, acct: Account) -> Process:
        t = self.now
        if self.chance(0.1):  # ignored types: portable IPs, IPv6 (no id, null key)
            pip = self.uuid()
            self.usage(t, acct, "PORTABLE.IPASSIGN", PORTABLE_IP_CLASS, pip, acct.zone)
            self.usage(t + SECOND, acct, "NET.IP6ASSIGN", IP6_CLASS, None, acct.zone)
        if self.chance(0.1):
            self.action(t, acct, "NET.IPASSIGN", "Completed", "IpAddress", None,
                        "Error while associating Ip address")
        yield from self._simple(acct, IP_ADDRESS, "NET.IPASSIGN", "NET.IPRELEASE", IP_CLASS,
                                5 * 86400, acct.zone, entity="IpAddress")

    def _lb_rule(self, acct: Account) -> Process:
        return self._simple(acct, LB, "LB.CREATE", "LB.DELETE", LB_CLASS, 4 * 86400,
                            acct.zone, entity="FirewallRule")

    def _pf_rule(self, acct: Account) -> Process:
        return self._simple(acct, PF, "NET.RULEADD", "NET.RULEDELETE", PF_CLASS, 3 * 86400,
                            acct.zone, entity="FirewallRule")

    def _vpn_user(self, acct: Account) -> Process:  # zone id 0: no "zone" key
        return self._simple(acct, VPN_USERS, "VPN.USER.ADD", "VPN.USER.REMOVE", VPN_CLASS,
                            6 * 86400, None)

    def _vpc(self, acct: Account) -> Process:
        return self._simple(acct, VPC, "VPC.CREATE", "VPC.DELETE", VPC_CLASS, 8 * 86400,
                            acct.zone, entity="Vpc")

    def _security_group(self, acct: Account) -> Process:
        return self._simple(acct, SECURITY_GROUP, "SG.ASSIGN", "SG.REMOVE", SG_CLASS,
                            6 * 86400, acct.zone)

    def _network(self, acct: Account) -> Process:
        """``NETWORK.CREATE`` carries the network *state* in ``resource`` (a CloudStack quirk)."""
        tr, a, zone = self.truth, acct.uuid, acct.zone
        net = self.uuid()
        t = self.now
        self.action(t, acct, "NETWORK.CREATE", "Completed", "Network", net,
                    f"Successfully completed creating network. Network Id: {net}",
                    {"Network": net, "DataCenter": zone})
        self.usage(t + SECOND, acct, "NETWORK.CREATE", "Allocated", net, zone,
                   lambda: tr.open(a, NETWORK, net, zone, t + SECOND))
        self.state(t + 2 * SECOND, "Network", net, "Allocated", "Implementing")
        self.state(t + 3 * SECOND, "Network", net, "Implementing", "Implemented")
        yield self.secs(5 * 86400, 3600)
        if not acct.deleting and self.chance(0.3):
            t = self.now
            self.usage(t, acct, "NETWORK.UPDATE", NETWORK_CLASS, net, zone)  # split
            yield self.secs(4 * 86400, 3600)
        if acct.deleting or not self.chance(0.4):
            return
        t = self.now
        self.state(t, "Network", net, "Implemented", "Shutdown")
        self.usage(t + SECOND, acct, "NETWORK.DELETE", NETWORK_CLASS, net, zone,
                   lambda: tr.close(a, NETWORK, net, zone, t + SECOND))
