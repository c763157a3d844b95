"""`ktrace export --parquet DIR`: the analysis as Parquet tables, for questions bigger than the
report (DuckDB on one machine, Spark or Trino over many nodes' captures).

    packets.parquet   one row per packet per point: time, point, addresses, ports, TCP fields,
                      sizes, tunnel, and the ids that join the other tables (flow,
                      conversation, identity: one packet seen at several points)
    flows.parquet     one row per 5-tuple, as `analyze --json` "flows" (points: a list of
                      {point, packets}), with its `flow` and `conversation` ids
    paths.parquet     one row per hop of each conversation's path (path = its number,
                      conversation and flow: the ids packets and flows carry; label and
                      tuple: the same as text)
    losses.parquet    where each path lost packets (path, conversation: as in paths)
    dns.parquet       one row per DNS transaction
    http.parquet      one row per HTTP request, as `analyze --json` "http" (points: its times at
                      each point that saw it), packet as "point#packet"
    tls.parquet       one row per TLS connection per point
    findings.parquet  one row per finding, evidence as "point#packet" strings
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ktrace.analysis.result import Result, plain

INT, F, S, B = pa.int64(), pa.float64(), pa.string(), pa.bool_()
STRINGS = pa.list_(S)
# Fixed schemas: the same types whatever a capture holds, and readable when a table is empty.
SCHEMAS = {
    "flows": pa.schema(
        [("flow", INT), ("conversation", INT), ("proto", S), ("a", S), ("b", S),
         ("packets_ab", INT), ("packets_ba", INT), ("bytes_ab", INT), ("bytes_ba", INT),
         ("start", S), ("duration_s", F),
         ("handshake_ms", F), ("retransmissions", INT), ("out_of_order", INT), ("syn", INT),
         ("rst", INT), ("fin", INT), ("zero_window", INT),
         ("points", pa.list_(pa.struct([("point", S), ("packets", INT)])))]
    ),
    "paths": pa.schema(
        [("path", INT), ("conversation", INT), ("label", S), ("hop", INT), ("point", S),
         ("kind", S), ("node", S), ("packets", INT), ("expected", B), ("latency_ms", F),
         ("flow", INT), ("tuple", S), ("tunnel", S)]
    ),
    "losses": pa.schema(
        [("path", INT), ("conversation", INT), ("direction", S), ("last_seen", S), ("never_at", S),
         ("packets", INT), ("syn", INT), ("max_size", INT), ("evidence", STRINGS)]
    ),
    "dns": pa.schema(
        [("point", S), ("transport", S), ("client", S), ("server", S), ("id", INT), ("qname", S),
         ("qtype", S), ("rcode", S), ("answered", B), ("latency_ms", F), ("retries", INT),
         ("answers", STRINGS), ("truncated", B), ("time", S), ("packet", INT)]
    ),
    "http": pa.schema(
        [("time", S), ("protocol", S), ("method", S), ("host", S), ("path", S), ("status", INT),
         ("grpc_service", S), ("grpc_method", S), ("grpc_status", S), ("grpc_message", S),
         ("client", S), ("server", S), ("backend", S), ("backend_name", S), ("latency_ms", F),
         ("total_ms", F), ("server_ms", F), ("network_ms", F), ("request_bytes", INT),
         ("response_bytes", INT), ("ended", S), ("ended_by", S),
         ("points", pa.list_(pa.struct([("point", S), ("request", S), ("response", S),
                                        ("done", S), ("latency_ms", F), ("added_ms", F)]))),
         ("packet", S)]
    ),
    "tls": pa.schema(
        [("time", S), ("point", S), ("client", S), ("server", S), ("sni", S), ("version", S),
         ("offered_version", S), ("offered_alpn", STRINGS), ("alpn", S), ("server_hello", B),
         ("alert", S), ("failed", B), ("packet", S)]
    ),
    "findings": pa.schema(
        [("id", S), ("severity", S), ("title", S), ("explanation", S), ("next_step", S),
         ("evidence", STRINGS), ("flows", STRINGS)]
    ),
}  # fmt: skip
PACKET_FIELDS = (
    "ts", "caplen", "wirelen", "l3", "proto", "sport", "dport", "tcp_flags", "seq", "ack", "win",
    "ipid", "paylen",
)  # fmt: skip


def _addresses(result: Result, l3: np.ndarray, values: np.ndarray) -> pa.DictionaryArray:
    """Address text per packet, built once per distinct address (dictionary encoded); null
    for packets that are not IP."""
    index = result.analysis.index
    keys = values.astype(np.int64) * 8 + l3
    uniq, inv = np.unique(keys, return_inverse=True)
    text = [index.address(int(k % 8), int(k // 8)) if k % 8 else "" for k in uniq.tolist()]
    ids = pa.array(inv.reshape(-1).astype(np.int32), mask=l3 == 0)
    return pa.DictionaryArray.from_arrays(ids, pa.array(text, pa.string()))


def packets_table(result: Result) -> pa.Table:
    a = result.analysis
    c = a.index.columns
    point_ids = pa.array([p.id for p in a.index.points])
    flow = a.flows.flow
    conv = np.where(flow >= 0, a.correlation.conv[np.maximum(flow, 0)], -1)
    # the packet's number in its file, 1-based: as findings cite it (point#number)
    first_row = np.array([a.index.file_of(k).first_row for k in range(len(a.index.points))])
    number = np.arange(1, len(c) + 1, dtype=np.int64) - first_row[c.point]
    columns: dict[str, Any] = {
        "point": pa.DictionaryArray.from_arrays(pa.array(c.point.astype(np.int32)), point_ids),
        "number": number,
        "time": pa.array(c.ts, pa.timestamp("ns", tz="UTC")),
        **{name: getattr(c, name) for name in PACKET_FIELDS if name != "ts"},
        "src": _addresses(result, c.l3, c.src),
        "dst": _addresses(result, c.l3, c.dst),
        "tunnel": c.tunnel,
        "flow": flow,
        "conversation": conv,
        "identity": a.correlation.ident,
    }
    return pa.table(columns)


def _rows(items: object) -> list[dict[str, Any]]:
    rows = plain(items)
    assert isinstance(rows, list)
    return rows


def flows_table(result: Result) -> pa.Table:
    rows = _rows(result.flows)
    conv = result.analysis.correlation.conv.tolist()
    for k, row in enumerate(rows):  # point -> packets, as a list DuckDB can unnest
        row["points"] = [{"point": p, "packets": v} for p, v in row["points"].items()]
        row.update(flow=k, conversation=conv[k])  # as packets.parquet numbers them
    return _table("flows", rows)


def paths_tables(result: Result) -> tuple[pa.Table, pa.Table]:
    hops, losses = [], []
    found = result.analysis.paths
    for k, (path, row) in enumerate(zip(found, _rows(result.paths), strict=True)):
        for h, (step, hop) in enumerate(zip(path.hops, row["hops"], strict=True)):
            tunnel = hop.pop("tunnel")
            hops.append(
                {
                    "path": k,
                    "conversation": path.conv,
                    "label": row["conversation"],
                    "hop": h,
                    **hop,
                    "flow": step.flow,
                    "tuple": hop["flow"],
                    "tunnel": tunnel["kind"] if tunnel else None,
                }
            )
        for loss in row["lost"]:
            loss["evidence"] = [f"{e['point']}#{e['packet']}" for e in loss["evidence"]]
            losses.append({"path": k, "conversation": path.conv, **loss})
    return _table("paths", hops), _table("losses", losses)


def _cited(name: str, rows: list[dict[str, Any]]) -> pa.Table:
    """Rows whose `packet` is a reference, written as findings cite it: "point#number"."""
    for row in rows:
        row["packet"] = f"{row['packet']['point']}#{row['packet']['packet']}"
    return _table(name, rows)


def findings_table(result: Result) -> pa.Table:
    rows = _rows(result.findings)
    for row in rows:
        row["evidence"] = [f"{e['point']}#{e['packet']}" for e in row["evidence"]]
    return _table("findings", rows)


def _table(name: str, rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=SCHEMAS[name])


def write_parquet(result: Result, directory: Path) -> list[Path]:
    """Every table into DIR (created 0700, files 0600); returns the files written."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    hops, losses = paths_tables(result)
    tables = {
        "packets": packets_table(result),
        "flows": flows_table(result),
        "paths": hops,
        "losses": losses,
        "dns": _table("dns", _rows(result.dns)),
        "http": _cited("http", _rows(result.http)),
        "tls": _cited("tls", _rows(result.tls)),
        "findings": findings_table(result),
    }
    written = []
    for name, table in tables.items():
        path = directory / f"{name}.parquet"
        path.touch(mode=0o600)
        pq.write_table(table, path, compression="zstd")
        written.append(path)
    return written
