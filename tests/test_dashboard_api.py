"""The dashboard's pages and API through FastAPI's TestClient, on a real SQLite database fed by simulated
devices (backoffice/simdevice.py) and a real Mosquitto (tests/broker.py) for the commands.

The access table (backoffice/web/access.py) is checked exhaustively: every route of the app is in it, and
every endpoint answers every role as the table says (anonymous, a store user on its own store, a store
user on another store, an admin), with and without the CSRF token. Bad parameters are a 4xx with a
message, never a 500.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi", reason="the dashboard needs the backoffice extra (make venv installs it)")

from broker import Broker, Subscriber, mosquitto_binary, wait_until
from dash_util import PASSWORD, answer, engines, flush, login, status
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from backoffice.collector import BrokerURL
from backoffice.ingest import Ingest
from backoffice.simdevice import SimDevice
from backoffice.web import views
from backoffice.web.access import ENDPOINTS, Endpoint
from backoffice.web.accounts import User, add_user
from backoffice.web.app import create_app
from backoffice.web.commands import Commander
from backoffice.web.deps import Settings

A, B = "north-17", "south-42"  # distinctive: a page of B's user must not contain A anywhere
TZ = "Europe/Paris"


@dataclass
class World:
    app: Any
    cfg: Settings
    ingest: Ingest
    devs: dict[str, SimDevice]
    clients: dict[str, TestClient]
    csrf: dict[str, str]
    command_id: str
    broker: Broker
    sub: Subscriber
    db: str


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    binary = mosquitto_binary()
    if binary is None:
        pytest.skip("mosquitto is not installed (make system-deps installs it)")
    broker = Broker(binary)
    broker.start()
    sub = Subscriber(broker, ["lanecount/+/+/cmd/#"])
    db = str(tmp_path_factory.mktemp("dash") / "bo.db")
    reader, writer = engines(db)
    ingest = Ingest(writer)
    now = time.time()
    devs = {
        k: SimDevice(k.split("/")[0], k.split("/")[1], period=60.0)
        for k in (f"{A}/lane-1", f"{A}/lane-2", f"{B}/lane-1")
    }
    for i, dev in enumerate(devs.values()):
        dev.start(now - 5400)
        for j in range(20):
            dev.cross(now - 5300 + j * 200 + i, "milk_carton" if j % 3 else "apple")
        dev.alert(now - 1800, "milk_carton", "raised", 1)
        dev.tick(now)
        flush(ingest, dev)
    lane2 = devs[f"{A}/lane-2"]
    lane2._queue(
        "alerts/source",
        {
            "timestamp": now - 120,
            "state": "raised",
            "source": "reconnecting",
            "down_s": 75.0,
            "error": "camera unplugged",
        },
        retain=True,
        keep=True,
    )
    flush(ingest, lane2)
    status(ingest, devs[f"{A}/lane-1"], "online", now)
    status(ingest, lane2, "offline", now)
    status(ingest, devs[f"{B}/lane-1"], "online", now, model_version="sim-2")
    add_user(writer, "hq", "admin", [], PASSWORD)
    add_user(writer, "alice", "store", [A], PASSWORD)
    add_user(writer, "bob", "store", [B], PASSWORD)
    commander = Commander(reader, writer, BrokerURL(broker.host, broker.port, False, None, None))
    cfg = Settings(reader, writer, commander, TZ)
    app = create_app(cfg)
    with TestClient(app, raise_server_exceptions=False) as anon:
        assert wait_until(lambda: commander.connected, 10)
        clients = {"anon": anon}
        csrf = {}
        for role, name in (("own", "alice"), ("other", "bob"), ("admin", "hq")):
            clients[role] = TestClient(app, raise_server_exceptions=False)
            csrf[role] = login(clients[role], name)
        res = clients["own"].post(
            f"/api/sites/{A}/lanes/lane-1/restocked",
            json={"product": "milk_carton"},
            headers={"X-CSRF-Token": csrf["own"]},
        )
        assert res.status_code == 202, res.text
        yield World(app, cfg, ingest, devs, clients, csrf, res.json()["id"], broker, sub, db)
    sub.close()
    broker.close()


def fresh(w: World, name: str) -> tuple[TestClient, str]:
    c = TestClient(w.app, raise_server_exceptions=False)
    return c, login(c, name)


# --- the access table ------------------------------------------------------------------------------------


def _walk(routes: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    """(method, path) of every route; included routers are nested in newer FastAPI, flat in older."""
    for r in routes:
        if hasattr(r, "original_router"):
            yield from _walk(r.original_router.routes, prefix + r.include_context.prefix)
        elif getattr(r, "methods", None):
            yield from ((m, prefix + r.path) for m in r.methods if m != "HEAD")


def test_every_route_is_in_the_access_table(world: World) -> None:
    routes = set(_walk(world.app.routes))
    table = {(e.method, e.path) for e in ENDPOINTS}
    assert routes == table, f"not in the table: {routes - table}; in the table, not served: {table - routes}"


def _request(
    w: World, e: Endpoint, role: str, with_csrf: bool = True, site: str = A, command_id: str = ""
) -> Any:
    """Call ``e`` as ``role`` on store A's resources (logout: on a session of its own)."""
    client = w.clients[role]
    token = w.csrf.get(role)
    if e.path.endswith("/logout") and role != "anon":
        client, token = fresh(w, {"own": "alice", "other": "bob", "admin": "hq"}[role])
    path = e.path.format(site=site, device="lane-1", command_id=command_id or w.command_id)
    headers = {"X-CSRF-Token": token} if (with_csrf and token and path.startswith("/api/")) else {}
    form: dict[str, str] = (
        {"csrf_token": token} if (with_csrf and token and not path.startswith("/api/")) else {}
    )
    kw: dict[str, Any] = {"headers": headers, "follow_redirects": False}
    if e.method == "GET":
        return client.get(path, **kw)
    if path == "/alerts/restocked":
        form |= {"site": site, "device": "lane-1", "product": "milk_carton"}
    elif path.endswith("/settings") and not path.startswith("/api/"):
        form["tz"] = TZ
    if path.startswith("/api/"):
        body = (
            {"tz": TZ}
            if path.endswith("/settings")
            else {"product": "milk_carton"}
            if path.endswith("/restocked")
            else None
        )
        return client.request(e.method, path, json=body, **kw)
    return client.request(e.method, path, data=form, **kw)


ALLOWED = {"GET": (200,), "POST": (200, 202, 303), "PUT": (200,)}
ROLES = ("anon", "own", "other", "admin")
PROTECTED = [e for e in ENDPOINTS if e.access != "public"]


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("e", PROTECTED, ids=lambda e: f"{e.method} {e.path}")
def test_access_table(world: World, e: Endpoint, role: str) -> None:
    res = _request(world, e, role)
    api = e.path.startswith("/api/")
    if role == "anon":
        if api:
            assert res.status_code == 401, res.text
        else:
            assert res.status_code == 303 and res.headers["location"].startswith("/login?next="), res.text
        return
    if e.access == "admin" and role != "admin":
        assert res.status_code == 403, res.text
        return
    if e.access == "store" and role == "other":
        assert res.status_code == 404, res.text
        # exactly what a store (or command) that does not exist gives: nothing learnt
        ghost = _request(world, e, role, site="zz-nowhere", command_id="0" * 32)
        assert ghost.status_code == 404
        assert res.text.replace(A, "X").replace(world.command_id, "Y") == ghost.text.replace(
            "zz-nowhere", "X"
        ).replace("0" * 32, "Y")
        return
    assert res.status_code in ALLOWED[e.method], (res.status_code, res.text[:300])
    if role == "other":  # a listing for bob: nothing of store A in it
        assert A not in res.text, res.text[:2000]


@pytest.mark.parametrize("role", ("own", "admin"))
@pytest.mark.parametrize("e", [e for e in PROTECTED if e.changes], ids=lambda e: f"{e.method} {e.path}")
def test_state_changes_need_the_csrf_token(world: World, e: Endpoint, role: str) -> None:
    if e.access == "admin" and role != "admin":
        pytest.skip("refused before (403 by role)")
    res = _request(world, e, role, with_csrf=False)
    assert res.status_code == 403 and "CSRF" in res.text, res.text
    w = world.clients[role]
    path = e.path.format(site=A, device="lane-1", command_id=world.command_id)
    wrong = w.request(e.method, path, headers={"X-CSRF-Token": "x" * 43}, json={}, follow_redirects=False)
    assert wrong.status_code == 403


@pytest.mark.parametrize(
    "path", ["/alerts", "/commands", "/api/alerts", "/api/gaps", "/api/commands"], ids=lambda p: p
)
def test_a_listing_of_another_store_is_404(world: World, path: str) -> None:
    res = world.clients["other"].get(f"{path}?site={A}")
    assert res.status_code == 404 and A in res.text  # it names what was asked, nothing else
    assert "lane-2" not in res.text and "milk_carton" not in res.text
    assert world.clients["own"].get(f"{path}?site={A}").status_code == 200


def test_the_store_user_sees_only_its_store(world: World) -> None:
    fleet = world.clients["other"].get("/api/fleet").json()
    assert [s["site"] for s in fleet["stores"]] == [B]
    assert {s["site"] for s in world.clients["admin"].get("/api/fleet").json()["stores"]} == {A, B}
    alerts = world.clients["own"].get("/api/alerts").json()
    assert {a["site"] for a in alerts} == {A} and all(a["age_s"] > 100 for a in alerts)
    assert {a["kind"] for a in alerts} == {"depletion", "source"}
    page = world.clients["own"].get("/alerts").text
    assert (
        "no frames for 75 s (source reconnecting): camera unplugged" in page
        and page.count('class="restocked"') == 2
    )  # not on a source alert
    cmds = world.clients["other"].get("/api/commands").json()
    assert all(c["site"] == B for c in cmds)


# --- login, sessions, cookies ----------------------------------------------------------------------------


def test_login_needs_its_csrf_token_and_the_right_password(world: World) -> None:
    c = TestClient(world.app, raise_server_exceptions=False)
    assert c.post("/api/login", json={"name": "alice", "password": PASSWORD}).status_code == 403
    token = c.get("/api/csrf").json()["csrf_token"]
    bad = c.post(
        "/api/login", json={"name": "alice", "password": "wrong password!"}, headers={"X-CSRF-Token": token}
    )
    assert bad.status_code == 401 and bad.json()["detail"] == "wrong user name or password"
    unknown = c.post(
        "/api/login", json={"name": "nobody", "password": PASSWORD}, headers={"X-CSRF-Token": token}
    )
    assert (
        unknown.status_code == 401 and unknown.json()["detail"] == bad.json()["detail"]
    )  # no user enumeration
    assert (
        c.post("/login", data={"name": "alice", "password": PASSWORD}, follow_redirects=False).status_code
        == 403
    )
    form = c.get("/login")
    assert form.status_code == 200 and 'name="csrf_token"' in form.text
    token = form.text.split('name="csrf_token" value="')[1].split('"')[0]
    res = c.post(
        "/login",
        data={"name": "alice", "password": PASSWORD, "next": "//evil.example/x", "csrf_token": token},
        follow_redirects=False,
    )
    assert res.status_code == 303 and res.headers["location"] == "/"  # no open redirect
    cookie = res.headers["set-cookie"]
    assert (
        "lanecount_session=" in cookie
        and "HttpOnly" in cookie
        and "SameSite=lax" in cookie
        and "Path=/" in cookie
    )
    assert c.get("/api/me").json()["user"]["name"] == "alice"


def test_logout_ends_the_session_on_the_server(world: World) -> None:
    c, token = fresh(world, "alice")
    stolen = dict(c.cookies)
    assert c.post("/api/logout", headers={"X-CSRF-Token": token}).status_code == 200
    assert c.get("/api/me").status_code == 401
    replay = TestClient(world.app, raise_server_exceptions=False, cookies=stolen)
    assert replay.get("/api/me").status_code == 401


def test_a_new_password_or_removing_the_user_ends_its_sessions(world: World) -> None:
    from backoffice.web.accounts import remove_user, set_password

    add_user(world.cfg.writer, "gina", "store", [A], PASSWORD)
    c, _ = fresh(world, "gina")
    assert c.get("/api/me").status_code == 200
    set_password(world.cfg.writer, "gina", PASSWORD + "!")
    assert c.get("/api/me").status_code == 401
    c = TestClient(world.app, raise_server_exceptions=False)
    login(c, "gina", PASSWORD + "!")
    remove_user(world.cfg.writer, "gina")
    assert c.get("/api/me").status_code == 401


def test_secure_cookies_behind_tls(world: World) -> None:
    cfg = Settings(
        world.cfg.reader,
        world.cfg.writer,
        Commander(world.cfg.reader, world.cfg.writer, None),
        TZ,
        secure_cookies=True,
    )
    c = TestClient(create_app(cfg), base_url="https://testserver", raise_server_exceptions=False)
    token = c.get("/api/csrf").json()["csrf_token"]
    res = c.post("/api/login", json={"name": "alice", "password": PASSWORD}, headers={"X-CSRF-Token": token})
    cookie = next(v for k, v in res.headers.multi_items() if k == "set-cookie" and "session" in v)
    assert cookie.startswith("__Host-lanecount_session=") and "Secure" in cookie and "HttpOnly" in cookie


def test_security_headers(world: World) -> None:
    res = world.clients["own"].get("/")
    assert (
        "script-src 'self'" in res.headers["content-security-policy"]
        and "unsafe-inline" not in res.headers["content-security-policy"]
    )
    assert res.headers["x-frame-options"] == "DENY" and res.headers["x-content-type-options"] == "nosniff"
    assert res.headers["cache-control"] == "no-store"
    assert "<script>" not in res.text  # no inline script anywhere (the CSP would block it)


def test_failed_logins_are_rate_limited_and_logged(tmp_path, caplog) -> None:
    reader, writer = engines(str(tmp_path / "rl.db"))
    add_user(writer, "carol", "store", [A], PASSWORD)
    c = TestClient(
        create_app(Settings(reader, writer, Commander(reader, writer, None))), raise_server_exceptions=False
    )
    token = c.get("/api/csrf").json()["csrf_token"]
    caplog.set_level("WARNING", logger="backoffice.web.accounts")
    for _ in range(5):
        assert (
            c.post(
                "/api/login",
                json={"name": "carol", "password": "guess-guess"},
                headers={"X-CSRF-Token": token},
            ).status_code
            == 401
        )
    res = c.post("/api/login", json={"name": "carol", "password": PASSWORD}, headers={"X-CSRF-Token": token})
    assert (
        res.status_code == 429
        and int(res.headers["retry-after"]) > 800
        and "try again" in res.json()["detail"]
    )
    assert sum("failed login for 'carol' from testclient" in r.getMessage() for r in caplog.records) == 5
    assert any("rate limit" in r.getMessage() for r in caplog.records)
    # the page says so too
    form = c.get("/login").text.split('name="csrf_token" value="')[1].split('"')[0]
    page = c.post("/login", data={"name": "carol", "password": PASSWORD, "csrf_token": form})
    assert page.status_code == 429 and "too many failed logins" in page.text


# --- figures -----------------------------------------------------------------------------------------------


def test_csv_export_is_the_cli_csv_and_equals_the_json(world: World) -> None:
    from backoffice.cli import app as cli

    since, until = "-3h", "now"
    csv = world.clients["own"].get(f"/api/sites/{A}/counts.csv", params={"since": since, "until": until})
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
    assert "attachment" in csv.headers["content-disposition"]
    out = CliRunner().invoke(
        cli,
        [
            "counts",
            "--site",
            A,
            "--since",
            since,
            "--until",
            until,
            "--tz",
            TZ,
            "--format",
            "csv",
            "--db",
            world.db,
        ],
    )
    assert out.exit_code == 0, out.output
    assert csv.text == out.stdout, (csv.text, out.stdout)
    rows = (
        world.clients["own"]
        .get(f"/api/sites/{A}/counts", params={"since": since, "until": until})
        .json()["rows"]
    )
    total = sum(r["n"] for r in rows)
    assert total == sum(len(world.devs[k].truth) for k in world.devs if k.startswith(A)) == 40
    assert len(csv.text.strip().splitlines()) == len(rows) + 1


def test_store_time_zone_setting_changes_every_time_shown(world: World) -> None:
    own, admin = world.clients["own"], world.clients["admin"]
    before = own.get(f"/api/sites/{A}/counts.csv", params={"since": "-3h"}).text
    assert "+01:00" in before or "+02:00" in before  # Europe/Paris, the serve default
    res = admin.put(
        f"/api/sites/{A}/settings",
        json={"tz": "America/New_York"},
        headers={"X-CSRF-Token": world.csrf["admin"]},
    )
    assert res.status_code == 200
    try:
        after = own.get(f"/api/sites/{A}/counts.csv", params={"since": "-3h"}).text
        assert "-05:00" in after or "-04:00" in after
        assert "America/New_York" in own.get(f"/sites/{A}").text
    finally:
        admin.put(f"/api/sites/{A}/settings", json={"tz": TZ}, headers={"X-CSRF-Token": world.csrf["admin"]})


def test_fleet_marks_stale_lanes_and_old_models(world: World) -> None:
    with world.cfg.reader.connect() as conn:
        admin = User(0, "hq", "admin", ())
        stores, newest = views.fleet(conn, admin, TZ)
        assert newest == "sim-2"
        lanes = {(s.site, ln.row.device): ln for s in stores for ln in s.lanes}
        assert lanes[(A, "lane-1")].outdated and not lanes[(B, "lane-1")].outdated
        assert lanes[(A, "lane-1")].state == "online" and lanes[(A, "lane-2")].state == "offline"
        assert lanes[(A, "lane-1")].period_s == 60.0
        later, _ = views.fleet(conn, admin, TZ, now=time.time() + 200)  # counts stopped for > 3 periods
        states = {(s.site, ln.row.device): ln.state for s in later for ln in s.lanes}
        assert states[(A, "lane-1")] == "stale" and states[(A, "lane-2")] == "offline"
    page = world.clients["admin"].get("/").text
    assert "not the newest (sim-2)" in page


def test_a_large_fleet_lists_the_lanes_that_need_a_look(world: World, monkeypatch) -> None:
    from backoffice.web import pages

    monkeypatch.setattr(pages, "FLEET_ALL_LANES", 2)
    page = world.clients["admin"].get("/").text
    # north-17/lane-1 is online but on an old model, lane-2 offline, south-42/lane-1 has an open alert
    assert page.count('class="lane state-') == 3 and "list every lane" in page
    with world.cfg.reader.connect() as conn:
        stores, _ = views.fleet(conn, User(0, "hq", "admin", ()), TZ)
    lane = stores[0].lanes[0]
    fine = dataclasses.replace(
        lane,
        state="online",
        outdated=False,
        row=dataclasses.replace(lane.row, open_alerts=0, missing_messages=0),
    )
    store = views.Store(A, TZ, [fine, lane])
    assert store.attention == [lane]
    assert world.clients["admin"].get("/?all=1").text.count('class="lane state-') == 3


def test_a_lanes_period_is_the_regular_length_that_repeats() -> None:
    assert views._regular(1440 * 5.0, 1440 * 6.0) == 1440.0  # a catch-up can look regular by chance,
    assert views.pick_period([60.0, 60.0, 1440.0]) == 60.0  # but normal periods repeat
    assert views.pick_period([1440.0, None, 60.0]) == 60.0 and views.pick_period([None, None, None]) is None
    assert views._regular(1000.5, 1060.0) is None  # cut short by a start


def test_empty_states_say_what_to_do(tmp_path) -> None:
    reader, writer = engines(str(tmp_path / "empty.db"))
    add_user(writer, "dave", "admin", [], PASSWORD)
    c = TestClient(
        create_app(Settings(reader, writer, Commander(reader, writer, None))), raise_server_exceptions=False
    )
    login(c, "dave")
    assert "No lane has reported yet" in c.get("/").text and "lanecount-backoffice collect" in c.get("/").text
    assert "No open alerts" in c.get("/alerts").text
    assert "No commands sent yet" in c.get("/commands").text


# --- commands ----------------------------------------------------------------------------------------------


def test_a_command_to_an_offline_device_is_queued_never_done(world: World) -> None:
    own, token = world.clients["own"], world.csrf["own"]
    res = own.post(
        f"/api/sites/{A}/lanes/lane-2/restocked",
        json={"product": "milk_carton", "stock": 12},
        headers={"X-CSRF-Token": token},
    )
    assert res.status_code == 202, res.text
    cmd = res.json()
    assert cmd["state"] == "queued" and "offline" in cmd["summary"] and cmd["user_name"] == "alice"
    # it went to the broker on the lane's command topic, with its id
    topic = f"lanecount/{A}/lane-2/cmd/restocked"
    assert wait_until(
        lambda: any(json.loads(m.payload).get("id") == cmd["id"] for m in world.sub.on(topic)), 5
    )
    sent = next(p for p in (json.loads(m.payload) for m in world.sub.on(topic)) if p["id"] == cmd["id"])
    assert sent == {"id": cmd["id"], "product": "milk_carton", "stock": 12}
    page = own.get(f"/commands/{cmd['id']}").text
    assert "queued" in page and "sent, no answer yet" in page and 'id="command-state">done' not in page
    assert '<meta http-equiv="refresh"' in page
    # offline: not sent again yet; online again: due (same id)
    assert cmd["id"] not in [d[0] for d in world.cfg.commander.due()]
    dev = world.devs[f"{A}/lane-2"]
    status(world.ingest, dev, "online", time.time())
    assert cmd["id"] in [d[0] for d in world.cfg.commander.due()]
    # an answer with this id from ANOTHER device does not complete it
    answer(world.ingest, world.devs[f"{B}/lane-1"], cmd["id"])
    assert own.get(f"/api/commands/{cmd['id']}").json()["state"] != "done"
    answer(world.ingest, dev, cmd["id"], ok=True, message="milk_carton restocked")
    done = own.get(f"/api/commands/{cmd['id']}").json()
    assert done["state"] == "done" and done["answer"] == "milk_carton restocked"
    assert cmd["id"] not in [d[0] for d in world.cfg.commander.due()]
    log = own.get("/commands").text
    assert "alice" in log and "done: milk_carton restocked" in log


def test_a_refused_command_says_so(world: World) -> None:
    own, token = world.clients["own"], world.csrf["own"]
    cmd = own.post(
        f"/api/sites/{A}/lanes/lane-1/restocked",
        json={"product": "milk_carton"},
        headers={"X-CSRF-Token": token},
    ).json()
    assert cmd["state"] == "sent" and cmd["summary"] == "sent, no answer yet"
    answer(
        world.ingest, world.devs[f"{A}/lane-1"], cmd["id"], ok=False, message="restocked: no depletion rule"
    )
    got = own.get(f"/api/commands/{cmd['id']}").json()
    assert got["state"] == "refused" and "no depletion rule" in got["summary"]


def test_without_a_broker_nothing_is_claimed_sent(tmp_path, world: World) -> None:
    # a broker that is not there: the command is recorded, not sent, and says so
    gone = BrokerURL("127.0.0.1", 1, False, None, None)
    cmdr = Commander(world.cfg.reader, world.cfg.writer, gone)
    cmd_id = cmdr.restocked("hq", A, "lane-1", "milk_carton", None)
    with world.cfg.reader.connect() as conn:
        (c,) = views.commands(conn, command_id=cmd_id)
    assert c.state == "queued" and "broker unreachable" in c.summary and c.sent_at is None
    assert cmd_id in [d[0] for d in cmdr.due()]


# --- bad input ------------------------------------------------------------------------------------------

BAD = [
    ("GET", f"/api/sites/{A}/counts?since=yesterday-ish", 400, "since"),
    ("GET", f"/api/sites/{A}/counts?since=2025-13-45", 400, "since"),
    ("GET", f"/api/sites/{A}/counts?since=now&until=-1d", 400, "must be after"),
    ("GET", f"/api/sites/{A}/counts?since=-500d", 400, "longer than 400 days"),
    ("GET", f"/api/sites/{A}/counts?since=99999999999999", 400, "since"),
    ("GET", f"/api/sites/{A}/counts?by=week", 422, "by"),
    ("GET", f"/api/sites/{A}/counts?device=nope", 404, "no lane"),
    ("GET", f"/api/sites/{A}/counts?since=" + "1" * 60, 422, "since"),
    ("GET", f"/api/sites/{A}/counts.csv?until=garbage", 400, "until"),
    ("GET", "/api/sites/nowhere/counts", 404, "no store"),
    ("GET", f"/api/sites/{A}/lanes/nope", 404, "no lane"),
    ("GET", f"/api/sites/{A}/lanes/lane-1?limit=0", 422, "limit"),
    ("GET", "/api/commands/deadbeef", 404, "no command"),
    ("GET", "/api/commands?limit=100000", 422, "limit"),
    ("GET", "/api/alerts?site=nowhere", 404, "no store"),
    ("GET", f"/sites/{A}?day=2025-99-99", 400, "not a date"),
    ("GET", f"/sites/{A}?day=1800-01-01", 400, "out of range"),
    ("GET", f"/sites/{A}?days=400", 422, "days"),
    ("GET", f"/sites/{A}?days=31&by=hour", 400, "at most 7 days"),
    ("GET", f"/sites/{A}?by=week", 422, "by"),
    ("GET", f"/sites/{A}/lanes/nope", 404, "no lane"),
    ("GET", "/commands/nope", 404, "no command"),
    ("POST", f"/api/sites/{A}/lanes/lane-1/restocked", 422, "stock", {"product": "milk_carton", "stock": -1}),
    ("POST", f"/api/sites/{A}/lanes/lane-1/restocked", 422, "product", {"stock": 3}),
    ("POST", f"/api/sites/{A}/lanes/lane-1/restocked", 422, "extra", {"product": "milk_carton", "x": 1}),
    ("POST", f"/api/sites/{A}/lanes/lane-1/restocked", 404, "no depletion alert", {"product": "caviar"}),
    ("POST", f"/api/sites/{A}/lanes/nope/restocked", 404, "no depletion alert", {"product": "milk_carton"}),
    ("POST", f"/api/sites/{A}/lanes/lane-1/restocked", 422, "JSON", "not json"),
    ("PUT", f"/api/sites/{A}/settings", 400, "unknown time zone", {"tz": "Mars/Olympus"}),
    (
        "POST",
        "/alerts/restocked",
        400,
        "stock",
        {"site": A, "device": "lane-1", "product": "milk_carton", "stock": "lots"},
    ),
    (
        "POST",
        "/alerts/restocked",
        404,
        "no store",
        {"site": "nowhere", "device": "lane-1", "product": "milk_carton"},
    ),
]


@pytest.mark.parametrize("case", BAD, ids=lambda c: f"{c[0]} {c[1][:60]}")
def test_bad_parameters_are_a_clear_4xx(world: World, case: tuple[Any, ...]) -> None:
    method, path, code, words, *body = case
    role = "admin" if "/settings" in path else "own"
    client, token = world.clients[role], world.csrf[role]
    if method == "GET":
        res = client.get(path)
    elif path.startswith("/api/"):
        payload = body[0] if body else None
        kw: dict[str, Any] = {"content": payload} if isinstance(payload, str) else {"json": payload}
        res = client.request(
            method, path, headers={"X-CSRF-Token": token, "Content-Type": "application/json"}, **kw
        )
    else:
        res = client.request(method, path, data={**body[0], "csrf_token": token})
    assert res.status_code == code, (res.status_code, res.text[:500])
    text = res.json()["detail"] if path.startswith("/api/") else res.text
    assert words.lower() in text.lower(), text[:500]
    assert "Traceback" not in res.text


# --- the CLI: users and serve -------------------------------------------------------------------------


def test_user_add_hashes_with_argon2id_and_refuses_bad_input(tmp_path) -> None:
    from sqlalchemy import select

    from backoffice.cli import app as cli
    from backoffice.web import tables as wt

    db = str(tmp_path / "u.db")
    run = CliRunner().invoke
    ok = run(
        cli,
        ["user", "add", "erin", "--role", "store", "--sites", "s1,s2", "--password-stdin", "--db", db],
        input=PASSWORD + "\n",
    )
    assert ok.exit_code == 0 and "stores s1, s2" in ok.output, ok.output
    for args, words in (
        (["user", "add", "erin", "--role", "store", "--sites", "s1"], "exists"),
        (["user", "add", "frank", "--role", "admin", "--sites", "s1"], "leave --sites out"),
        (["user", "add", "frank", "--role", "store"], "at least one store"),
        (["user", "add", "frank", "--role", "root"], "not one of admin, store"),
        (["user", "add", "frank", "--role", "store", "--sites", "a/b"], "not a store id"),
    ):
        res = run(cli, [*args, "--password-stdin", "--db", db], input=PASSWORD + "\n")
        assert res.exit_code == 2 and words in res.output, res.output
    short = run(
        cli, ["user", "add", "frank", "--role", "admin", "--password-stdin", "--db", db], input="short\n"
    )
    assert short.exit_code == 2 and "at least 10 characters" in short.output
    reader, _ = engines(db)
    with reader.connect() as conn:
        hashed = conn.execute(select(wt.users.c.password_hash).where(wt.users.c.name == "erin")).scalar()
    assert hashed.startswith("$argon2id$") and PASSWORD not in hashed
    listed = run(cli, ["user", "list", "--db", db])
    assert "erin  store  s1,s2" in listed.output


def test_serve_refuses_to_start_without_a_user(tmp_path) -> None:
    from backoffice.cli import app as cli

    res = CliRunner().invoke(cli, ["serve", "--db", str(tmp_path / "none.db"), "--port", "1"])
    assert res.exit_code == 2
    assert (
        "no user can sign in" in res.output
        and "lanecount-backoffice user add NAME --role admin" in res.output
    )


# --- the systemd unit --------------------------------------------------------------------------------

UNIT = (
    Path(__file__).resolve().parent.parent / "backoffice" / "systemd" / "lanecount-backoffice-serve.service"
)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_the_serve_unit_verifies_binds_loopback_and_exposes_little(tmp_path) -> None:
    text = UNIT.read_text()
    for key in (
        "Type=notify",
        "--host 127.0.0.1",
        "--secure-cookies",
        "CapabilityBoundingSet=\n",
        "User=lanecount-backoffice",
    ):
        assert key in text, key
    unit = tmp_path / UNIT.name
    unit.write_text(text.replace("/opt/lanecount/venv/bin/lanecount-backoffice", sys.executable))
    res = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert res.returncode == 0 and UNIT.name not in res.stderr, res.stderr
    sec = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(unit)], capture_output=True, text=True
    )
    if "--offline" in sec.stderr:
        pytest.skip(f"this systemd-analyze cannot score a unit file offline: {sec.stderr.strip()}")
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", sec.stdout)
    assert match and float(match.group(1)) <= 2.0, sec.stdout[-2000:]


def test_the_demo_prints_a_working_login_and_stops_under_ci(world: World) -> None:
    env = {**os.environ, "CI": "true"}
    res = subprocess.run(
        [sys.executable, "-m", "backoffice.web.demo", "--db", world.db],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    url = re.search(r"dashboard: (http://127\.0\.0\.1:\d+/)\s+\(3 lanes", res.stdout)
    login_line = re.search(r"login:\s+demo / (\S+)", res.stdout)
    assert url and login_line, res.stdout
    c = TestClient(world.app, raise_server_exceptions=False)
    assert login(c, "demo", login_line.group(1))
    assert c.get("/api/me").json()["user"] == {"name": "demo", "role": "admin", "sites": None}
    again = subprocess.run(
        [sys.executable, "-m", "backoffice.web.demo", "--db", world.db],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    second = re.search(r"login:\s+demo / (\S+)", again.stdout)
    assert (
        again.returncode == 0 and second and second.group(1) != login_line.group(1)
    )  # a new random password


def test_the_same_pages_and_api_on_postgresql(pg_url: str) -> None:
    """Every query of the dashboard on PostgreSQL too (the private cluster of tests/pg.py)."""
    reader, writer = engines(pg_url)
    ingest = Ingest(writer)
    now = time.time()
    dev = SimDevice(A, "lane-1", period=60.0)
    dev.start(now - 3600)
    for j in range(12):
        dev.cross(now - 3500 + j * 250, "milk_carton" if j % 2 else "apple")
    dev.alert(now - 600, "milk_carton", "raised", 1)
    dev.tick(now)
    flush(ingest, dev)
    status(ingest, dev, "online", now)
    add_user(writer, "alice", "store", [A], PASSWORD)
    c = TestClient(
        create_app(Settings(reader, writer, Commander(reader, writer, None), TZ)),
        raise_server_exceptions=False,
    )
    login(c, "alice")
    counts = c.get(f"/api/sites/{A}/counts", params={"since": "-2h"}).json()
    assert sum(r["n"] for r in counts["rows"]) == 12
    fleet = c.get("/api/fleet").json()
    (lane,) = fleet["stores"][0]["lanes"]
    assert lane["state"] == "online" and lane["period_s"] == 60.0
    for path in (
        "/",
        f"/sites/{A}",
        f"/sites/{A}/lanes/lane-1",
        f"/sites/{A}?days=3",
        "/alerts",
        "/commands",
        f"/api/sites/{A}/lanes/lane-1",
    ):
        assert c.get(path).status_code == 200, path
    # a command recorded by hand (no broker here), then answered: done
    from backoffice.web import tables as wt

    with writer.begin() as conn:
        conn.execute(
            wt.commands.insert().values(
                id="c" * 32,
                site=A,
                device="lane-1",
                command="restocked",
                payload='{"product": "milk_carton"}',
                user_name="alice",
                created=now,
                attempts=1,
                sent_at=now,
                device_state="online",
            )
        )
    assert c.get(f"/api/commands/{'c' * 32}").json()["state"] == "sent"
    answer(ingest, dev, "c" * 32)
    assert c.get(f"/api/commands/{'c' * 32}").json()["state"] == "done"


def test_the_readme_shows_this_access_table() -> None:
    from backoffice.web.access import markdown

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert markdown() in readme, (
        "README's access table is out of date: paste backoffice.web.access.markdown()"
    )


def test_figures_the_stream_cannot_prove_are_marked(tmp_path) -> None:
    """A device whose outbox bound dropped counts messages: the page marks those rows and says why."""
    reader, writer = engines(str(tmp_path / "lossy.db"))
    ingest = Ingest(writer)
    now = time.time() // 3600 * 3600 - 4 * 3600 + 600
    dev = SimDevice(A, "lane-9", period=60.0, max_messages=4)
    dev.start(now)
    for j in range(40):
        dev.cross(now + j * 300 + 5, "apple")  # 3 h 20 min of sales
        if j % 20 == 19:
            flush(ingest, dev)  # the outbox overflowed in between: counts messages and events lost
    dev.tick(now + 12100)
    flush(ingest, dev)
    status(ingest, dev, "online", time.time())
    add_user(writer, "hank", "store", [A], PASSWORD)
    c = TestClient(
        create_app(Settings(reader, writer, Commander(reader, writer, None), "UTC")),
        raise_server_exceptions=False,
    )
    login(c, "hank")
    data = c.get(f"/api/sites/{A}/counts", params={"since": "-6h"}).json()
    assert dev.dropped > 0 and data["spans"], (dev.dropped, data)
    inexact = [r for r in data["rows"] if not r["exact"]]
    assert inexact and {s["kind"] for s in data["spans"]} <= {"unattributed", "unknown", "transition"}
    day = time.strftime("%Y-%m-%d", time.gmtime(now))
    page = c.get(f"/sites/{A}/lanes/lane-9", params={"day": day, "days": 2}).text
    assert 'class="inexact"' in page and "Not exact" in page and data["spans"][0]["reason"] in page
    csv_rows = c.get(f"/api/sites/{A}/counts.csv", params={"since": "-6h"}).text.strip().splitlines()[1:]
    assert sum(row.endswith(",false") for row in csv_rows) == len(inexact)
