"""What a check gets to look at, and how it names endpoints."""

from __future__ import annotations

from dataclasses import dataclass

from ktrace.analysis.dns import DnsResult
from ktrace.analysis.flows import FlowTable
from ktrace.decode.index import PacketIndex
from ktrace.decode.transport import TCP, UDP

PROTO_NAMES = {TCP: "tcp", UDP: "udp", 1: "icmp", 58: "icmpv6", 132: "sctp"}


@dataclass(frozen=True)
class Analysis:
    index: PacketIndex
    flows: FlowTable
    dns: DnsResult

    @property
    def end_ts(self) -> int:
        return int(self.index.columns.ts.max()) if len(self.index) else 0

    def endpoint(self, flow: int, side: str) -> str:
        f = self.flows
        l3 = int(f.l3[flow])
        addr = int(f.a_addr[flow] if side == "a" else f.b_addr[flow])
        port = int(f.a_port[flow] if side == "a" else f.b_port[flow])
        text = self.index.address(l3, addr)
        if int(f.proto[flow]) not in (TCP, UDP, 132):
            return text
        return f"[{text}]:{port}" if l3 == 6 else f"{text}:{port}"

    def proto(self, flow: int) -> str:
        value = int(self.flows.proto[flow])
        return PROTO_NAMES.get(value, f"ip-{value}")

    def flow_label(self, flow: int) -> str:
        return f"{self.proto(flow)} {self.endpoint(flow, 'a')} -> {self.endpoint(flow, 'b')}"
