"""The capture bundle: a directory that is complete on its own.

    manifest.json      format, versions, cluster, target, points, status
    points/<id>.pcap   one capture per point
    inventory.json     pods, services, endpoint slices, nodes: how IPs become names
    nodes/<node>/      ip, iptables-save, conntrack dumps
    dns/<ns>_<pod>.json  DNS checks run in the pod's network namespace

Every file is created 0600: captures hold payloads. Nothing from a kubeconfig is written.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from ktrace import __version__
from ktrace.bundle.inventory import Inventory
from ktrace.errors import CaptureFileError
from ktrace.model import PointKind

FORMAT = 1
MANIFEST = "manifest.json"
INVENTORY = "inventory.json"


class CaptureStatus(StrEnum):
    COMPLETE = "complete"
    INTERRUPTED = "interrupted"  # cut short: the reason says why
    CAPTURING = "capturing"  # still running, or killed before it could say otherwise


@dataclass(frozen=True)
class PointSpec:
    """A capture point as the bundle's manifest declares it."""

    id: str
    kind: PointKind
    file: str  # relative to the bundle
    node: str | None = None
    namespace: str | None = None
    pod: str | None = None
    interface: str = ""
    ifindex: int | None = None
    linktype: int | None = None
    packets: int | None = None
    kernel_drops: int | None = None
    clock_offset_ns: int = 0
    # when the point was capturing (RFC 3339, UTC, the capturing machine's clock)
    started: str | None = None
    stopped: str | None = None

    @property
    def window(self) -> tuple[int, int] | None:
        """(started, stopped) in ns since the epoch, when the manifest gives both."""
        if not self.started or not self.stopped:
            return None
        try:
            return _ns(self.started), _ns(self.stopped)
        except ValueError:
            return None


@dataclass(frozen=True)
class Manifest:
    """A capture bundle's manifest: its points, cluster, target and status."""

    points: tuple[PointSpec, ...]
    cluster: str = ""
    target: str = ""
    status: CaptureStatus = CaptureStatus.COMPLETE
    reason: str = ""
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    format: int = FORMAT
    ktrace_version: str = __version__


def rfc3339(ns: int | None) -> str | None:
    """A time in ns since the epoch as RFC 3339 in UTC, to the microsecond."""
    if ns is None:
        return None
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat(timespec="microseconds")


def _ns(text: str) -> int:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    whole = int(moment.replace(microsecond=0).timestamp())
    return whole * 1_000_000_000 + moment.microsecond * 1000


def write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def write_manifest(bundle: Path, manifest: Manifest) -> None:
    data = asdict(manifest)
    write_private(bundle / MANIFEST, json.dumps(data, indent=1) + "\n")


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_private(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


def read_manifest(bundle: Path) -> Manifest | None:
    path = bundle / MANIFEST
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        known = {f.name for f in fields(PointSpec)}
        points = tuple(
            PointSpec(**{k: v for k, v in p.items() if k in known} | {"kind": _kind(p)})
            for p in data.pop("points")
        )
        keep = {f.name for f in fields(Manifest)} - {"points", "status"}
        status = CaptureStatus(data.get("status", CaptureStatus.COMPLETE))
        return Manifest(points, status=status, **{k: v for k, v in data.items() if k in keep})
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CaptureFileError(
            f"{path}: not a readable ktrace manifest ({exc})",
            "analyze the pcap files under points/ directly",
        ) from None


def _kind(point: dict[str, Any]) -> PointKind:
    return PointKind.read(str(point["kind"]))


def read_inventory(bundle: Path) -> Inventory | None:
    path = bundle / INVENTORY
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise CaptureFileError(
            f"{path}: not readable JSON ({exc}): addresses are shown without names"
        ) from None
    if not isinstance(data, dict):
        raise CaptureFileError(
            f"{path}: not an inventory (a JSON object): addresses are shown without names"
        )
    return Inventory.parse(data)
