"""The top-level views (Points, Flows, DNS, Findings) and the drill-in ones (Path)."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import DataTable, Static

from ktrace.analysis.http_walk import HttpEnd
from ktrace.analysis.result import Result
from ktrace.analysis.views import dns_lookups, path_packets
from ktrace.model import Severity
from ktrace.pcap import linktype
from ktrace.report.table import human_size
from ktrace.report.text import QUESTIONLESS, UNSEEN, clip
from ktrace.tui import keymap
from ktrace.tui.screens.base import TableView

SEVERITY_STYLE = {
    Severity.CRITICAL: "bold white on red",
    Severity.HIGH: "bold red",
    Severity.MEDIUM: "yellow",
    Severity.LOW: "cyan",
    Severity.INFO: "dim",
}


class DetailedTableView(TableView):
    """A table with what the highlighted row holds written out below it, in a pane that
    scrolls: on a small terminal the end of it (a rule, the next step) is still reachable."""

    BINDINGS = [*TableView.BINDINGS, *keymap.DETAIL]

    def compose(self) -> ComposeResult:
        yield from super().compose()
        with VerticalScroll(id="detail-pane"):
            yield Static(id="detail", markup=False)

    def action_detail_down(self) -> None:
        self.query_one("#detail-pane", VerticalScroll).scroll_page_down()

    def action_detail_up(self) -> None:
        self.query_one("#detail-pane", VerticalScroll).scroll_page_up()

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self.show_detail(event.row_key.value)

    def shown(self) -> None:
        self.show_detail(self.selected_key())

    def show_detail(self, key: str | None) -> None:
        result = self.ktrace.result
        if result is not None and key is not None:
            self.query_one("#detail", Static).update(self.detail(result, int(key)))

    def detail(self, result: Result, key: int) -> str:
        raise NotImplementedError


class PointsView(TableView):
    TITLE = "Capture points"
    COLUMNS = ("POINT", "KIND", "NODE", "POD", "LINKTYPE", "PACKETS", "BYTES", "DROPS", "CLOCK")

    def build_rows(self) -> list[tuple[Any, tuple[Any, ...]]]:
        result = self.ktrace.result
        counts = self.ktrace.point_counts()
        rows = []
        for k, p in enumerate(self.ktrace.points):
            packets, size = counts.get(k, (0, 0))
            done = result.points[k] if result else None
            drops = done.kernel_drops if done else None
            rows.append(
                (
                    k,
                    (
                        p.id,
                        p.kind,
                        p.node or "",
                        f"{p.namespace}/{p.pod}" if p.pod else "",
                        linktype.name(p.linktype),
                        packets,
                        human_size(size),
                        drops if drops is not None else "",
                        f"{done.clock_offset_ms:+.1f} ms" if done and done.clock_offset_ms else "",
                    ),
                )
            )
        return rows

    def action_open(self) -> None:
        self.ktrace.action_view("flows")


def short_endpoint(label: str) -> str:
    """'10.244.0.2:39424 (default/client)' as 'default/client:39424' for narrow terminals."""
    address, _, name = label.partition(" (")
    if not name:
        return label
    return f"{name.rstrip(')')}:{address.rsplit(':', 1)[-1]}"


WIDE = 140  # below this many columns the flows view leaves out what the path view shows


class FlowsView(TableView):
    TITLE = "Conversations across capture points (enter: path)"

    @property
    def wide(self) -> bool:
        return self.app.size.width >= WIDE

    def columns(self) -> tuple[str, ...]:
        # most useful first: what a narrow terminal cuts off is on the right
        head = ("PROTO", "A", "B", "LOST", "RETRANS", "RST", "HANDSHAKE", "PKTS")
        if not self.wide:
            return head
        marks = "".join(str(k % 10) for k in range(len(self.ktrace.points)))
        return (*head, "BYTES", f"SEEN {marks}", "NAT")

    def build_rows(self) -> list[tuple[Any, tuple[Any, ...]]]:
        result = self.ktrace.result
        if result is None:
            return []
        n = len(self.ktrace.points)
        rows = []
        for c in result.conversations:
            cells: tuple[Any, ...] = (
                c.proto,
                c.a if self.wide else short_endpoint(c.a),
                c.b if self.wide else short_endpoint(c.b),
                Text(str(c.lost), style="bold red") if c.lost else "",
                c.retransmissions or "",
                c.rst or "",
                f"{c.handshake_ms:.2f} ms" if c.handshake_ms is not None else "",
                c.packets,
            )
            if self.wide:
                seen = "".join("●" if k in c.points else "·" for k in range(n))
                cells += (human_size(c.bytes), seen, c.nat)
            rows.append((c.conv, cells))
        return rows

    def action_open(self) -> None:
        key = self.selected_key()
        if key is not None:
            self.app.push_screen(PathView(int(key)))


class PathView(TableView):
    """One conversation: its hops as columns, its packets as rows, lost ones in red."""

    def __init__(self, conv: int, highlight: int | None = None) -> None:
        super().__init__()
        self.conv = conv
        self.highlight = highlight
        result = self.ktrace.result
        self.path = (
            next((p for p in result.analysis.paths if p.conv == conv), None) if result else None
        )

    def columns(self) -> tuple[str, ...]:
        hops = [self.ktrace.points[h.point].id for h in self.path.hops] if self.path else []
        return ("#", "DIR", *hops, "PACKET")  # the points first: where it was lost shows

    def shown(self) -> None:
        a = self.ktrace.result.analysis if self.ktrace.result else None
        title = self.query_one("#title", Static)
        if a is None or self.path is None:
            title.update("This conversation was seen at one point only")
            return
        from ktrace.analysis.checks import conversation_label

        lines = [conversation_label(a, self.path)]
        for nat in self.path.nat:
            lines.append(
                f"{nat.kind} between {a.point_id(self.path.hops[nat.after_hop].point)}"
                f" and {a.point_id(self.path.hops[nat.after_hop + 1].point)}: "
                f"{a.flow_label(nat.before)} => {a.flow_label(nat.after)}"
            )
        for loss in self.path.losses:
            lines.append(
                f"LOST {loss.packets} ({loss.direction}): last seen at "
                f"{a.point_id(self.path.hops[loss.last_hop].point)}, never at "
                f"{a.point_id(self.path.hops[loss.missing_hop].point)}"
            )
        title.update("\n".join(lines))
        if self.highlight is not None:  # the evidence packet, by its identity across points
            ident = a.correlation.ident
            table = self.query_one(DataTable)
            for key, _ in self.rows:
                if ident[key] == ident[self.highlight] and str(key) in table.rows:
                    table.move_cursor(row=table.get_row_index(str(key)))
                    break

    def build_rows(self) -> list[tuple[Any, tuple[Any, ...]]]:
        result = self.ktrace.result
        if result is None or self.path is None:
            return []
        rows = []
        for i, p in enumerate(path_packets(result.analysis, self.path), 1):
            cells = [Text(c, style="bold red") if c.startswith("✗") else c for c in p.cells]
            rows.append((p.row, (i, p.direction, *cells, p.summary)))
        return rows

    def action_open(self) -> None:
        self.open_packet()


class DnsView(TableView):
    TITLE = "DNS transactions, grouped by lookup (search-path chains together)"
    # most useful first: what a narrow terminal cuts off is on the right
    COLUMNS = (
        "LOOKUP",
        "QNAME",
        "TYPE",
        "RCODE",
        "LATENCY",
        "RETRIES",
        "SERVER",
        "CLIENT",
        "ANSWERS",
    )
    # characters of the lookup and of the name asked below WIDE columns: the name's later
    # labels tell a search path's candidates apart
    NARROW = (16, 32)

    def build_rows(self) -> list[tuple[Any, tuple[Any, ...]]]:
        result = self.ktrace.result
        if result is None:
            return []
        lookup_width, name_width = (None, None) if self.app.size.width >= WIDE else self.NARROW
        rows = []
        for r in dns_lookups(result.analysis):
            t = r.transaction
            rcode = Text(t.rcode or "NO ANSWER", style="" if t.rcode == "NOERROR" else "bold red")
            rows.append(
                (
                    t.queries[0],
                    (
                        clip(r.lookup, lookup_width),
                        clip(t.qname or QUESTIONLESS, name_width),
                        t.qtype,
                        rcode,
                        f"{t.latency_ns / 1e6:.2f} ms" if t.latency_ns is not None else "",
                        t.retries or "",
                        t.server,
                        t.client,
                        ", ".join(t.answers[:3]),
                    ),
                )
            )
        return rows

    def action_open(self) -> None:
        self.open_packet()


class HttpView(DetailedTableView):
    """Each HTTP request once, as its client saw it; the highlighted one's times at every
    point below; enter opens its path with the request's packet selected."""

    TITLE = "HTTP requests (enter: the request's path across points)"
    # most useful first: what a narrow terminal cuts off is on the right
    COLUMNS = ("TIME", "REQUEST", "STATUS", "LATENCY", "BACKEND", "SERVER", "NETWORK", "ENDED")
    NARROW_REQUEST = 30  # characters of the request line below WIDE columns

    def build_rows(self) -> list[tuple[Any, tuple[Any, ...]]]:
        result = self.ktrace.result
        if result is None:
            return []
        width = None if self.app.size.width >= WIDE else self.NARROW_REQUEST
        rows = []
        for k, r in enumerate(result.http):
            status = r.outcome
            style = "bold red" if r.failed or r.ended != HttpEnd.COMPLETE else ""
            request = f"{r.method} {r.host}{r.path}" if r.method else UNSEEN
            cells = (
                r.time[11:23],
                clip(request, width),
                Text("-" if status is None else str(status), style=style),
                _ms(r.latency_ms),
                short_endpoint(r.backend_name),
                _ms(r.server_ms),
                _ms(r.network_ms),
                "" if r.ended == HttpEnd.COMPLETE else r.ended,
            )
            rows.append((k, cells))
        return rows

    def detail(self, result: Result, key: int) -> str:
        r = result.http[key]
        lines = [f"{r.protocol} {r.client} -> {r.server} => {r.backend_name}"]
        if r.grpc_service:
            lines.append(f"gRPC {r.grpc_service}/{r.grpc_method}: {r.grpc_status} {r.grpc_message}")
        lines += [
            f"  {p.point:<16} waited {_ms(p.latency_ms) or '-':>10}"
            + (f"  +{_ms(p.added_ms)} from the point before" if p.added_ms else "")
            for p in r.points
        ]
        return "\n".join(lines)

    def action_open(self) -> None:
        key = self.selected_key()
        result = self.ktrace.result
        if key is None or result is None:
            return
        e = result.analysis.http_exchanges[int(key)]
        path = result.analysis.path_of_flow(e.primary.flow)
        if path is not None:
            self.app.push_screen(PathView(path.conv, highlight=e.primary.request_row))
        else:
            from ktrace.tui.screens.packet import PacketView

            self.app.push_screen(PacketView(e.primary.request_row))


def _ms(value: float | None) -> str:
    return f"{value:.2f} ms" if value is not None else ""


class FindingsView(DetailedTableView):
    TITLE = "Findings, most severe first (enter: jump to the evidence)"
    COLUMNS = ("SEVERITY", "CHECK", "FINDING")

    def build_rows(self) -> list[tuple[Any, tuple[Any, ...]]]:
        result = self.ktrace.result
        if result is None:
            return []
        return [
            (
                k,
                (
                    Text(f.severity.name.lower(), style=SEVERITY_STYLE[f.severity]),
                    f.id,
                    f.title,
                ),
            )
            for k, f in enumerate(result.findings)
        ]

    def detail(self, result: Result, key: int) -> str:
        f = result.findings[key]
        refs = ", ".join(f"{e.point}#{e.number}" for e in f.evidence[:8])
        return f"{f.title}\nEvidence: {refs}\n\n{f.explanation}\n\nNext: {f.next_step}"

    def action_open(self) -> None:
        key = self.selected_key()
        result = self.ktrace.result
        if key is None or result is None:
            return
        finding = result.findings[int(key)]
        if not finding.evidence:
            return
        row = self.ktrace.row_of(finding.evidence[0])
        a = result.analysis
        flow = int(a.flows.flow[row])
        path = a.path_of_flow(flow) if flow >= 0 else None
        if path is not None:
            self.app.push_screen(PathView(path.conv, highlight=row))
        else:
            from ktrace.tui.screens.packet import PacketView

            self.app.push_screen(PacketView(row))
