"""First checks: each fires on its symptom, names it, and stays silent on healthy traffic."""

from __future__ import annotations

import importlib.metadata
import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from ktrace.analysis.findings import GROUP, load_checks, run_checks
from ktrace.entry_points import entry_points
from tests.helpers import answer, frames, query, run_analysis, tcp_session

Make = Callable[..., Path]


def ids(data: dict) -> list[str]:  # type: ignore[type-arg]
    return [f["id"] for f in data["findings"]]


def test_builtin_checks_are_registered_as_entry_points() -> None:
    assert {c.id for c in load_checks()} >= {"dns.unanswered", "tcp.syn-unanswered", "tcp.rst"}


def test_entry_points_read_as_importlib_metadata_reads_them() -> None:
    groups = {ep.group for dist in importlib.metadata.distributions() for ep in dist.entry_points}
    assert GROUP in groups and len(groups) > 3
    for group in groups:
        ours = sorted((e.name, e.value) for e in entry_points(group))
        theirs = sorted((e.name, e.value) for e in importlib.metadata.entry_points(group=group))
        assert ours == theirs, group


def test_a_third_party_check_is_found_and_run(
    tmp_path: Path, make_pcap: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A distribution that registers a check in the group, installed beside ktrace (a
    metadata directory and a module on the path), and a stale copy of it later on the path
    that must not count twice."""
    for where, version in (("site", "1.2"), ("stale", "0.9")):
        meta = tmp_path / where / f"acme_checks-{version}.dist-info"
        meta.mkdir(parents=True)
        (meta / "entry_points.txt").write_text(
            f"[console_scripts]\nacme = acme_checks:main\n\n"
            f"; the checks\n[{GROUP}]\nacme.always = acme_checks.found:ALWAYS [extra]\n"
        )
    package = tmp_path / "site" / "acme_checks"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "found.py").write_text(
        "from ktrace.model import Finding, Severity\n"
        "class Always:\n"
        "    id = 'acme.always'\n"
        "    def run(self, analysis):\n"
        "        yield Finding('acme.always', Severity.INFO, 'acme was here', 'a plugin', 'none')\n"
        "ALWAYS = Always()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "stale"))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "acme_checks", raising=False)
    found = [e for e in entry_points(GROUP) if e.distribution == "acme_checks"]
    assert [(e.name, e.value) for e in found] == [
        ("acme.always", "acme_checks.found:ALWAYS [extra]")
    ]
    checks = load_checks()
    assert "acme.always" in {c.id for c in checks} and len(checks) == len(set(c.id for c in checks))
    _, data = run_analysis(make_pcap(tcp_session()))  # the pipeline loads the checks itself
    assert ids(data) == ["acme.always"]


def test_healthy_traffic_has_no_findings(make_pcap: Make) -> None:
    pkts = tcp_session() + [
        query("web.default.svc.cluster.local"),
        answer("web.default.svc.cluster.local"),
    ]
    for k in range(5):
        pkts += tcp_session(sport=41000 + k)
    _, data = run_analysis(make_pcap(pkts, step_ns=300_000_000))
    assert data["findings"] == []


def test_unanswered_dns(make_pcap: Make) -> None:
    pkts = [query("web.default.svc.cluster.local"), answer("web.default.svc.cluster.local")]
    pkts += [
        query("lost.default.svc.cluster.local", ident=10 + k, sport=41000 + k) for k in range(3)
    ]
    pkts += tcp_session()  # keeps the capture running past the grace period
    _, data = run_analysis(make_pcap(pkts, step_ns=400_000_000))
    (f,) = data["findings"]
    assert f["id"] == "dns.unanswered" and f["severity"] == "high"
    assert f["title"] == "3 DNS queries never answered (of 4)"
    assert "lost.default.svc.cluster.local A (3x)" in f["explanation"]
    assert "resolver is up" in f["explanation"]
    assert [e["packet"] for e in f["evidence"]] == [3, 4, 5]


def test_query_at_the_very_end_is_not_called_unanswered(make_pcap: Make) -> None:
    pkts = tcp_session() + [query("late.example.com")]
    _, data = run_analysis(make_pcap(pkts, step_ns=10_000_000))
    assert data["findings"] == []


def test_syn_unanswered_names_the_destination(make_pcap: Make) -> None:
    syn = Ether() / IP(src="10.244.0.5", dst="10.96.0.20") / TCP(sport=45000, dport=80, flags="S")
    pkts = [syn, syn, syn] + tcp_session(client="10.244.0.5", server="10.244.1.9")
    _, data = run_analysis(make_pcap(pkts, step_ns=1_000_000_000))
    (f,) = data["findings"]
    assert f["id"] == "tcp.syn-unanswered"
    assert f["title"] == (
        "SYN to 10.96.0.20:80 never answered (3 tries over 2.0 s): last seen at capture0"
    )
    assert f["flows"] == ["tcp 10.244.0.5:45000 -> 10.96.0.20:80"]
    assert [e["packet"] for e in f["evidence"]] == [1, 2, 3]


def test_unanswered_syns_to_one_destination_are_one_finding(make_pcap: Make) -> None:
    pkts = []
    for k, client in enumerate(["10.244.0.5", "10.244.0.5", "10.244.2.7", "10.244.2.7"]):
        syn = Ether() / IP(src=client, dst="10.96.0.20") / TCP(sport=45000 + k, dport=80, flags="S")
        pkts += [syn, syn]
    pkts += tcp_session(client="10.244.0.5", server="10.244.1.9")
    _, data = run_analysis(make_pcap(pkts, step_ns=500_000_000))
    (f,) = data["findings"]
    assert f["title"] == (
        "4 connections from 2 clients to 10.96.0.20:80 never answered (8 tries over 3.5 s): "
        "last seen at capture0"
    )
    assert len(f["flows"]) == 4
    # the first tries of each connection, not every retry of the first one
    assert [e["packet"] for e in f["evidence"]] == [1, 2, 3, 4, 5, 6, 7, 8]


def test_retransmitting_connections_to_one_server_are_one_finding(make_pcap: Make) -> None:
    pkts: list[object] = []
    for sport in (40001, 40002):
        session = tcp_session(sport=sport)
        pkts += session[:4] + [session[3]] * 3 + session[4:]
    _, data = run_analysis(make_pcap(pkts))
    (f,) = data["findings"]
    assert f["id"] == "tcp.retransmissions"
    assert f["title"] == "6 retransmissions in 2 connections to 10.0.1.5:80"
    assert len(f["flows"]) == 2


def test_a_syn_never_retried_is_not_evidence_either_way(make_pcap: Make) -> None:
    """One SYN, then three more seconds of capture in which the client never tried again:
    it may have given up before its retry was due, or the answer may be lost. Neither a
    network drop (HIGH) nor capture loss (INFO) is claimed."""
    syn = Ether() / IP(src="10.244.0.5", dst="10.96.0.20") / TCP(sport=45000, dport=80, flags="S")
    later = [tcp_session(client="10.244.0.5", server="10.244.1.9", sport=46000 + k) for k in (1, 2)]
    pkts = [syn] + [p for s in later for p in s][:12]
    _, data = run_analysis(make_pcap(pkts, step_ns=250_000_000))
    (f,) = data["findings"]
    assert (f["id"], f["severity"]) == ("tcp.syn-unanswered", "low")
    assert "never sent again" in f["title"]
    assert "One try is not enough to tell a drop from a client that stopped waiting" in " ".join(
        f["explanation"].split()
    )


def test_a_handshake_the_capture_half_missed_is_capture_loss(make_pcap: Make) -> None:
    """The SYN/ACK is missing but the client went on (its ACK and request): an answer came,
    the capture did not record it."""
    session = tcp_session(client="10.244.0.5", server="10.244.1.9", sport=45000)
    later = tcp_session(client="10.244.0.5", server="10.244.1.9", sport=46001)
    pkts = [session[0], session[2], session[3]] + later
    _, data = run_analysis(make_pcap(pkts, step_ns=250_000_000))
    (f,) = [f for f in data["findings"] if f["id"] == "tcp.syn-unanswered"]
    assert f["severity"] == "info"
    assert "the capture missed the answer, not the network" in f["title"]


def test_a_syn_at_the_end_of_its_capture_is_not_judged(make_pcap: Make) -> None:
    syn = Ether() / IP(src="10.244.0.5", dst="10.96.0.20") / TCP(sport=45000, dport=80, flags="S")
    # live mode: the file has been written up to the SYN; its answer may be on its way
    _, data = run_analysis(make_pcap(tcp_session(client="10.244.0.5", server="10.244.1.9") + [syn]))
    assert data["findings"] == []


def test_refused_connections_and_rst_storm(make_pcap: Make) -> None:
    pkts = []
    for k in range(12):
        c = Ether() / IP(src="10.0.0.1", dst="10.0.0.2")
        s = Ether() / IP(src="10.0.0.2", dst="10.0.0.1")
        pkts += [
            c / TCP(sport=30000 + k, dport=8080, flags="S", seq=1),
            s / TCP(sport=8080, dport=30000 + k, flags="RA", seq=0, ack=2),
        ]
    _, data = run_analysis(make_pcap(pkts))
    (f,) = data["findings"]
    assert f["id"] == "tcp.rst" and f["severity"] == "high"
    assert f["title"] == "12 connections refused by 10.0.0.2:8080"


def test_a_broken_plugin_is_reported_not_fatal(make_pcap: Make) -> None:
    class Broken:
        id = "test.broken"

        def run(self, analysis):  # type: ignore[no-untyped-def]
            raise RuntimeError("boom")

    report, _ = run_analysis(make_pcap(tcp_session()))
    findings, errors = run_checks(report.analysis, [Broken(), *load_checks()])
    assert findings == [] and errors[0].check == "test.broken" and "boom" in errors[0].message


def test_drops_of_one_cause_and_place_are_one_finding(make_pcap: Make) -> None:
    """Connections lose their request (and its retransmission) between the same two points:
    one path.drop naming the count, not one per connection."""
    sessions = [
        tcp_session(client=c, sport=p, server="10.0.1.5")
        for c, p in (("10.0.0.1", 40001), ("10.0.0.1", 40002), ("10.0.0.2", 40003))
    ]
    at_a = [pkt for s in sessions for pkt in [*s[:4], s[3]]]
    step = 400_000_000
    a = make_pcap(at_a, name="node-a.pcap", step_ns=step)
    # the second point sees the handshakes, never the requests (4th and 5th of each five)
    b = make_pcap(
        [(ts + 50_000, raw) for k, (ts, raw) in enumerate(frames(at_a, step)) if k % 5 < 3],
        name="node-b.pcap",
    )
    _, data = run_analysis(a, b)
    drops = [f for f in data["findings"] if f["id"] == "path.drop"]
    assert len(drops) == 1, [f["title"] for f in drops]
    (f,) = drops
    # the last connection's ones came after node-b's capture ended: not judged
    assert f["title"].startswith("4 packets to 10.0.1.5:80 dropped between node-a and node-b")
    assert f["severity"] == "high"
    assert len(f["flows"]) == 2 and "2 connections" in f["explanation"]
    assert {e["point"] for e in f["evidence"]} == {"node-a"}


def test_segments_acknowledged_but_not_recorded_are_capture_loss(make_pcap: Make) -> None:
    """The second point misses requests the server answered and the client never resent:
    the capture lost them, not the network."""
    sessions = [tcp_session(sport=p, server="10.0.1.5") for p in (40001, 40002)]
    at_a = [pkt for s in sessions for pkt in s]
    step = 400_000_000
    a = make_pcap(at_a, name="node-a.pcap", step_ns=step)
    b = make_pcap(
        [(ts + 50_000, raw) for k, (ts, raw) in enumerate(frames(at_a, step)) if k % 8 != 3],
        name="node-b.pcap",
    )
    _, data = run_analysis(a, b)
    (f,) = [f for f in data["findings"] if f["id"] == "path.drop"]
    assert f["severity"] == "info"
    assert f["title"] == (
        "2 packets to 10.0.1.5:80 not recorded at node-b: never retransmitted, so they arrived "
        "(capture loss, not network loss)"
    )


def test_dual_stack_inventories_name_both_families() -> None:
    from ktrace.analysis.names import Names
    from ktrace.bundle.inventory import Inventory

    names = Names.from_inventory(
        Inventory.parse(
            {
                "pods": [
                    {
                        "name": "web-2",
                        "namespace": "default",
                        "ip": "10.244.1.2",
                        "ips": ["10.244.1.2", "fd00:10:244:1::2"],
                        "node": "node-b",
                    }
                ],
                "services": [
                    {
                        "name": "web",
                        "namespace": "default",
                        "clusterIP": "10.96.0.20",
                        "clusterIPs": ["10.96.0.20", "fd00:10:96::14"],
                    }
                ],
                "endpointslices": [  # one per family, as the EndpointSlice controller makes them
                    {"service": "web", "namespace": "default", "endpoints": [e]}
                    for e in (
                        {"ip": "10.244.1.2", "node": "node-b", "ready": True},
                        {"ip": "fd00:10:244:1::2", "node": "node-b", "ready": True},
                    )
                ],
            }
        )
    )
    assert names.label("[fd00:10:244:1::2]:80") == "[fd00:10:244:1::2]:80 (default/web-2)"
    assert names.label("[fd00:10:96::14]:80") == "[fd00:10:96::14]:80 (svc default/web)"
    assert names.endpoint_nodes["fd00:10:96::14"] == frozenset({"node-b"})


def test_icmpv6_port_unreachable_answers_the_syn_it_quotes(make_pcap: Make) -> None:
    from scapy.layers.inet6 import ICMPv6DestUnreach, IPv6

    syn = (
        Ether()
        / IPv6(src="fd00:10:244::2", dst="fd00:10:96::20")
        / TCP(sport=45000, dport=80, flags="S")
    )
    reject = (
        Ether()
        / IPv6(src="fd00:10:244::1", dst="fd00:10:244::2")
        / ICMPv6DestUnreach(code=4)
        / bytes(syn[IPv6])
    )
    pkts = [syn, reject] * 2 + tcp_session(client="10.244.0.5", server="10.244.1.9")
    _, data = run_analysis(make_pcap(pkts, step_ns=500_000_000))
    (f,) = data["findings"]
    assert (f["id"], f["severity"]) == ("svc.no-endpoints", "high")
    assert f["title"] == ("connections to [fd00:10:96::20]:80 rejected with ICMP port unreachable")


def _resent_download(client: str, server: str) -> list[object]:
    """A server's eight segments to its client, four of them sent again after the rest."""
    c, s = Ether() / IP(src=client, dst=server), Ether() / IP(src=server, dst=client)
    handshake = tcp_session(client, server)[:3]
    cs, ss = handshake[2][TCP].seq, handshake[2][TCP].ack
    data = [s / TCP(sport=80, dport=40000, flags="A", seq=ss + 100 * k, ack=cs) / (b"x" * 100)
            for k in range(8)]  # fmt: skip
    ack = c / TCP(sport=40000, dport=80, flags="A", seq=cs, ack=ss + 800)
    return [*handshake, *data, ack, *data[2:6], ack]


def test_resends_of_segments_that_all_reached_their_receiver_are_no_loss(make_pcap: Make) -> None:
    """Captured at both ends at once: the server sent four segments twice. Where the
    client's capture shows each of them twice too, every copy arrived (a late ACK, a reply
    held up): no loss, though the server's interface shows the resends. Where it shows them
    once, the first copies were lost on the way: the finding. Also when the client reached
    the server through a Service address (one conversation, a flow on each side of the NAT).
    Each capture has another connection of its own end, which tells whose interface it is."""
    client, server = "10.0.0.1", "10.0.1.5"
    download = _resent_download(client, server)
    at_server = download + tcp_session("10.0.0.7", server, sport=41000)
    server_pcap = make_pcap(at_server, name="server.pcap")

    def at_client(packets: list[object], name: str) -> Path:
        return make_pcap(packets + tcp_session(client, "10.0.2.9", sport=41001), name=name)

    _, data = run_analysis(server_pcap)
    assert "tcp.retransmissions" in ids(data)  # the server's side alone: they count
    _, data = run_analysis(server_pcap, at_client(download, "both.pcap"))
    assert "tcp.retransmissions" not in ids(data)
    first_lost = [p for k, p in enumerate(download) if not 5 <= k <= 8]  # data[2:6] once
    _, data = run_analysis(server_pcap, at_client(first_lost, "once.pcap"))
    found = [f for f in data["findings"] if f["id"] == "tcp.retransmissions"]
    assert len(found) == 1 and found[0]["title"].startswith("4 retransmissions")
    through = at_client(_resent_download(client, "10.96.0.20"), "vip.pcap")
    _, data = run_analysis(server_pcap, through)
    joined = [p for p in data["paths"] if "10.96.0.20:80" in p["conversation"]]
    assert len(joined) == 1 and len(joined[0]["flows"]) == 2
    assert "tcp.retransmissions" not in ids(data)
    # a server capture of this conversation alone could be on either end of it: its copies
    # tell nothing of what arrived, and the first copies' loss at the client still counts
    alone = make_pcap(download, name="server-alone.pcap")
    _, data = run_analysis(alone, at_client(first_lost, "once-again.pcap"))
    assert "tcp.retransmissions" in ids(data)


def test_a_bundles_pods_are_their_receivers_whatever_their_traffic(
    make_pcap: Make, tmp_path: Path
) -> None:
    """In a bundle, a point on a pod whose addresses the inventory lists is that pod's
    receiving interface, though it saw one conversation only: the server's resends that
    all arrived at the client's capture (a reply held up) are no loss."""
    client, server = "10.0.0.1", "10.0.1.5"
    download = _resent_download(client, server)
    bundle = tmp_path / "bundle"
    (bundle / "points").mkdir(parents=True)
    points = []
    for pod, node in (("client", "node-a"), ("web", "node-b")):
        path = make_pcap(download, name=f"{pod}-eth0.pcap")
        path.rename(bundle / "points" / path.name)
        where = {"node": node, "namespace": "default", "pod": pod, "linktype": 1}
        points.append({"id": f"{pod}-eth0", "kind": "pod", "file": f"points/{path.name}", **where})
    (bundle / "manifest.json").write_text(json.dumps({"points": points}))
    pods = [{"name": "client", "namespace": "default", "ip": client, "node": "node-a"},
            {"name": "web", "namespace": "default", "ip": server, "node": "node-b"}]  # fmt: skip
    (bundle / "inventory.json").write_text(json.dumps({"pods": pods}))
    _, data = run_analysis(bundle)
    assert [f["retransmissions"] for f in data["flows"]] == [4]
    assert "tcp.retransmissions" not in ids(data)
    (bundle / "inventory.json").write_text(json.dumps({"pods": []}))
    _, data = run_analysis(bundle)  # no inventory: the points' ends are not known
    assert "tcp.retransmissions" in ids(data)


def test_segments_seen_twice_on_their_receivers_interface_are_no_loss(make_pcap: Make) -> None:
    """At the receiver's own interface a segment seen again had arrived the first time: the
    sender resent what was not lost (reordering, a late ACK), and retransmission at the
    sender's interface, or anywhere on the way, still counts. Each capture has another
    connection of its own end, which tells whose interface it is; the client is dual-stack,
    with a connection of its IPv6 address too."""
    client, server = "10.0.0.1", "10.0.1.5"
    v6 = [Ether() / IPv6(src="fd00::1", dst="fd00::9") / p[TCP] for p in tcp_session(sport=42000)]
    at_client = _resent_download(client, server) + tcp_session(client, "10.0.2.9", sport=41000) + v6
    at_server = _resent_download(client, server) + tcp_session("10.0.0.7", server, sport=41000)
    _, data = run_analysis(make_pcap(at_client, name="client.pcap"))
    resent = [f for f in data["flows"] if f["retransmissions"]]
    assert [f["retransmissions"] for f in resent] == [4]  # the flow table counts them all
    assert "tcp.retransmissions" not in ids(data)
    _, data = run_analysis(make_pcap(at_server, name="server.pcap"))
    assert "tcp.retransmissions" in ids(data)


def test_an_address_dns_hands_out_that_a_router_says_is_unreachable(make_pcap: Make) -> None:
    """A headless Service's name still resolves to a deleted pod's address: each SYN is
    answered by a router's ICMP host unreachable. One HIGH finding says which address, who
    answered, that DNS handed it out and for which Service, and that no pod has it now."""
    from scapy.layers.dns import DNS, DNSQR, DNSRR
    from scapy.layers.inet import ICMP, UDP

    name = "web-hl.default.svc.cluster.local"
    ask = Ether() / IP(src="10.244.0.5", dst="10.96.0.10") / UDP(sport=40000, dport=53)
    answer = Ether() / IP(src="10.96.0.10", dst="10.244.0.5") / UDP(sport=53, dport=40000)
    packets = [
        ask / DNS(id=7, rd=1, qd=DNSQR(qname=name)),
        answer / DNS(id=7, qr=1, qd=DNSQR(qname=name), an=DNSRR(rrname=name, rdata="10.244.2.9")),
    ]
    for k in range(3):
        syn = IP(src="10.244.0.5", dst="10.244.2.9", id=100 + k) / TCP(
            sport=41000, dport=80, flags="S", seq=1000
        )
        router = IP(src="10.244.2.1", dst="10.244.0.5") / ICMP(type=3, code=1) / bytes(syn)[:28]
        packets += [Ether() / syn, Ether() / router]
    packets += tcp_session(client="10.244.0.5", server="10.244.1.7")  # the capture goes on
    inventory = {
        "pods": [{"namespace": "default", "name": "client", "ip": "10.244.0.5", "node": "a"}],
        "services": [],
        "endpointslices": [],
        "nodes": [],
    }
    path = make_pcap(packets, step_ns=500_000_000, name="client-eth0.pcap")
    bundle = path.parent / "bundle"
    (bundle / "points").mkdir(parents=True)
    path.rename(bundle / "points" / path.name)
    (bundle / "inventory.json").write_text(json.dumps(inventory))
    point = {"id": "client-eth0", "kind": "pod", "file": f"points/{path.name}"}
    (bundle / "manifest.json").write_text(json.dumps({"points": [point]}))
    _, data = run_analysis(bundle)
    (f,) = [x for x in data["findings"] if x["severity"] == "high"]
    assert (f["id"], f["severity"]) == ("net.unreachable", "high")
    assert f["title"] == (
        "10.244.2.9 cannot be reached: host unreachable from 10.244.2.1, handed out by DNS for "
        f"{name}"
    )
    text = " ".join(f["explanation"].split())
    assert "3 attempts to reach 10.244.2.9 (port 80)" in text
    assert f"for {name} (Service default/web-hl)" in text
    assert "No pod, Service or node in the inventory has this address now" in text
