"""Run the offline pipeline on capture files and shape the result for output."""

from __future__ import annotations

import atexit
import shutil
import tarfile
import tempfile
import threading
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ktrace import __version__
from ktrace.analysis.context import Analysis
from ktrace.analysis.correlate import correlate
from ktrace.analysis.dns import DnsTransaction, dns_transactions
from ktrace.analysis.findings import CheckError, run_checks
from ktrace.analysis.flows import build_flows
from ktrace.analysis.names import Names
from ktrace.analysis.paths import conversation_paths
from ktrace.bundle.manifest import read_inventory, read_manifest
from ktrace.decode.index import PacketIndex, build_index
from ktrace.errors import CaptureFileError
from ktrace.model import Finding, Point
from ktrace.pcap import linktype

CAPTURE_SUFFIXES = (".pcap", ".pcapng", ".cap", ".dmp", ".pcap.gz", ".pcapng.gz")


@dataclass(frozen=True)
class Report:
    analysis: Analysis
    findings: list[Finding]
    check_errors: list[CheckError]
    notes: tuple[str, ...] = ()  # about the inputs: a bundle cut short, still being written


@dataclass(frozen=True)
class Inputs:
    files: list[Path]
    declared: dict[Path, Point]  # from bundle manifests
    inventory: dict[str, Any] | None
    notes: list[str] = field(default_factory=list)


def unpack_bundle(archive: Path) -> Path:
    """A .tar.gz bundle, unpacked into a private temporary directory removed at exit."""
    root = Path(tempfile.mkdtemp(prefix="ktrace-bundle-"))  # created 0700
    atexit.register(shutil.rmtree, root, True)
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(root, filter="data")  # no absolute paths, links out, devices
    except (tarfile.TarError, OSError) as exc:
        raise CaptureFileError(f"{archive}: not a readable bundle archive ({exc})") from None
    found = [m.parent for m in root.rglob("manifest.json")]
    return found[0] if len(found) == 1 else root


def read_inputs(inputs: list[Path]) -> Inputs:
    """Bundles contribute their declared points and inventory; other inputs are files."""
    files: list[Path] = []
    declared: dict[Path, Point] = {}
    inventory: dict[str, Any] | None = None
    plain: list[Path] = []
    notes: list[str] = []
    for p in inputs:
        if p.is_file() and p.name.endswith((".tar.gz", ".tgz")):
            p = unpack_bundle(p)
        manifest = read_manifest(p) if p.is_dir() else None
        if manifest is None:
            plain.append(p)
            continue
        if manifest.status == "interrupted":
            notes.append(f"{p}: the capture was cut short: {manifest.reason or 'no reason given'}")
        elif manifest.status == "capturing":
            notes.append(f"{p}: the capture is still running, or was killed before it ended")
        for spec in manifest.points:
            path = p / spec.file
            if not path.exists():
                raise CaptureFileError(f"{p}: the manifest lists {spec.file}, which is missing")
            files.append(path)
            declared[path] = Point(
                spec.id,
                str(path),
                spec.interface,
                spec.linktype or 1,
                spec.kind,
                spec.node,
                spec.namespace,
                spec.pod,
            )
        inventory = read_inventory(p) or inventory
    files.extend(capture_files(plain))
    return Inputs(files, declared, inventory, notes)


def capture_files(inputs: list[Path]) -> list[Path]:
    """Files as given; directories contribute their capture files (a bundle: its points/)."""
    out: list[Path] = []
    for p in inputs:
        if p.is_dir():
            root = p / "points" if (p / "points").is_dir() else p
            found = sorted(
                f
                for f in root.iterdir()
                if f.is_file() and f.name.lower().endswith(CAPTURE_SUFFIXES)
            )
            if not found:
                raise CaptureFileError(
                    f"{p}: directory holds no capture files",
                    "expected *.pcap or *.pcapng files, or a ktrace bundle",
                )
            out.extend(found)
        elif not p.exists():
            raise CaptureFileError(f"{p}: no such file or directory")
        else:
            out.append(p)
    return out


def analyze(
    inputs: list[Path], cancel: threading.Event | None = None, workers: int | None = None
) -> Report:
    found = read_inputs(inputs)
    index = build_index(found.files, cancel, workers, found.declared)
    report = analyze_index(index, found.inventory, cancel)
    return replace(report, notes=tuple(found.notes))


def analyze_index(
    index: PacketIndex,
    inventory: dict[str, Any] | None = None,
    cancel: threading.Event | None = None,
) -> Report:
    """Everything after the index: flows, DNS, correlation, paths, findings."""
    flows = build_flows(index.columns, len(index.points))
    same_clock: dict[str, list[int]] = {}
    for k, point in enumerate(index.points):
        if point.node:
            same_clock.setdefault(point.node, []).append(k)
    correlation = correlate(index.columns, flows, len(index.points), list(same_clock.values()))
    names = Names.from_inventory(inventory)
    paths = conversation_paths(index, flows, correlation, names)
    analysis = Analysis(index, flows, dns_transactions(index, cancel), correlation, paths, names)
    findings, errors = run_checks(analysis)
    return Report(analysis, findings, errors)


def iso(ts_ns: int) -> str:
    return datetime.fromtimestamp(ts_ns / 1e9, UTC).isoformat(timespec="microseconds")


def point_rows(index: PacketIndex) -> list[dict[str, object]]:
    c = index.columns
    counts = np.bincount(c.point, minlength=len(index.points))
    sizes = np.bincount(c.point, weights=c.wirelen, minlength=len(index.points))
    out = []
    for k, p in enumerate(index.points):
        sel = c.ts[c.point == k] if counts[k] else None
        f = index.file_of(k)
        out.append(
            {
                "id": p.id,
                "file": p.file,
                "interface": p.interface,
                "linktype": linktype.name(p.linktype),
                "format": f.format,
                "packets": int(counts[k]),
                "bytes": int(sizes[k]),
                "first": iso(int(sel.min())) if sel is not None else None,
                "duration_s": round((int(sel.max()) - int(sel.min())) / 1e9, 6)
                if sel is not None
                else 0.0,
                "kernel_drops": f.drops.get(k),
                "kind": p.kind,
                "node": p.node,
                "pod": f"{p.namespace}/{p.pod}" if p.pod else None,
            }
        )
    return out


def flow_rows(a: Analysis) -> list[dict[str, object]]:
    f = a.flows
    npts = max(len(a.index.points), 1)
    ip = f.flow >= 0
    key = f.flow[ip] * npts + a.index.columns.point[ip]
    uniq, counts = np.unique(key, return_counts=True)
    per_flow: dict[int, dict[str, int]] = {}
    for k, n in zip(uniq.tolist(), counts.tolist(), strict=True):
        per_flow.setdefault(k // npts, {})[a.index.points[k % npts].id] = n
    rows = []
    for i in range(len(f)):
        hs = int(f.handshake_ns[i])
        rows.append(
            {
                "proto": a.proto(i),
                "a": a.endpoint(i, "a"),
                "b": a.endpoint(i, "b"),
                "packets_ab": int(f.packets_ab[i]),
                "packets_ba": int(f.packets_ba[i]),
                "bytes_ab": int(f.bytes_ab[i]),
                "bytes_ba": int(f.bytes_ba[i]),
                "start": iso(int(f.first_ts[i])),
                "duration_s": round((int(f.last_ts[i]) - int(f.first_ts[i])) / 1e9, 6),
                "handshake_ms": round(hs / 1e6, 3) if hs >= 0 else None,
                "retransmissions": int(f.retransmissions[i]),
                "out_of_order": int(f.out_of_order[i]),
                "syn": int(f.syn[i]),
                "rst": int(f.rst_ab[i] + f.rst_ba[i]),
                "fin": int(f.fin[i]),
                "zero_window": int(f.zero_window[i]),
                "points": per_flow.get(i, {}),
            }
        )
    return rows


def dns_row(a: Analysis, t: DnsTransaction) -> dict[str, object]:
    return {
        "point": a.index.points[t.point].id,
        "transport": t.transport,
        "client": t.client,
        "server": t.server,
        "id": t.id,
        "qname": t.qname,
        "qtype": t.qtype,
        "rcode": t.rcode,
        "answered": t.answered,
        "latency_ms": round(t.latency_ns / 1e6, 3) if t.latency_ns is not None else None,
        "retries": t.retries,
        "answers": list(t.answers),
        "truncated": t.truncated,
        "time": iso(t.query_ts),
        "packet": a.index.ref(t.queries[0]).number,
    }


def path_rows(a: Analysis) -> list[dict[str, object]]:
    from ktrace.analysis.checks import conversation_label

    out = []
    for path in a.paths:
        hops = []
        for h in path.hops:
            p = a.index.points[h.point]
            t = a.index.tunnels[h.tunnels[0] - 1] if h.tunnels else None
            hops.append(
                {
                    "point": p.id,
                    "kind": p.kind,
                    "node": p.node,
                    "packets": h.packets,
                    "expected": h.packets == 0,
                    "latency_ms": round(h.latency_ns / 1e6, 3)
                    if h.latency_ns is not None
                    else None,
                    "flow": a.flow_label(h.flow) if h.flow is not None else None,
                    "tunnel": {
                        "kind": t.kind,
                        "outer_src": t.outer_src,
                        "outer_dst": t.outer_dst,
                        "vni": t.vni,
                        "port": t.port,
                    }
                    if t
                    else None,
                }
            )
        out.append(
            {
                "conversation": conversation_label(a, path),
                "proto": a.proto(path.first_flow),
                "flows": [a.flow_label(f) for f in path.flows],
                "hops": hops,
                "nat": [
                    {
                        "kind": n.kind,
                        "between": [
                            a.point_id(path.hops[n.after_hop].point),
                            a.point_id(path.hops[n.after_hop + 1].point),
                        ],
                        "before": a.flow_label(n.before),
                        "after": a.flow_label(n.after),
                    }
                    for n in path.nat
                ],
                "lost": [
                    {
                        "direction": x.direction,
                        "last_seen": a.point_id(path.hops[x.last_hop].point),
                        "never_at": a.point_id(path.hops[x.missing_hop].point),
                        "packets": x.packets,
                        "syn": x.syn,
                        "max_size": x.max_size,
                        "evidence": [
                            {"point": r.point, "packet": r.number}
                            for r in (a.index.ref(k) for k in x.rows[:10])
                        ],
                    }
                    for x in path.losses
                ],
            }
        )
    return out


def finding_row(f: Finding) -> dict[str, object]:
    return {
        "id": f.id,
        "severity": f.severity.name.lower(),
        "title": f.title,
        "explanation": f.explanation,
        "next_step": f.next_step,
        "evidence": [{"point": r.point, "packet": r.number} for r in f.evidence],
        "flows": list(f.flows),
    }


def to_dict(report: Report) -> dict[str, object]:
    a = report.analysis
    c = a.index.columns
    tunnels = np.bincount(c.tunnel, minlength=len(a.index.tunnels) + 1)
    points = point_rows(a.index)
    for row, offset in zip(points, a.correlation.offsets.tolist(), strict=True):
        row["clock_offset_ms"] = round(offset / 1e6, 3)
    return {
        "ktrace": __version__,
        "points": points,
        "findings": [finding_row(f) for f in report.findings],
        "paths": path_rows(a),
        "flows": flow_rows(a),
        "dns": [dns_row(a, t) for t in a.dns.transactions],
        "tunnels": [
            {
                "kind": t.kind,
                "outer_src": t.outer_src,
                "outer_dst": t.outer_dst,
                "vni": t.vni,
                "port": t.port,
                "packets": int(tunnels[k + 1]),
            }
            for k, t in enumerate(a.index.tunnels)
        ],
        "warnings": list(report.notes)
        + a.index.warnings
        + [f"check {e.check} failed: {e.message}" for e in report.check_errors],
        "dns_malformed": a.dns.malformed,
        "dns_orphan_responses": a.dns.orphan_responses,
    }
