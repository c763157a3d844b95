"""`ktrace export --parquet`: every table read back with DuckDB agrees with `analyze --json`
on the same bundle, and the ids join the tables."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from tests.helpers import LAB
from tests.test_cli import run

duckdb = pytest.importorskip("duckdb")


@pytest.mark.parametrize("bundle", ["policy-drop", "external", "http-503"])
def test_export_round_trips_through_duckdb(tmp_path: Path, bundle: str) -> None:
    out = tmp_path / "tables"
    done = run("export", str(LAB / bundle), "--parquet", str(out))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [
        str(out / f"{t}.parquet")
        for t in ("packets", "flows", "paths", "losses", "dns", "http", "tls", "findings")
    ]
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in out.iterdir())
    data = json.loads(run("analyze", str(LAB / bundle), "--json").stdout)

    db = duckdb.connect()

    def one(sql: str) -> object:
        return db.execute(sql.replace("@", f"'{out}/")).fetchone()[0]

    assert one("SELECT count(*) FROM @packets.parquet'") == sum(
        p["packets"] for p in data["points"]
    )
    for point in data["points"]:
        n = one(f"SELECT count(*) FROM @packets.parquet' WHERE point = '{point['id']}'")
        assert n == point["packets"]
    assert one("SELECT count(*) FROM @flows.parquet'") == len(data["flows"])
    assert one("SELECT sum(packets_ab + packets_ba) FROM @flows.parquet'") == sum(
        f["packets_ab"] + f["packets_ba"] for f in data["flows"]
    )
    assert one("SELECT count(*) FROM @paths.parquet'") == sum(len(p["hops"]) for p in data["paths"])
    assert one("SELECT count(*) FROM @losses.parquet'") == sum(
        len(p["lost"]) for p in data["paths"]
    )
    assert one("SELECT count(*) FROM @dns.parquet'") == len(data["dns"])
    assert one("SELECT count(*) FROM @findings.parquet'") == len(data["findings"])
    assert one("SELECT count(*) FROM @http.parquet'") == len(data["http"])
    assert one("SELECT count(*) FROM @tls.parquet'") == len(data["tls"])
    assert one("SELECT count(*) FROM @http.parquet' WHERE status >= 500") == sum(
        1 for r in data["http"] if (r["status"] or 0) >= 500
    )
    # each request's first packet is a packet of the packets table
    for packet in db.execute(f"SELECT packet FROM '{out}/http.parquet'").fetchall():
        point, number = packet[0].rsplit("#", 1)
        hit = one(
            f"SELECT count(*) FROM @packets.parquet' WHERE point = '{point}' AND number = {number}"
        )
        assert hit == 1, packet
    # a finding's evidence is a packet of the packets table (point#number, as cited)
    for finding in data["findings"]:
        for e in finding["evidence"]:
            hit = one(
                f"SELECT count(*) FROM @packets.parquet' "
                f"WHERE point = '{e['point']}' AND number = {e['packet']}"
            )
            assert hit == 1, e
    # one packet seen at several points shares its identity: the conversation joins them
    spread = one(
        "SELECT max(n) FROM (SELECT count(DISTINCT point) AS n FROM @packets.parquet' "
        "WHERE identity >= 0 GROUP BY identity)"
    )
    assert spread >= 4
    # the ids join as the tables' documentation says: every packet of a flow to its flow
    # row, every hop to the packets of its flow at its point, every loss to its path
    joined = one(
        "SELECT count(*) FROM @packets.parquet' p JOIN @flows.parquet' f "
        "ON p.flow = f.flow AND p.conversation = f.conversation"
    )
    assert joined == one("SELECT count(*) FROM @packets.parquet' WHERE flow >= 0") > 0
    mismatched = one(
        "SELECT count(*) FROM @paths.parquet' h WHERE h.packets > 0 AND h.packets != "
        "(SELECT count(*) FROM @packets.parquet' p "
        " WHERE p.point = h.point AND p.conversation = h.conversation AND p.flow = h.flow)"
    )
    assert mismatched == 0
    assert (
        one(
            "SELECT count(*) FROM @losses.parquet' l ANTI JOIN @paths.parquet' h "
            "ON l.path = h.path AND l.conversation = h.conversation"
        )
        == 0
    )


def test_export_needs_a_directory(tmp_path: Path) -> None:
    done = run("export", str(LAB / "healthy"))
    assert done.returncode == 2 and "--parquet" in done.stderr


def test_the_help_example_works_as_written(tmp_path: Path) -> None:
    """`ktrace export --help`'s example, run as printed (python3 and the bundle aside)."""
    import shlex
    import subprocess
    import sys

    shown = run("export", "--help").stdout
    example = shown.split("examples:")[1].split("\n\n")[0]
    lines = [x.strip() for x in example.strip().splitlines()]
    assert lines[0] == "ktrace export bundle/ --parquet out/"
    assert (
        run("export", str(LAB / "policy-drop"), "--parquet", str(tmp_path / "out")).returncode == 0
    )
    query = " ".join(x.rstrip("\\").strip() for x in lines[2:])
    argv = shlex.split(query)
    assert argv[0] == "python3"
    done = subprocess.run([sys.executable, *argv[1:]], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "client-eth0" in done.stdout
