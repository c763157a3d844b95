"""DNS: the parser's defences and the pairing of queries with responses."""

from __future__ import annotations

import json
import random
import struct
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from ktrace import chunking, kernels
from ktrace.analysis.dns import DnsTransaction, dns_rows, dns_transactions
from ktrace.analysis.dns import _located as dns_located
from ktrace.analysis.dns_patterns import (
    RETRY_AFTER_NS,
    client_ip,
    fails_more,
    is_cluster_name,
    label_prefixes,
    search_base,
)
from ktrace.bundle.inputs import read_inputs
from ktrace.decode.dns import COMPRESSED, DnsError, parse_dns, question, read_name
from ktrace.decode.index import PacketIndex, build_index
from ktrace.kernels import dns_questions
from ktrace.report.json_report import json_chunks
from tests.helpers import CLIENT, LAB, PCAPS, SERVER, T0, answer, c_parts, query, run_analysis

Make = Callable[..., Path]


def test_parse_answer_records() -> None:
    msg = parse_dns(bytes(answer("web.default.svc.cluster.local")[DNS]))
    assert (msg.id, msg.response, msg.rcode, msg.qname, msg.qtype) == (
        1,
        True,
        0,
        "web.default.svc.cluster.local",
        "A",
    )
    assert [(a.type, a.data, a.ttl) for a in msg.answers] == [("A", "10.96.0.20", 30)]


def test_compression_loop_is_an_error_not_a_hang() -> None:
    header = struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0)
    loop = header + b"\xc0\x0c" + b"\x00\x01\x00\x01"  # name points at itself
    with pytest.raises(DnsError, match="loop"):
        parse_dns(loop)
    two = header + b"\x01a\xc0\x0e" + b"\x00\x01\x00\x01"  # a -> pointer back to "a"
    with pytest.raises(DnsError):
        parse_dns(two)


def test_pointer_out_of_bounds_and_truncated_records() -> None:
    header = struct.pack("!HHHHHH", 7, 0x8180, 1, 1, 0, 0)
    question = b"\x03www\x00\x00\x01\x00\x01"
    oob = header + question + b"\xc0\xff" + b"\x00\x01\x00\x01" + b"\0\0\0\x1e\x00\x04"
    msg = parse_dns(oob)  # the question survives; the bad record ends the parse
    assert msg.qname == "www" and msg.answers == () and not msg.complete
    cut = header + question + b"\xc0\x0c\x00\x01"
    assert not parse_dns(cut).complete
    with pytest.raises(DnsError, match="shorter than a DNS header"):
        parse_dns(b"\x00\x01")
    with pytest.raises(DnsError):
        read_name(b"\x3fabc", 0)  # label longer than the message


def test_transactions_pair_retry_and_unanswered(make_pcap: Make) -> None:
    pkts = [
        query("web.default.svc.cluster.local", ident=1),
        query("web.default.svc.cluster.local", "AAAA", ident=2),
        answer("web.default.svc.cluster.local", ident=1),
        # AAAA is retried with the same id and then answered
        query("web.default.svc.cluster.local", "AAAA", ident=2),
        answer("web.default.svc.cluster.local", "AAAA", ident=2, rdata=None),
        query("nope.example.com", ident=3, sport=40200),
        answer("nope.example.com", ident=3, rcode=3, rdata=None, sport=40200),
        query("lost.example.com", ident=4, sport=40300),
    ] + [query("filler.example.com", ident=9, sport=50000 + k) for k in range(3)]
    _, data = run_analysis(make_pcap(pkts, step_ns=500_000_000))
    dns = {(d["qname"], d["qtype"]): d for d in data["dns"]}
    a = dns[("web.default.svc.cluster.local", "A")]
    assert (a["rcode"], a["answered"], a["latency_ms"], a["answers"]) == (
        "NOERROR",
        True,
        1000.0,
        ["10.96.0.20"],
    )
    aaaa = dns[("web.default.svc.cluster.local", "AAAA")]
    assert aaaa["retries"] == 1 and aaaa["latency_ms"] == 1500.0 and aaaa["answers"] == []
    assert dns[("nope.example.com", "A")]["rcode"] == "NXDOMAIN"
    lost = dns[("lost.example.com", "A")]
    assert not lost["answered"] and lost["rcode"] is None and lost["latency_ms"] is None
    assert (lost["client"], lost["server"]) == (f"{CLIENT}:40300", f"{SERVER}:53")


def test_dns_over_tcp(make_pcap: Make) -> None:
    q = bytes(DNS(id=5, qd=DNSQR(qname="big.example.com", qtype="TXT")))
    r = bytes(
        DNS(
            id=5,
            qr=1,
            qd=DNSQR(qname="big.example.com", qtype="TXT"),
            an=DNSRR(rrname="big.example.com", type="TXT", rdata="x" * 100),
        )
    )
    c, s = Ether() / IP(src=CLIENT, dst=SERVER), Ether() / IP(src=SERVER, dst=CLIENT)
    pkts = [
        c / TCP(sport=33000, dport=53, flags="PA", seq=1) / (struct.pack("!H", len(q)) + q),
        s / TCP(sport=53, dport=33000, flags="PA", seq=1) / (struct.pack("!H", len(r)) + r),
    ]
    _, data = run_analysis(make_pcap(pkts))
    (d,) = data["dns"]
    assert (d["transport"], d["qtype"], d["answered"]) == ("tcp", "TXT", True)


def test_dns_over_tcp_resumes_after_a_hole_and_a_capture_begun_mid_message(
    make_pcap: Make,
) -> None:
    """Messages are read from the stream: a capture that begins inside one finds the next
    whole one, a lost segment costs the messages it held a part of and no more, and bytes
    that read as no DNS sent that way (an answer on the asking side) are not taken."""
    asked = [DNS(id=k, rd=1, qd=DNSQR(qname=f"q{k}.example")) for k in range(1, 7)]
    wire = [struct.pack("!H", len(bytes(m))) + bytes(m) for m in asked]
    stray = bytes(DNS(id=9, qr=1, qd=DNSQR(qname="x.example")))  # an answer, sent the wrong way
    wire.append(struct.pack("!H", len(stray)) + stray)
    offsets = np.cumsum([0, *map(len, wire)]).tolist()
    c = Ether() / IP(src=CLIENT, dst=SERVER)

    def segment(lo: int, hi: int) -> object:
        data = b"".join(wire)[lo:hi]
        return c / TCP(sport=33001, dport=53, flags="PA", seq=5000 + lo) / data

    pkts = [
        segment(10, offsets[2]),  # the capture began inside message 1: message 2 is whole
        segment(offsets[2], offsets[3] + 7),  # message 3, and the head of message 4 ...
        # ... whose tail was lost with the head of message 5
        segment(offsets[4] + 5, offsets[5] + 3),  # the tail of message 5, the head of 6
        segment(offsets[5] + 3, offsets[6]),  # the rest of message 6
        segment(offsets[6], offsets[7]),  # the stray answer
    ]
    _, data = run_analysis(make_pcap(pkts))
    assert [d["id"] for d in data["dns"]] == [2, 3, 6]
    assert (data["dns_orphan_responses"], data["dns_malformed"]) == (0, 1)  # the stray's


def test_malformed_dns_packets_are_counted_not_fatal(make_pcap: Make) -> None:
    bad = Ether() / IP(src=CLIENT, dst=SERVER) / UDP(sport=1, dport=53) / b"\x00\x01\x02"
    loop = (
        Ether()
        / IP(src=CLIENT, dst=SERVER)
        / UDP(sport=1, dport=53)
        / (struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"\xc0\x0c\x00\x01\x00\x01")
    )
    _, data = run_analysis(make_pcap([bad, loop, query("ok.example.com")]))
    assert data["dns_malformed"] == 2
    assert [d["qname"] for d in data["dns"]] == ["ok.example.com"]


def test_search_chains_group_by_the_name_the_application_asked(make_pcap: Make) -> None:
    from ktrace.analysis.views import dns_lookups

    asked = [  # (qname, rcode): "web" answered at once, then "web.default" via its chain
        ("web.default.svc.cluster.local", 0),
        ("web.default.default.svc.cluster.local", 3),
        ("web.default.svc.cluster.local", 0),
    ]
    pkts = []
    for k, (name, rcode) in enumerate(asked):
        pkts += [
            query(name, ident=k, sport=40000 + k),
            answer(
                name, ident=k, rcode=rcode, rdata=None if rcode else "10.96.0.20", sport=40000 + k
            ),
        ]
    result, _ = run_analysis(make_pcap(pkts))
    lookups = [(r.lookup, r.transaction.qname) for r in dns_lookups(result.analysis)]
    assert lookups == [
        ("web.default.svc.cluster.local", "web.default.svc.cluster.local"),
        ("web.default", "web.default.default.svc.cluster.local"),
        ("web.default", "web.default.svc.cluster.local"),
    ]


def _reference_pairs(index: PacketIndex) -> tuple[list[tuple[object, ...]], int, int]:
    """Queries paired with responses one message at a time, in packet order: what the bulk
    reader and pairing must reproduce exactly."""
    c = index.columns
    pending: dict[tuple[object, ...], list[int]] = {}
    done: list[tuple[list[int], int | None]] = []
    malformed = orphans = 0
    port = (c.sport == 53) | (c.dport == 53)
    for row in np.flatnonzero(port & ((c.proto == 6) | (c.proto == 17))).tolist():
        data = index.payload(row)
        if int(c.proto[row]) == 6:
            data = data[2 : 2 + int.from_bytes(data[:2], "big")]
        try:
            ident, flags, qwire, qtype = question(data)
            if qtype == COMPRESSED:
                qwire = parse_dns(data).qname.lower().encode()
        except DnsError:
            malformed += 1
            continue
        l3 = int(c.l3[row])
        a = (index.address(l3, int(c.src[row])), int(c.sport[row]))
        b = (index.address(l3, int(c.dst[row])), int(c.dport[row]))
        response = bool(flags & 0x8000)
        client, server = (b, a) if response else (a, b)
        key = (int(c.point[row]), int(c.proto[row]), client, server, ident, qwire.lower(), qtype)
        if not response:
            pending.setdefault(key, []).append(row)
        elif key in pending:
            done.append((pending.pop(key), row))
        else:
            orphans += 1
    done += [(rows, None) for rows in pending.values()]
    ts = c.ts.tolist()
    out = sorted(((ts[q[0]], tuple(q), r) for q, r in done), key=lambda e: (e[0], e[1][0]))
    return [(q, r) for _, q, r in out], malformed, orphans


@pytest.mark.parametrize(
    ("compiled", "threads"), [(True, 1), (True, 3), (False, 1)], ids=["C", "C-threads", "numpy"]
)
def test_bulk_pairing_matches_one_message_at_a_time(
    make_pcap: Make, compiled: bool, threads: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Retries, repeated ids, names differing only in case, compressed first names, names
    longer than the bulk window, no question, DNS over TCP and over IPv6, garbage on port 53,
    responses without query and a last message cut by the end of the file; read by the C loop
    (in one thread, and split across three) and by the numpy path."""
    if compiled and dns_questions._C is None:
        pytest.skip("the C loop was not built")
    monkeypatch.setattr(kernels, "_use_c", compiled)
    monkeypatch.setattr(chunking, "THREADED_MIN", 0)
    monkeypatch.setattr(chunking, "cores", lambda reserve=0: threads)
    rng = random.Random(7)
    long_name = ".".join(["label-of-thirty-one-characters-x"] * 5)  # 165 wire bytes
    names = ["web.default.svc.cluster.local", "WEB.default.svc.cluster.local", long_name, "a.b"]
    pkts: list[object] = []
    stream_at: dict[int, int] = {}  # per client port: its TCP stream's next sequence number
    for k in range(600):
        name, ident = rng.choice(names), rng.randrange(4)
        sport = 40000 + rng.randrange(3)
        kind = rng.random()
        if kind < 0.45:
            pkts.append(query(name, rng.choice(["A", "AAAA"]), ident, sport))
        elif kind < 0.85:
            pkts.append(answer(name, "A", ident, rcode=rng.choice([0, 3]), sport=sport))
        elif kind < 0.9:  # a first name that is a compression pointer: legal, decoded to pair
            header = struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0)
            body = header + b"\xc0\x12\x00\x01\x00\x01" + b"\x01a\x00"
            pkts.append(Ether() / IP(src=CLIENT, dst=SERVER) / UDP(sport=sport, dport=53) / body)
        elif kind < 0.92:  # no question: an inverse query, a FORMERR answer
            flags = rng.choice([0x0800, 0x8001])
            header = struct.pack("!HHHHHH", ident, flags, 0, 0, 0, 0)
            side = (CLIENT, SERVER, sport, 53) if flags == 0x0800 else (SERVER, CLIENT, 53, sport)
            ip, udp = IP(src=side[0], dst=side[1]), UDP(sport=side[2], dport=side[3])
            pkts.append(Ether() / ip / udp / header)
        elif kind < 0.95:
            junk = bytes(rng.randrange(256) for _ in range(k % 60))
            pkts.append(Ether() / IP(src=CLIENT, dst=SERVER) / UDP(sport=sport, dport=53) / junk)
        else:
            msg = bytes(query(name, "A", ident, sport)[DNS])
            wire = struct.pack("!H", len(msg)) + msg
            seq = stream_at.get(sport, 1000)
            stream_at[sport] = seq + len(wire)
            pkts.append(
                Ether(dst="02:00:00:00:00:0a")  # scapy would solicit fd00::a's address
                / IPv6(src="fd00::5", dst="fd00::a")
                / TCP(sport=sport, dport=53, flags="PA", seq=seq)
                / wire
            )
    cut = bytes(answer(long_name, "A", 3, sport=40000))
    frames = [(T0 + k * 1_000_000, bytes(p)) for k, p in enumerate(pkts)]  # type: ignore[call-overload]
    path = make_pcap([*frames, (T0 + 10**9, cut[:-7])])
    with build_index([path], workers=1) as index:
        result = dns_transactions(index)
        expected, malformed, orphans = _reference_pairs(index)
    got = [(t.queries, t.response) for t in result.transactions]
    assert got == expected
    assert (result.malformed, result.orphan_responses) == (malformed, orphans)
    assert malformed > 0 and orphans > 0 and any(len(q) > 1 for q, _ in got)
    assert {t.transport for t in result.transactions} == {"udp", "tcp"}
    assert long_name in {t.qname for t in result.transactions}


@pytest.mark.parametrize(
    "capture",
    [PCAPS / "http-dns.pcap", PCAPS / "dns-blackhole.pcap", LAB / "dns-search", LAB / "dns-slow",
     LAB / "dns-upstream-down", LAB / "dns-aaaa-drop"],
    ids=lambda p: p.name,
)  # fmt: skip
def test_c_and_numpy_questions_give_the_same_transactions(
    capture: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if dns_questions._C is None:
        pytest.skip("the C loop was not built")
    found = []
    for compiled in (True, False):
        with c_parts(compiled), build_index(read_inputs([capture]).files, workers=1) as index:
            result = dns_transactions(index)
            found.append((list(result.transactions), result.malformed, result.orphan_responses))
    assert found[0] == found[1] and found[0][0]


def test_c_and_numpy_hash_every_byte_of_names_and_bodies_alike(make_pcap: Make) -> None:
    """Names of bytes around and inside A-Z and a-z and past 0x7f, at every place in a
    word, asked again in other cases: the C loop reads eight bytes a step and lowercases
    them together, numpy a column at a time. Their hashes are built differently, but both
    must tell apart exactly the names that differ once ASCII letters are lowercased, and
    the messages that differ, with the same fields."""
    if dns_questions._C is None:
        pytest.skip("the C loop was not built")
    rng = random.Random(3)
    near = [b"@`", b"[{", b"Zz", b"Aa", b"\xc1\xe1", b"\xda\xfa", b"\x7f\xff", b"09"]
    labels = [b"q" * at + bytes([c]) + b"r" for pair in near for c in pair for at in range(12)]
    names = [[x] for x in labels] + [[rng.choice(labels), rng.choice(labels)] for _ in range(99)]
    pkts = []
    for k, name in enumerate(names * 2):
        wire = b"".join(bytes([len(x)]) + x for x in name) + b"\0"
        question = wire + struct.pack("!HH", rng.choice([1, 28]), 1)
        body = struct.pack("!HHHHHH", k, 0x0100, 1, 0, 0, 0) + question
        pkts.append(Ether() / IP(src=CLIENT, dst=SERVER) / UDP(sport=40000, dport=53) / body)
    with build_index([make_pcap(pkts)], workers=1) as index:
        point, start, size = dns_located(index, dns_rows(index))
        read = [dns_questions.read_questions(index.mapped, point, start, size)]
        with c_parts(False):
            read.append(dns_questions.read_questions(index.mapped, point, start, size))
    c, numpy_read = read
    assert c.ok.all()
    for field in ("ident", "flags", "qtype", "ok"):
        assert np.array_equal(getattr(c, field), getattr(numpy_read, field)), field

    def seen(keys: list[object]) -> list[int]:
        first: dict[object, int] = {}
        return [first.setdefault(k, len(first)) for k in keys]

    lowered = seen([tuple(x.lower() for x in name) for name in names * 2])
    assert seen([tuple(h) for h in c.name.tolist()]) == lowered
    assert seen([tuple(h) for h in numpy_read.name.tolist()]) == lowered
    bodies = seen([bytes(p[UDP].payload)[2:] for p in pkts])
    assert seen([tuple(h) for h in c.body.tolist()]) == bodies
    assert seen([tuple(h) for h in numpy_read.body.tolist()]) == bodies


@pytest.mark.parametrize(
    "name", [b'we"ird.example', b"back\\slash.example", b"caf\xc3\xa9.example", b"tab\tname.x"]
)
def test_streamed_json_is_the_result(make_pcap: Make, name: bytes) -> None:
    """--json writes the DNS rows a slice at a time; the text must read back as the result,
    for names that need escapes, unanswered queries (nulls) and latencies."""
    labels = b"".join(bytes([len(p)]) + p for p in name.split(b".")) + b"\0"
    body = struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + labels + b"\0\x01\0\x01"
    weird = Ether() / IP(src=CLIENT, dst=SERVER) / UDP(sport=40000, dport=53) / body
    web = "web.default.svc.cluster.local"
    result, data = run_analysis(make_pcap([weird, query(web, ident=9), answer(web, ident=9)]))
    text = b"".join(json_chunks(result))
    assert json.loads(text) == data
    assert text == orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS)  # the very bytes
    assert {d["qname"] for d in data["dns"]} == {web, parse_dns(bytes(body)).qname}
    assert [d["latency_ms"] is None for d in data["dns"]] == [True, False]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2), st.booleans()), max_size=40),
    st.sampled_from([0, 1, 40, 61]),
    st.sampled_from([3, 7, 1 << 16]),
)
def test_pairing_order_is_the_two_key_order_with_file_order_among_equals(
    messages: list[tuple[int, int, bool]], shift: int, chunk: int
) -> None:
    """Keys drawn from a few values so that the first key ties while the second differs:
    the sort by the first key alone must then give way to both. Shifted, the first keys
    differ (61, 40) or not (0, 1) in the top bits the fast sort packs with positions."""
    from ktrace.analysis.dns import _pair

    k1 = np.array([a << shift for a, _, _ in messages], np.uint64)
    k2 = np.array([b for _, b, _ in messages], np.uint64)
    response = np.array([r for _, _, r in messages], bool)
    with mock.patch.object(chunking, "CHUNK", chunk):  # keys read across chunk bounds
        got = _pair(k1, k2, response)
    order = np.lexsort((np.arange(len(k1)), k2, k1)).tolist()
    assert got.order.tolist() == order
    # runs: queries of one key, closed by the response that follows
    runs: list[tuple[int, int, bool]] = []  # (begin, queries, answered)
    for at, k in enumerate(order):
        before = order[at - 1] if at else None
        if before is None or (k1[k], k2[k]) != (k1[before], k2[before]) or response[before]:
            runs.append((at, 0, False))
        begin, queries, _ = runs[-1]
        runs[-1] = (begin, queries, True) if response[k] else (begin, queries + 1, False)
    assert got.begin.tolist() == [b for b, _, _ in runs]
    assert got.queries.tolist() == [q for _, q, _ in runs]
    assert got.answered.tolist() == [a for _, _, a in runs]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2)), max_size=60), st.booleans())
def test_distinct_messages_numbered_by_one_word_as_by_both(
    hashes: list[tuple[int, int]], big: bool
) -> None:
    """Message hashes numbered through their first word, confirmed by the second, give the
    ids and first copies that sorting both words gives, also when a first word is shared."""
    from ktrace.analysis.dns import _distinct, _distinct_sorting

    scale = 1 << 62 if big else 1
    first = np.array([a * scale for a, _ in hashes], np.uint64)
    second = np.array([b for _, b in hashes], np.uint64)
    with mock.patch.object(chunking, "CHUNK", 5):  # confirmed across chunk bounds
        ids, firsts = _distinct(first, second)
    want_ids, want_firsts = _distinct_sorting(first, second)
    assert ids.tolist() == want_ids.tolist() and firsts.tolist() == want_firsts.tolist()


def test_transactions_of_the_same_instant_are_in_file_order(make_pcap: Make) -> None:
    """Queries from several clients stamped alike (a coarse clock, a burst) are listed as
    they were captured, not in the order their pairing keys happened to sort."""
    pkts = [query(f"n{k}.example", ident=k, sport=40000 + k) for k in range(12)]
    _, data = run_analysis(make_pcap(pkts, step_ns=0))
    assert [d["qname"] for d in data["dns"]] == [f"n{k}.example" for k in range(12)]


def _reference_picture(
    primary: list[DnsTransaction], domain: str, packet_ts: np.ndarray
) -> tuple[dict[tuple[str, str], list[int]], dict[tuple[str, str], list[int]], list[int]]:
    """The DNS picture worked out one transaction at a time (first query packets)."""
    by_client: dict[str, list[DnsTransaction]] = {}
    for t in primary:
        by_client.setdefault(client_ip(t), []).append(t)
    expansions: dict[tuple[str, str], list[int]] = {}
    race: dict[tuple[str, str], list[int]] = {}
    for client, ts in by_client.items():
        asked = {t.qname for t in ts}
        prefixes = label_prefixes(asked)
        for t in ts:
            base = search_base(t.qname, asked, prefixes)
            if t.rcode == "NXDOMAIN" and base is not None:
                expansions.setdefault((client, base), []).append(t.queries[0])
        by_name: dict[str, list[DnsTransaction]] = {}
        for t in ts:
            by_name.setdefault(t.qname, []).append(t)
        for name, group in by_name.items():
            a = [t for t in group if t.qtype == "A"]
            aaaa = [t for t in group if t.qtype == "AAAA"]
            if not (a and aaaa) or any(t.answered for t in aaaa):
                continue
            if not any(t.answered for t in a):
                continue
            flat = sorted(int(packet_ts[q]) for t in aaaa for q in t.queries)
            if flat[-1] - flat[0] >= RETRY_AFTER_NS:
                race[(client, name)] = [t.queries[0] for t in aaaa]
    cluster = {t.qname for t in primary if is_cluster_name(t.qname, domain)}
    upstream: list[int] = []
    if any(t.rcode == "NOERROR" and t.qname in cluster for t in primary):
        expanded = tuple({b + "." for (_, b) in expansions})
        failed = np.array(
            [t.response is None or t.rcode in ("SERVFAIL", "REFUSED") for t in primary]
        )
        outside = np.array(
            [t.qname not in cluster and not t.qname.startswith(expanded) for t in primary]
        )
        inside = np.array([t.qname in cluster for t in primary])
        if fails_more(failed, outside, inside):  # by rate, not by count
            chosen = zip(primary, failed, outside, strict=True)
            upstream = [t.queries[0] for t, f, o in chosen if f and o]
    return expansions, race, upstream


def _dns_mix(seed: int) -> list[tuple[int, bytes]]:
    """Lookups from several clients: search-path chains, A and AAAA asked together, retries
    after 5 s, every answer code, queries never answered."""
    rng = random.Random(seed)
    clients, servers = ["10.1.0.5", "10.1.1.6", "10.1.2.7"], ["10.96.0.10", "10.0.0.2"]
    bases = ["api", "db.prod", "example.com", "redis", "kube-dns.kube-system"]
    suffixes = ["default.svc.cluster.local", "svc.cluster.local", "cluster.local"]
    frames: list[tuple[int, bytes]] = []
    t = T0
    for _ in range(150):
        client, server, base = rng.choice(clients), rng.choice(servers), rng.choice(bases)
        chain = [f"{base}.{s}" for s in suffixes] + [base] if rng.random() < 0.5 else [base]
        for name in chain:
            for qtype in ["A", "AAAA"] if rng.random() < 0.6 else [rng.choice(["A", "SRV"])]:
                t += rng.randrange(1, 40_000_000)
                ident, sport = rng.randrange(65536), rng.randrange(30000, 60000)
                ask = IP(src=client, dst=server) / UDP(sport=sport, dport=53)
                ask /= DNS(id=ident, rd=1, qd=DNSQR(qname=name, qtype=qtype))
                lost = 0.4 if qtype == "AAAA" else 0.1  # as conntrack races lose them
                if name == "example.com":
                    lost = 0.8  # a failing upstream
                tries = [t + 5_000_000_000 * k for k in range(1 + (rng.random() < lost))]
                frames += [(when, bytes(Ether() / ask)) for when in tries]
                if rng.random() < lost:
                    continue
                code = rng.choice([0, 0, 3, 3, 2, 5]) if name == base or rng.random() < 0.3 else 3
                reply = IP(src=server, dst=client) / UDP(sport=53, dport=sport)
                reply /= DNS(id=ident, qr=1, ra=1, rcode=code, qd=DNSQR(qname=name, qtype=qtype))
                late = rng.randrange(100_000, 900_000_000)
                frames.append((tries[-1] + late, bytes(Ether() / reply)))
    return sorted(frames)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_dns_picture_by_column_is_the_picture_one_transaction_at_a_time(
    make_pcap: Make, seed: int
) -> None:
    result, _ = run_analysis(make_pcap(_dns_mix(seed)))
    a = result.analysis
    table = a.dns.transactions
    pic = a.dns_picture
    expansions, race, upstream = _reference_picture(
        table.take(a.dns_primary()), a.names.cluster_domain, a.index.columns.ts
    )

    def rows(groups: dict[tuple[str, str], np.ndarray]) -> dict[tuple[str, str], list[int]]:
        return {k: table.row[v].tolist() for k, v in groups.items()}

    assert list(rows(pic.expansions).items()) == list(expansions.items())
    assert list(rows(pic.aaaa_race).items()) == list(race.items())
    assert table.row[pic.upstream_failed].tolist() == upstream
    assert len(expansions) > 3 and race and upstream


def test_search_chains_of_one_busy_client_cost_linear_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """40,000 lookups from one pod, each answered: every chain is done at once and
    forgotten, so each lookup looks at a chain or two, not at all the chains before it."""
    from ktrace.analysis import dns_patterns

    looked = 0
    original = dns_patterns._Chain.continues

    def counted(self, t):  # type: ignore[no-untyped-def]
        nonlocal looked
        looked += 1
        return original(self, t)

    monkeypatch.setattr(dns_patterns._Chain, "continues", counted)
    lookups = [
        DnsTransaction(
            point=0, transport="udp", client=f"10.1.0.5:{30000 + k % 20000}",
            server="10.96.0.10:53",
            id=k % 65536, qname=f"n{k}.example.com", qtype="A", query_ts=k * 1_000_000,
            queries=(k,), response=k, rcode="NOERROR", latency_ns=500_000, answers=(),
            truncated=False,
        )
        for k in range(40_000)
    ]  # fmt: skip
    chains = dns_patterns.search_chains(lookups)
    assert len(set(chains.values())) == 40_000
    assert looked <= 2 * len(lookups)
