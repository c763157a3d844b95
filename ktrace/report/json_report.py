"""`--json`: the analysis as one JSON document (docs/analysis.md "JSON output"), streamed in
pieces encoded by orjson, so that a storm's hundreds of thousands of rows never exist as dicts
all at once."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import cast

import numpy as np
import orjson

from ktrace import __version__
from ktrace.analysis.result import DnsRow, FlowRow, HttpRow, Result, plain, row_dict, row_layout
from ktrace.analysis.row_columns import ROW_OPTIONS, Column, Merges, json_pieces, merged
from ktrace.chunking import in_order
from ktrace.kernels.json_rows import Pieces, laid_out

JSON_SLICE = 8192  # DNS transactions or flows encoded at a time: a few MB of their JSON


def json_document(result: Result) -> dict[str, object]:
    """The document as Python data: what json_chunks() encodes."""
    return {k: v if k != "dns" else _dns_json(result) for k, v in _document(result).items()}


def json_chunks(result: Result) -> Iterator[bytes]:
    """json_document() as JSON (UTF-8, compact), in pieces: the flows, the DNS transactions
    and the HTTP requests a slice at a time from their columns."""
    sep = b"{"
    exchanges = result.analysis.http_exchanges

    def http_columns(ks: np.ndarray) -> dict[str, Column]:
        return result.http_columns([exchanges[k] for k in ks.tolist()])

    by_column = {
        "flows": (len(result.analysis.flows), result.flow_columns, FlowRow),
        "dns": (len(result.analysis.dns.transactions), result.dns_columns, DnsRow),
        "http": (len(exchanges), http_columns, HttpRow),
    }
    for key, value in _document(result, native=True).items():
        yield sep + orjson.dumps(key) + b":"
        sep = b","
        if key not in by_column:
            yield orjson.dumps(value, default=row_dict, option=ROW_OPTIONS)
            continue
        n, columns_of, row = by_column[key]
        yield b"["
        # each slice's columns made here while the slice before is laid out in C
        for k, encoded in enumerate(in_order(_laid_out, _slices(row, columns_of, n))):
            if k:
                yield b","  # apart: joined, each slice's MBs would be copied once more
            yield encoded
        yield b"]"
    yield b"}"


def _document(result: Result, native: bool = False) -> dict[str, object]:
    """The document, "dns" left out (None): it can be the largest part by far. `native`: the
    rows left as they are, for orjson to lay out with row_dict (findings, whose severity
    plain() writes by name, excepted), and "flows" and "http" left out too: like "dns",
    written a slice of rows at a time, from their columns."""

    def rows(value: tuple[object, ...]) -> object:
        return value if native else plain(value)

    return {
        "ktrace": __version__,
        "points": rows(result.points),
        "findings": plain(result.findings),
        "paths": rows(result.paths),
        "flows": None if native else plain(result.flows),
        "dns": None,
        "http": None if native else plain(result.http),
        "tls": rows(result.tls),
        "tunnels": rows(result.tunnels),
        "warnings": result.warnings,
        "dns_malformed": result.analysis.dns.malformed,
        "dns_orphan_responses": result.analysis.dns.orphan_responses,
    }


def _dns_json(result: Result) -> list[dict[str, object]]:
    """As plain(result.dns), without a DnsRow per transaction on the way."""
    columns = result.dns_columns(np.arange(len(result.analysis.dns.transactions)))
    listed = {attr: column.listed() for attr, column in columns.items()}
    listed["answers"] = [list(cast(tuple[str, ...], a)) for a in listed["answers"]]
    layout = [(attr, name) for attr, name, _ in row_layout(DnsRow) if attr in listed]
    values = [listed[attr] for attr, _ in layout]
    names = [name for _, name in layout]
    return [dict(zip(names, row, strict=True)) for row in zip(*values, strict=True)]


def _slices(
    row: type, columns_of: Callable[[np.ndarray], dict[str, Column]], n: int
) -> Iterator[tuple[list[Pieces], int]]:
    """n rows of the row class, JSON_SLICE at a time: each slice's pieces (laid out in the
    row's order, under its JSON names) and its length."""
    made: Merges = {}
    for lo in range(0, n, JSON_SLICE):
        columns = columns_of(np.arange(lo, min(lo + JSON_SLICE, n)))
        layout = [(name, columns[attr]) for attr, name, _ in row_layout(row) if attr in columns]
        yield merged(json_pieces(layout), made), min(JSON_SLICE, n - lo)


def _laid_out(rows: tuple[list[Pieces], int]) -> bytes:
    return laid_out(*rows)
