"""The audit chain over HTTP: recent (paginated, newest first), verify, tampering done directly on
the SQLite file (edited, deleted, inserted, reordered rows, rewritten tail, lost anchor), retention,
and the entries the core writes itself (plugin load/failure/reload, auth failures, shutdown)."""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
import sys
import textwrap

import librefang
import pytest
from librefang.app import build_app
from librefang.audit import GENESIS, entry_hash
from librefang.kernel import create_kernel
from librefang.routing import Router
from librefang.testing import make_client

KEY = "audit-test-key-0123456789"
COLUMNS = ("seq", "timestamp", "actor", "action", "target", "detail", "outcome", "request_id", "prev_hash", "hash")


async def started(make_kernel, config: str | None = None, plugins=None, entries: int = 6):
    """A kernel without installed plugins, ``entries`` extra entries, and an in-process client."""
    kernel = await make_kernel(config=config, plugins=plugins or {}, load_entry_points=False)
    for i in range(entries):
        await kernel.audit.record("TestAction", actor=f"tester-{i}", target=f"thing/{i}", detail={"n": i})
    return kernel, make_client(build_app(kernel))


def database(kernel) -> sqlite3.Connection:
    return sqlite3.connect(kernel.config.data_dir / "librefang.db")


async def tamper(kernel, change):
    """Run ``change(conn)`` on the database file directly, in a thread: the kernel's event loop keeps
    running meanwhile, so a transaction it has open can finish instead of holding the file locked."""

    def run():
        with database(kernel) as conn:
            return change(conn)

    return await asyncio.to_thread(run)


def rows(kernel) -> list[dict]:
    with database(kernel) as conn:  # a read never waits for the daemon's writer (WAL)
        found = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM core_audit_entries ORDER BY seq").fetchall()
    return [dict(zip(COLUMNS, row, strict=True)) for row in found]


async def verify(client, headers=None) -> dict:
    response = await client.get("/api/audit/verify", headers=headers)
    assert response.status_code == 200
    return await response.get_json()


# -- recent and verify ---------------------------------------------------------------------------
async def test_verify_reports_a_valid_chain_anchored(make_kernel):
    kernel, client = await started(make_kernel)
    body = await verify(client)
    assert body["valid"] is True
    assert body["entries"] == kernel.audit.length == len(rows(kernel))
    assert body["tip_hash"] == kernel.audit.tip_hash == rows(kernel)[-1]["hash"]
    assert body["anchor_status"] == "ok"
    assert "first_broken_seq" not in body
    # The chain starts at genesis and every hash recomputes.
    chain = rows(kernel)
    assert chain[0]["prev_hash"] == GENESIS
    prev = GENESIS
    for entry in chain:
        assert entry["prev_hash"] == prev
        assert entry_hash(entry, prev) == entry["hash"]
        prev = entry["hash"]
    # The anchor file holds the start and every entry's hash, each batch announced before its commit.
    lines = kernel.audit.anchor_path.read_text().splitlines()
    assert lines[0] == f"start 0 {GENESIS}"
    assert [ln for ln in lines[1:] if not ln.startswith("pending ")] == [f"{e['seq']} {e['hash']}" for e in chain]
    announced = set()
    for line in lines[1:]:
        if line.startswith("pending "):
            first, last = map(int, line.split()[1:])
            announced.update(range(first, last + 1))
        else:
            assert int(line.split()[0]) in announced


async def test_recent_is_newest_first_and_paginated(make_kernel):
    kernel, client = await started(make_kernel, entries=7)
    total = kernel.audit.length
    first = await (await client.get("/api/audit/recent?n=3")).get_json()
    assert first["total"] == total and first["limit"] == 3 and first["offset"] == 0
    assert first["tip_hash"] == kernel.audit.tip_hash
    assert [e["seq"] for e in first["items"]] == [total, total - 1, total - 2]
    top = first["items"][0]
    assert set(top) == set(COLUMNS)
    assert top["action"] == "TestAction" and top["actor"] == "tester-6" and top["target"] == "thing/6"
    assert top["detail"] == '{"n": 6}'
    second = await (await client.get("/api/audit/recent?n=3&offset=3")).get_json()
    assert [e["seq"] for e in second["items"]] == [total - 3, total - 4, total - 5]
    beyond = await (await client.get(f"/api/audit/recent?n=3&offset={total}")).get_json()
    assert beyond["items"] == [] and beyond["total"] == total


@pytest.mark.parametrize("query", ["n=0", "n=1001", "n=abc", "n=-1", "offset=-1", "offset=x", "n=1.5"])
async def test_recent_rejects_bad_paging(make_kernel, query):
    _, client = await started(make_kernel, entries=0)
    response = await client.get(f"/api/audit/recent?{query}")
    assert response.status_code == 400
    body = await response.get_json()
    assert body["code"] == "invalid_query"
    assert body["request_id"] == response.headers["x-request-id"]


async def test_audit_routes_need_auth(make_kernel):
    _, client = await started(make_kernel, config=f'api_key = "{KEY}"\n', entries=0)
    for path in ("/api/audit/recent", "/api/audit/verify"):
        assert (await client.get(path)).status_code == 401
        assert (await client.get(path, headers={"Authorization": f"Bearer {KEY}"})).status_code == 200


# -- tampering with the database directly ---------------------------------------------------------
async def test_edited_row_is_detected(make_kernel):
    kernel, client = await started(make_kernel)
    def change(conn):
        conn.execute("UPDATE core_audit_entries SET detail = 'nothing happened' WHERE seq = 4")

    await tamper(kernel, change)
    body = await verify(client)
    assert body["valid"] is False
    assert body["first_broken_seq"] == 4
    assert "seq 4" in body["error"]


async def test_edited_row_of_any_field_is_detected(make_kernel):
    kernel, client = await started(make_kernel)
    for column, value in (("actor", "'someone-else'"), ("timestamp", "'2020-01-01T00:00:00.000000+00:00'"),
                          ("outcome", "'denied'"), ("request_id", "'x'")):
        def change(conn, column=column, value=value):
            original = conn.execute(f"SELECT {column} FROM core_audit_entries WHERE seq = 3").fetchone()[0]
            conn.execute(f"UPDATE core_audit_entries SET {column} = {value} WHERE seq = 3")
            return original

        original = await tamper(kernel, change)
        body = await verify(client)
        assert (body["valid"], body["first_broken_seq"]) == (False, 3), column
        await tamper(kernel, lambda conn, column=column, original=original: conn.execute(
            f"UPDATE core_audit_entries SET {column} = ? WHERE seq = 3", (original,)))
        assert (await verify(client))["valid"] is True


async def test_deleted_rows_are_detected(make_kernel):
    kernel, client = await started(make_kernel)
    def change(conn):
        conn.execute("DELETE FROM core_audit_entries WHERE seq = 5")

    await tamper(kernel, change)
    body = await verify(client)
    assert (body["valid"], body["first_broken_seq"]) == (False, 5)
    def change(conn):
        conn.execute("DELETE FROM core_audit_entries WHERE seq = 1")

    await tamper(kernel, change)
    body = await verify(client)
    assert (body["valid"], body["first_broken_seq"]) == (False, 1)


async def test_deleted_tail_is_detected_by_the_anchor(make_kernel):
    kernel, client = await started(make_kernel)
    tip = kernel.audit.tip_seq
    def change(conn):
        conn.execute("DELETE FROM core_audit_entries WHERE seq >= ?", (tip - 1,))

    await tamper(kernel, change)
    body = await verify(client)
    assert body["valid"] is False
    assert body["first_broken_seq"] == tip - 1
    assert body["anchor_status"] == "mismatch"


async def test_inserted_rows_are_detected(make_kernel):
    kernel, client = await started(make_kernel)
    chain = rows(kernel)
    # A row appended after the tip, chained correctly, with a valid hash: only the anchor knows.
    forged = {"seq": len(chain) + 1, "timestamp": chain[-1]["timestamp"], "actor": "root", "action": "AgentKill",
              "target": "x", "detail": "", "outcome": "ok", "request_id": ""}
    forged["prev_hash"] = chain[-1]["hash"]
    forged["hash"] = entry_hash(forged, chain[-1]["hash"])
    def change(conn):
        conn.execute(f"INSERT INTO core_audit_entries ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * 10)})",
                     [forged[c] for c in COLUMNS])

    await tamper(kernel, change)
    body = await verify(client)
    assert (body["valid"], body["first_broken_seq"]) == (False, len(chain) + 1)
    assert "anchor" in body["error"]


async def test_row_inserted_in_the_middle_is_detected(make_kernel):
    kernel, client = await started(make_kernel)
    chain = rows(kernel)
    forged = {"seq": 4, "timestamp": chain[2]["timestamp"], "actor": "root", "action": "ConfigChange",
              "target": "api_key", "detail": "", "outcome": "ok", "request_id": ""}
    forged["prev_hash"] = chain[2]["hash"]
    forged["hash"] = entry_hash(forged, chain[2]["hash"])
    def change(conn):  # make room: shift seq 4.. up by one, then insert
        conn.execute("UPDATE core_audit_entries SET seq = seq + 1000 WHERE seq >= 4")
        conn.execute("UPDATE core_audit_entries SET seq = seq - 999 WHERE seq >= 1000")
        conn.execute(f"INSERT INTO core_audit_entries ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * 10)})",
                     [forged[c] for c in COLUMNS])

    await tamper(kernel, change)
    body = await verify(client)
    assert (body["valid"], body["first_broken_seq"]) == (False, 4)


async def test_reordered_rows_are_detected(make_kernel):
    kernel, client = await started(make_kernel)
    def change(conn):  # swap the seqs of entries 3 and 5
        conn.execute("UPDATE core_audit_entries SET seq = -1 WHERE seq = 3")
        conn.execute("UPDATE core_audit_entries SET seq = 3 WHERE seq = 5")
        conn.execute("UPDATE core_audit_entries SET seq = 5 WHERE seq = -1")

    await tamper(kernel, change)
    body = await verify(client)
    assert (body["valid"], body["first_broken_seq"]) == (False, 3)


async def test_rewritten_tail_with_recomputed_hashes_is_detected_by_the_anchor(make_kernel):
    kernel, client = await started(make_kernel, entries=8)
    chain = rows(kernel)
    start = 5
    prev = chain[start - 2]["hash"]
    rewritten = []
    for entry in chain[start - 1:]:  # edit seq 5 and re-chain everything after it consistently
        entry = dict(entry)
        if entry["seq"] == start:
            entry["detail"] = "rewritten history"
        entry["prev_hash"] = prev
        entry["hash"] = entry_hash(entry, prev)
        prev = entry["hash"]
        rewritten.append(entry)
    def change(conn):
        for entry in rewritten:
            conn.execute("UPDATE core_audit_entries SET detail = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                         (entry["detail"], entry["prev_hash"], entry["hash"], entry["seq"]))

    await tamper(kernel, change)
    # The database alone is self-consistent ...
    prev = GENESIS
    for entry in rows(kernel):
        assert entry["prev_hash"] == prev and entry_hash(entry, prev) == entry["hash"]
        prev = entry["hash"]
    # ... but the anchor names the first rewritten entry.
    body = await verify(client)
    assert body["valid"] is False
    assert body["first_broken_seq"] == start
    assert body["anchor_status"] == "mismatch"
    assert "rewritten" in body["error"]


async def test_lost_or_corrupt_anchor_invalidates_the_chain(make_kernel):
    kernel, client = await started(make_kernel)
    saved = kernel.audit.anchor_path.read_text()
    kernel.audit.anchor_path.unlink()
    body = await verify(client)
    assert (body["valid"], body["anchor_status"]) == (False, "missing")
    kernel.audit.anchor_path.write_text("garbage\n")
    body = await verify(client)
    assert (body["valid"], body["anchor_status"]) == (False, "mismatch")
    assert "corrupt" in body["error"]
    kernel.audit.anchor_path.write_text(saved)
    assert (await verify(client))["valid"] is True


async def test_interrupted_anchor_write_is_repaired_at_start(make_kernel, librefang_home):
    """A crash between the commit and the anchor append leaves the database one entry ahead."""
    kernel = create_kernel(librefang_home, load_entry_points=False)
    await kernel.start()
    await kernel.audit.record("TestAction")
    await kernel.stop()
    anchor = kernel.audit.anchor_path
    lines = anchor.read_text().splitlines()
    anchor.write_text("\n".join(lines[:-1]) + "\n")  # the last append never happened
    again = await make_kernel(load_entry_points=False)
    body = await verify(make_client(build_app(again)))
    assert body["valid"] is True and body["anchor_status"] == "ok"
    # Two missing lines cannot come from one interrupted write: that stays a break.
    lines = anchor.read_text().splitlines()
    anchor.write_text("\n".join(lines[:-2]) + "\n")
    body = await verify(make_client(build_app(again)))
    assert body["valid"] is False


async def test_concurrent_records_share_commits_and_form_one_valid_chain(make_kernel, librefang_home):
    """Entries recorded at once are group-committed: every caller gets its own seq, seq order is
    chain order, all are stored, and the chain verifies, also after a restart."""
    kernel = create_kernel(librefang_home, load_entry_points=False)
    await kernel.start()
    before = kernel.audit.length
    returned = await asyncio.gather(*(kernel.audit.record("Burst", actor=f"a{i}", detail={"i": i}) for i in range(600)))
    seqs = [e["seq"] for e in returned]
    assert len(set(seqs)) == 600 and sorted(seqs) == list(range(seqs[0], seqs[0] + 600))
    assert seqs == sorted(seqs)  # arrival order is seq order
    assert kernel.audit.length == before + 600
    batches = [ln for ln in kernel.audit.anchor_path.read_text().splitlines() if ln.startswith("pending ")]
    assert len(batches) < 600 / 10  # shared transactions, not one per entry
    stored = {r["seq"]: r for r in rows(kernel)}
    for entry in returned:  # what each caller was told is exactly what is stored
        assert {k: stored[entry["seq"]][k] for k in entry} == entry
    await kernel.stop()
    again = await make_kernel(load_entry_points=False)
    chain = rows(again)
    prev = GENESIS
    for entry in chain:
        assert entry["prev_hash"] == prev and entry_hash(entry, prev) == entry["hash"]
        prev = entry["hash"]
    assert {r["detail"] for r in chain if r["action"] == "Burst"} == {f'{{"i": {i}}}' for i in range(600)}
    body = await verify(make_client(build_app(again)))
    assert body["valid"] is True and body["anchor_status"] == "ok"


async def test_interrupted_batch_is_re_anchored_only_as_far_as_it_was_announced(make_kernel, librefang_home):
    kernel = create_kernel(librefang_home, load_entry_points=False)
    await kernel.start()
    await asyncio.gather(*(kernel.audit.record("Burst", detail=i) for i in range(40)))
    await kernel.stop()
    anchor = kernel.audit.anchor_path
    lines = anchor.read_text().splitlines()
    cut = max(i for i, ln in enumerate(lines) if ln.startswith("pending ") and ln.split()[1] != ln.split()[2])
    first, last = map(int, lines[cut].split()[1:])
    # A crash right after the commit of the burst's last batch (first..last): its anchor lines were
    # never written, and nothing after it happened (no DaemonStop).
    anchor.write_text("\n".join(lines[:cut + 1]) + "\n")
    with database(kernel) as conn:
        conn.execute("DELETE FROM core_audit_entries WHERE seq > ?", (last,))
    again = await make_kernel(load_entry_points=False)
    body = await verify(make_client(build_app(again)))
    assert body["valid"] is True and body["anchor_status"] == "ok"
    assert f"{last} {rows(again)[last - 1]['hash']}" in anchor.read_text().splitlines()
    await again.stop()
    # Without the announcement the same gap is a break: nothing unannounced is ever re-anchored.
    lines = anchor.read_text().splitlines()
    cut = lines.index(f"pending {first} {last}")
    anchor.write_text("\n".join(lines[:cut]) + "\n")
    with database(kernel) as conn:
        conn.execute("DELETE FROM core_audit_entries WHERE seq > ?", (last,))
    third = await make_kernel(load_entry_points=False)
    body = await verify(make_client(build_app(third)))
    assert body["valid"] is False and body["anchor_status"] == "mismatch"
    assert body["first_broken_seq"] == first


async def test_a_failed_batch_answers_every_caller_and_the_chain_goes_on(make_kernel):
    kernel, client = await started(make_kernel)
    tip = kernel.audit.tip_seq
    # A row written behind the daemon's back takes the next seq: the batch's insert must fail whole.
    await tamper(kernel, lambda conn: conn.execute(
        "INSERT INTO core_audit_entries (seq, timestamp, actor, action, target, detail, outcome, request_id,"
        " prev_hash, hash) VALUES (?, 't', 'x', 'x', '', '', 'ok', '', 'p', 'h')", (tip + 1,)))
    results = await asyncio.gather(*(kernel.audit.record("Lost", detail=i) for i in range(5)), return_exceptions=True)
    assert all(isinstance(r, Exception) for r in results)
    assert kernel.audit.tip_seq == tip
    await tamper(kernel, lambda conn: conn.execute("DELETE FROM core_audit_entries WHERE seq = ?", (tip + 1,)))
    old_tip_hash = kernel.audit.tip_hash
    entry = await kernel.audit.record("Kept")
    assert entry["seq"] == tip + 1 and entry["prev_hash"] == old_tip_hash
    assert [r["action"] for r in rows(kernel)][-1] == "Kept" and "Lost" not in {r["action"] for r in rows(kernel)}
    body = await verify(client)
    assert body["valid"] is True and body["entries"] == kernel.audit.length


async def test_entries_recorded_while_verifying_are_not_mistaken_for_tampering(make_kernel):
    kernel, client = await started(make_kernel, entries=50)
    results = await asyncio.gather(
        verify(client), *(kernel.audit.record("Concurrent", detail=i) for i in range(20)), verify(client)
    )
    assert results[0]["valid"] is True and results[-1]["valid"] is True
    assert (await verify(client))["entries"] == kernel.audit.length


# -- retention -----------------------------------------------------------------------------------
async def test_retention_trims_old_entries_and_the_chain_still_verifies(make_kernel, librefang_home):
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=60)
    first = create_kernel(librefang_home, load_entry_points=False)
    first.audit.clock = lambda: old  # entries written "60 days ago"
    await first.start()
    for i in range(5):
        await first.audit.record("OldAction", detail=i)
    first.audit.clock = lambda: dt.datetime.now(dt.UTC)
    for i in range(3):
        await first.audit.record("NewAction", detail=i)
    kept_from = first.audit.tip_seq - 2
    await first.stop()

    # The next start runs the retention task at once.
    kernel = await make_kernel(config="[audit]\nretention_days = 30\n", load_entry_points=False)
    for _ in range(200):
        if kernel.audit.last_trim is not None:
            break
        await asyncio.sleep(0.02)
    assert kernel.audit.last_trim["deleted"] == kept_from - 1
    client = make_client(build_app(kernel))
    body = await verify(client)
    assert body["valid"] is True and body["anchor_status"] == "ok"
    assert body["entries"] == kernel.audit.length == len(rows(kernel))
    page = await (await client.get("/api/audit/recent?n=1000")).get_json()
    actions = [e["action"] for e in page["items"]]
    assert "OldAction" not in actions
    assert actions.count("NewAction") == 3
    trims = [e for e in page["items"] if e["action"] == "RetentionTrim"]
    assert len(trims) == 1 and f'"through_seq": {kept_from - 1}' in trims[0]["detail"]
    assert min(e["seq"] for e in page["items"]) == kept_from
    assert kernel.audit.anchor_path.read_text().splitlines()[0].startswith(f"start {kept_from - 1} ")
    # Tampering after a trim is still caught, including a forged chain start.
    def change(conn):
        conn.execute("UPDATE core_audit_meta SET value = ? WHERE name = 'trimmed_seq'", (str(kept_from),))
        conn.execute("DELETE FROM core_audit_entries WHERE seq = ?", (kept_from,))

    await tamper(kernel, change)
    body = await verify(client)
    assert (body["valid"], body["first_broken_seq"]) == (False, kept_from)


async def test_retention_refuses_to_trim_a_tampered_chain(make_kernel):
    kernel, client = await started(make_kernel, config="[audit]\nretention_days = 30\n", entries=0)
    kernel.audit.clock = lambda: dt.datetime.now(dt.UTC) - dt.timedelta(days=90)
    for i in range(4):
        await kernel.audit.record("OldAction", detail=i)
    kernel.audit.clock = lambda: dt.datetime.now(dt.UTC)
    await kernel.audit.record("NewAction")
    def change(conn):
        conn.execute("UPDATE core_audit_entries SET detail = 'laundered' WHERE seq = 2")

    await tamper(kernel, change)
    assert await kernel.audit.trim(30) == 0
    assert "refused" in kernel.audit.last_trim
    body = await verify(client)
    assert (body["valid"], body["first_broken_seq"]) == (False, 2)  # the evidence is still there


async def test_retention_zero_keeps_everything(make_kernel):
    kernel, _ = await started(make_kernel, config="[audit]\nretention_days = 0\n", entries=0)
    kernel.audit.clock = lambda: dt.datetime.now(dt.UTC) - dt.timedelta(days=3650)
    await kernel.audit.record("Ancient")
    kernel.audit.clock = lambda: dt.datetime.now(dt.UTC)
    await kernel.audit.record("Recent")
    assert await kernel.audit.trim(0) == 0
    assert [r["action"] for r in rows(kernel)][-2:] == ["Ancient", "Recent"]


# -- what the core and plugins record -------------------------------------------------------------
class RecordingPlugin:
    """Records an audit entry through the kernel's public service from a route."""

    @librefang.hookimpl
    def register_routes(self, register):
        router = Router("audittest")

        @router.post("/api/audittest/things", cost=1, status=201)
        async def create_thing():
            from quart import g

            kernel = librefang.current_kernel()
            entry = await kernel.audit.record("ThingCreate", actor=g.principal, target="thing/1",
                                              detail={"secret": "token=abcdef123456"}, request_id=g.request_id)
            return {"seq": entry["seq"]}

        register(router)


class FailingPlugin:
    @librefang.hookimpl
    def startup(self, kernel):
        raise RuntimeError("cannot start")


async def test_plugins_record_through_the_kernel_and_secrets_are_scrubbed(make_kernel):
    _, client = await started(make_kernel, plugins={"audittest": RecordingPlugin()}, entries=0)
    response = await client.post("/api/audittest/things")
    assert response.status_code == 201
    seq = (await response.get_json())["seq"]
    entry = (await (await client.get("/api/audit/recent?n=1")).get_json())["items"][0]
    assert entry["seq"] == seq and entry["action"] == "ThingCreate" and entry["actor"] == "local"
    assert entry["request_id"] == response.headers["x-request-id"]
    assert "abcdef123456" not in entry["detail"] and "***" in entry["detail"]
    assert (await verify(client))["valid"] is True


async def test_plugin_load_and_failure_are_recorded(make_kernel):
    _, client = await started(make_kernel, plugins={"audittest": RecordingPlugin(), "broken": FailingPlugin()},
                              entries=0)
    items = (await (await client.get("/api/audit/recent?n=100")).get_json())["items"]
    loads = {e["target"]: e for e in items if e["action"] == "PluginLoad"}
    assert loads["audittest"]["outcome"] == "ok"
    assert loads["broken"]["outcome"] == "failed" and "cannot start" in loads["broken"]["detail"]
    assert any(e["action"] == "DaemonStart" for e in items)


async def test_plugin_reload_is_recorded(make_kernel, tmp_path, monkeypatch):
    from librefang.reload import Reloader
    from librefang.server import AppSwitch

    package = tmp_path / "lf_audit_reload_plugin"
    package.mkdir()
    (package / "__init__.py").write_text("")
    source = textwrap.dedent("""
        import librefang

        @librefang.hookimpl
        def status_info(kernel):
            return {"reload_marker": VERSION}

        VERSION = {version}
    """)
    (package / "plugin.py").write_text(source.replace("{version}", "1"))
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    module = importlib.import_module("lf_audit_reload_plugin.plugin")
    try:
        kernel, client = await started(make_kernel, plugins={"reloadme": module}, entries=0)
        reloader = Reloader(kernel, AppSwitch(build_app(kernel)))
        (package / "plugin.py").write_text(source.replace("{version}", "2"))
        assert await reloader.reload("reloadme") is True
        (package / "plugin.py").write_text("this is not python")
        assert await reloader.reload("reloadme") is False
        items = (await (await client.get("/api/audit/recent?n=10")).get_json())["items"]
        reloads = [e for e in items if e["action"] == "PluginReload" and e["target"] == "reloadme"]
        assert [e["outcome"] for e in reloads] == ["failed", "ok"]
        assert (await verify(client))["valid"] is True
    finally:
        for name in [m for m in sys.modules if m.startswith("lf_audit_reload_plugin")]:
            del sys.modules[name]


async def test_auth_failures_shutdown_and_stop_are_recorded(make_kernel, librefang_home):
    (librefang_home / "config.toml").write_text(f'api_key = "{KEY}"\n')
    kernel = create_kernel(librefang_home, load_entry_points=False)
    await kernel.start()
    client = make_client(build_app(kernel))
    assert (await client.get("/api/status", headers={"Authorization": "Bearer wrong-key-123"})).status_code == 401
    response = await client.post("/api/shutdown", headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 202
    await kernel.stop()  # flushes the pending auth-failure tally, then records DaemonStop

    again = await make_kernel(load_entry_points=False)
    client = make_client(build_app(again))
    items = (await (await client.get("/api/audit/recent?n=100",
                                     headers={"Authorization": f"Bearer {KEY}"})).get_json())["items"]
    actions = [e["action"] for e in items]
    auth = next(e for e in items if e["action"] == "AuthAttempt")
    assert auth["outcome"] == "denied" and auth["target"] == "/api/status"
    assert "wrong-key-123" not in auth["detail"]
    shutdown = next(e for e in items if e["action"] == "Shutdown")
    assert shutdown["request_id"] == response.headers["x-request-id"]
    assert actions.index("DaemonStop") < actions.index("Shutdown")  # newest first: stop came after
    assert (await verify(client, {"Authorization": f"Bearer {KEY}"}))["valid"] is True


async def test_config_changes_are_recorded(make_kernel):
    _, client = await started(make_kernel, entries=0)
    response = await client.post("/api/config/set", json={"path": "rate_limit.api_requests_per_minute", "value": 321})
    assert response.status_code == 200
    entry = (await (await client.get("/api/audit/recent?n=1")).get_json())["items"][0]
    assert entry["action"] == "ConfigChange" and entry["target"] == "rate_limit.api_requests_per_minute"
    assert entry["request_id"] == response.headers["x-request-id"] and "321" in entry["detail"]
    assert (await verify(client))["valid"] is True


async def test_retention_trims_when_only_the_kept_part_was_tampered(make_kernel):
    """A trim checks what it removes; tampering in what stays is left for verify to report."""
    kernel, client = await started(make_kernel, config="[audit]\nretention_days = 30\n", entries=0)
    kernel.audit.clock = lambda: dt.datetime.now(dt.UTC) - dt.timedelta(days=90)
    for i in range(3):
        await kernel.audit.record("OldAction", detail=i)
    kernel.audit.clock = lambda: dt.datetime.now(dt.UTC)
    await kernel.audit.record("NewAction")
    kept = kernel.audit.tip_seq
    await tamper(kernel, lambda conn: conn.execute("UPDATE core_audit_entries SET detail = 'x' WHERE seq = ?", (kept,)))
    assert await kernel.audit.trim(30) == kept - 1
    body = await verify(client)
    assert (body["valid"], body["first_broken_seq"]) == (False, kept)


async def test_record_with_commits_the_change_and_its_entry_together(make_kernel, librefang_home):
    """record_with: a caller's change and its entry are one transaction; concurrent callers share
    it, and a change that fails fails only its own caller (nothing of it is stored, not even the entry)."""
    from sqlalchemy import text

    kernel, client = await started(make_kernel, entries=0)
    async with kernel.db.begin() as conn:
        await conn.execute(text("CREATE TABLE things (name VARCHAR(20) PRIMARY KEY)"))

    def add(name):
        def change(conn):
            conn.execute(text("INSERT INTO things (name) VALUES (:n)"), {"n": name})
            return f"added {name}"
        return change

    names = [f"t{i}" for i in range(30)] + ["t7"]  # the last one collides
    results = await asyncio.gather(
        *(kernel.audit.record_with(add(n), "ThingAdd", target=n) for n in names), return_exceptions=True)
    assert all(isinstance(r, tuple) for r in results[:30])
    assert isinstance(results[30], Exception) and "UNIQUE" in str(results[30])
    assert [r[1] for r in results[:30]] == [f"added t{i}" for i in range(30)]
    with database(kernel) as conn:
        stored = {r[0] for r in conn.execute("SELECT name FROM things")}
    assert stored == {f"t{i}" for i in range(30)}
    added = [r for r in rows(kernel) if r["action"] == "ThingAdd"]
    assert sorted(r["target"] for r in added) == sorted(f"t{i}" for i in range(30))  # no entry for the failure
    assert {r[0]["seq"] for r in results[:30]} == {r["seq"] for r in added}
    body = await verify(client)
    assert body["valid"] is True and body["entries"] == kernel.audit.length
    # After a restart: every change and its entry are there, and the chain verifies.
    await kernel.stop()
    again = await make_kernel(load_entry_points=False)
    assert sum(r["action"] == "ThingAdd" for r in rows(again)) == 30
    assert (await verify(make_client(build_app(again))))["valid"] is True
