"""Replies that bypass the node that translated the request: an asymmetric return path.

A request DNAT-ed on one node (a NodePort, a LoadBalancer address) with the client's address
kept must be answered through that node, where conntrack undoes the translation. When the
server's node sends the reply straight to the client instead, the client receives an answer
from an address it never called and resets it. Seen in two ways, each enough:

- at a point on the client's side of the translation (the client's own capture), a reply
  still carrying the server's translated address;
- a reply to a client outside the cluster leaving another node's NIC outside any tunnel,
  while the translating node saw no reply at all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ktrace.analysis.flows import FlowTable
from ktrace.analysis.names import Names
from ktrace.analysis.paths import ConvPath, NatKind
from ktrace.decode.index import PacketIndex
from ktrace.distinct import distinct
from ktrace.model import PointKind


@dataclass(frozen=True)
class Bypass:
    """Replies of a translated conversation that came back without its NAT node."""

    conv: int
    nat_node: str  # where the request was translated
    reply_nodes: tuple[str, ...]  # where the untranslated replies were seen instead ('' : off-node)
    before: int  # the flow as the client sent it
    after: int  # the flow after DNAT
    rows: tuple[int, ...]  # the untranslated replies


def _translation(index: PacketIndex, path: ConvPath) -> tuple[str, int, int, int] | None:
    """(translating node, hop of the change, flow before, flow after) for a DNAT that kept
    the client's address; None for anything else (an SNAT makes the return symmetric)."""
    for n in path.nat:
        if n.kind != NatKind.DNAT:
            continue
        a = index.points[path.hops[n.after_hop].point]
        b = index.points[path.hops[n.after_hop + 1].point]
        node = b.node if b.kind in (PointKind.NODE, PointKind.TUNNEL) else a.node
        if node:
            return node, n.after_hop, n.before, n.after
    return None


def bypasses(
    index: PacketIndex,
    flows: FlowTable,
    paths: list[ConvPath],
    names: Names,
    rows_of: Callable[[list[int]], np.ndarray],
) -> list[Bypass]:
    """`rows_of`: the packet rows of some flows (Analysis.rows_of_flows)."""
    c = index.columns
    out = []
    for path in paths:
        found = _translation(index, path)
        if found is None:
            continue
        node, hop, before, after = found
        rows = rows_of([after])
        replies = rows[~flows.forward[rows]]
        if not len(replies):
            continue
        client_side = {h.point for h in path.hops[: hop + 1] if h.flow == before}
        at_client = replies[np.isin(c.point[replies], list(client_side))]
        client_ip = index.address(int(flows.l3[before]), int(flows.a_addr[before]))
        everything = rows_of(list(path.flows))
        back = everything[~flows.forward[everything]]
        on_nat_node = any(index.points[int(p)].node == node for p in distinct(c.point[back]))
        leaving = [
            r
            for r in replies.tolist()
            if c.tunnel[r] == 0
            and index.points[int(c.point[r])].kind == PointKind.NODE
            and index.points[int(c.point[r])].node not in (None, node)
        ]
        outside = names.by_ip and names.get(client_ip) is None
        if len(at_client):
            chosen = at_client.tolist()
        elif leaving and outside and not on_nat_node:
            chosen = leaving
        else:
            continue
        where = tuple(sorted({index.points[int(c.point[r])].node or "" for r in leaving}))
        out.append(Bypass(path.conv, node, where, before, after, tuple(chosen)))
    return out
