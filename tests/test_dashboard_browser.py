"""The dashboard in a real browser, end to end, with every part real.

A real ``lanecount-edge run`` device (ONNX Runtime, the demo model) counts a synthetic recording whose true
crossings are known and sells two milk cartons, which raises its depletion alert; it publishes to a real
Mosquitto (tests/broker.py); a real collector (``lanecount-backoffice collect``) stores everything in
SQLite; ``lanecount-backoffice serve`` shows it; Debian's chromium, driven by Selenium through Debian's
chromedriver (no browser is downloaded), signs in.

A recording ends, and a daemon whose recording ended stops; a stopped device cannot answer
"Restocked". So the device runs twice on one state database: first the recording (all its counts are
reported at the clean stop), then a looping folder of empty conveyor frames, which keeps it online
and answering commands while counting nothing more, so the counts still equal the recording's truth.

Screenshots of the fleet, lane and alerts pages go to the test's folder, and to
``$LANECOUNT_SCREENSHOTS`` when set (the README's, in docs/screenshots/, are made that way).
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

pytest.importorskip("fastapi", reason="the dashboard needs the backoffice extra (make venv installs it)")
pytest.importorskip("selenium", reason="the browser tests need selenium (dev extra)")

import cv2
import numpy as np
import yaml
from broker import Broker, mosquitto_binary, wait_until
from conftest import DEMO_ONNX, ROOT
from dash_util import PASSWORD
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from backoffice import queries
from backoffice.db import make_engine
from edge.demo import free_port

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
SITE, DEVICE, OTHER = "s1", "d1", "s2"
TZ = "Europe/Paris"
SEED, SECONDS = 10, 10  # as tests/test_daemon.py: 5 crossings, two milk cartons sold
BO = [sys.executable, "-c", "from backoffice.cli import main; main()"]


class Procs:
    """Subprocesses with their output in files; all stopped at the end."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.procs = folder, []

    def start(self, name: str, cmd: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        log = open(self.folder / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
        p = subprocess.Popen(
            cmd, stdout=log, stderr=log, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"}, **kw
        )
        log.close()
        self.procs.append(p)
        return p

    def log(self, name: str) -> str:
        path = self.folder / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)


def _bo(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BO, *args], input=stdin, capture_output=True, text=True, cwd=ROOT, timeout=120)


def _device_config(tmp: Path, truth: dict[str, Any], source: dict[str, Any], port: int) -> Path:
    cfg = {
        "site": SITE,
        "device": DEVICE,
        "state_dir": str(tmp / "state"),
        "source": source,
        "model": {"path": str(DEMO_ONNX)},
        "counting": {"lines": [truth["line"]]},
        "alerts": {
            "depletion": [
                {"product": "milk_carton", "stock": 2, "threshold": 1, "line": "lane", "direction": "in"}
            ]
        },
        "mqtt": {"host": "127.0.0.1", "port": port, "publish_period_s": 1.0, "status_period_s": 1.0},
    }
    path = tmp / f"edge-{source['type']}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _chrome(profile: Path) -> webdriver.Chrome:
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not look for a driver online
    opts = Options()
    opts.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=1280,900",
    ):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Broker, collector, a device that counted the recording and now idles online, the dashboard."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip(
            "Debian's chromium and chromium-driver are not installed (make system-deps installs them)"
        )
    binary = mosquitto_binary()
    if binary is None:
        pytest.skip("mosquitto is not installed (make system-deps installs it)")
    from train.synth_video import render_video

    tmp = tmp_path_factory.mktemp("browser")
    truth = render_video(tmp / "video", SECONDS, SEED)
    blank = tmp / "blank"
    blank.mkdir()
    ok, frame = cv2.VideoCapture(str(tmp / "video" / "video.mp4")).read()
    assert ok
    cv2.imwrite(str(blank / "0000.png"), np.full_like(frame, 70))  # an empty belt: nothing to count
    broker = Broker(binary)
    broker.start()
    procs = Procs(tmp)
    db = str(tmp / "bo.db")
    try:
        procs.start(
            "collector",
            [
                *BO,
                "collect",
                "--broker",
                f"mqtt://127.0.0.1:{broker.port}",
                "--db",
                db,
                "--batch-ms",
                "20",
                "--client-id",
                "browser-test-collector",
            ],
        )
        engine = make_engine(db)
        assert wait_until(lambda: Path(db).exists() and _has_table(engine, "users"), 30), procs.log(
            "collector"
        )
        for name, sites in (("alice", SITE), ("bob", OTHER)):
            r = _bo(
                "user",
                "add",
                name,
                "--role",
                "store",
                "--sites",
                sites,
                "--password-stdin",
                "--db",
                db,
                stdin=PASSWORD + "\n",
            )
            assert r.returncode == 0, r.stderr
        assert _bo("site", "tz", SITE, TZ, "--db", db).returncode == 0
        started = time.time()
        rec = _device_config(
            tmp, truth, {"type": "file", "path": str(tmp / "video" / "video.mp4"), "loop": False}, broker.port
        )
        run1 = procs.start(
            "device-recording", [sys.executable, "-m", "edge.cli", "run", "--config", str(rec)]
        )
        assert run1.wait(180) == 0, procs.log("device-recording")
        idle = _device_config(
            tmp, truth, {"type": "images", "path": str(blank), "loop": True, "fps": 5}, broker.port
        )
        procs.start("device-idle", [sys.executable, "-m", "edge.cli", "run", "--config", str(idle)])
        port = free_port()
        procs.start(
            "serve",
            [*BO, "serve", "--db", db, "--broker", f"mqtt://127.0.0.1:{broker.port}", "--port", str(port)],
        )
        url = f"http://127.0.0.1:{port}"
        assert wait_until(lambda: _up(url), 30), procs.log("serve")
        assert f"dashboard on http://127.0.0.1:{port}/" in procs.log("serve")  # loopback unless told
        driver = _chrome(tmp / "profile")
        try:
            yield {
                "url": url,
                "db": db,
                "engine": engine,
                "truth": truth,
                "driver": driver,
                "tmp": tmp,
                "procs": procs,
                "started": started,
            }
        finally:
            driver.quit()
    finally:
        procs.stop()
        broker.close()


def _has_table(engine: Any, name: str) -> bool:
    from sqlalchemy import inspect
    from sqlalchemy.exc import SQLAlchemyError

    try:
        return name in inspect(engine).get_table_names()
    except SQLAlchemyError:
        return False


def _up(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/login", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _login(driver: webdriver.Chrome, url: str, name: str) -> None:
    driver.delete_all_cookies()
    driver.get(f"{url}/login")
    driver.find_element(By.NAME, "name").send_keys(name)
    driver.find_element(By.NAME, "password").send_keys(PASSWORD)
    driver.find_element(By.ID, "login").click()
    assert wait_until(lambda: driver.find_elements(By.ID, "whoami"), 10), driver.page_source[:2000]
    assert driver.find_element(By.ID, "whoami").text.startswith(name)


def _shot(stack: dict[str, Any], name: str) -> None:
    path = stack["tmp"] / f"{name}.png"
    stack["driver"].save_screenshot(str(path))
    out = os.environ.get("LANECOUNT_SCREENSHOTS")
    if out:  # for the README: a 256-colour PNG is a few times smaller and looks the same
        from PIL import Image

        Path(out).mkdir(parents=True, exist_ok=True)
        Image.open(path).convert("RGB").quantize(256).save(Path(out) / f"{name}.png", optimize=True)


def _truth(truth: dict[str, Any]) -> Counter[tuple[str, str, str]]:
    return Counter(
        {
            (ln, d, c): n
            for ln, by_dir in truth["lines"].items()
            for d, per in by_dir.items()
            for c, n in per.items()
            if n
        }
    )


def _table(driver: webdriver.Chrome) -> list[tuple[Any, ...]]:
    heads = [th.text for th in driver.find_elements(By.CSS_SELECTOR, "#counts-table thead th")]
    rows = []
    for tr in driver.find_elements(By.CSS_SELECTOR, "#counts-table tbody tr"):
        cells = dict(zip(heads, (td.text for td in tr.find_elements(By.TAG_NAME, "td")), strict=True))
        rows.append(
            (
                cells["site"],
                cells["device"],
                int(tr.get_attribute("data-start")),
                cells["line"],
                cells["direction"],
                cells["class_name"],
                int(cells["n"]),
                cells["exact"] == "yes",
            )
        )
    return rows


def test_a_store_manager_sees_true_counts_and_restocks_a_shelf(stack: dict[str, Any]) -> None:
    driver, url, engine, truth = stack["driver"], stack["url"], stack["engine"], stack["truth"]
    expected = _truth(truth)

    def stored() -> int:
        with engine.connect() as conn:
            return sum(
                r.n
                for r in queries.counts(
                    conn, site=SITE, device=DEVICE, since=stack["started"] - 3600, until=time.time() + 3600
                ).rows
            )

    assert wait_until(lambda: stored() == sum(expected.values()), 30), (
        stored(),
        expected,
        stack["procs"].log("collector"),
    )

    _login(driver, url, "alice")
    _shot(stack, "fleet")
    lane = driver.find_element(By.CSS_SELECTOR, f"tr.lane[data-device='{DEVICE}']")
    assert "online" in lane.text and "milk_carton" not in lane.text

    day = datetime.fromtimestamp(stack["started"], ZoneInfo(TZ)).date().isoformat()
    driver.get(f"{url}/sites/{SITE}/lanes/{DEVICE}?day={day}&days=2")
    table = _table(driver)
    got = Counter()
    for _, _, _, ln, d, c, n, exact in table:
        got[(ln, d, c)] += n
        assert exact
    assert got == expected, f"the page shows {dict(got)}, the recording holds {dict(expected)}"
    assert driver.find_element(By.ID, "lane-state").text == "online"
    assert driver.find_elements(By.CSS_SELECTOR, "#chart canvas"), "the chart did not render"
    driver.set_window_size(1280, 1700)  # the chart and the table too
    _shot(stack, "lane")
    driver.set_window_size(1280, 900)

    # the CSV export behind the page's link equals the table
    href = driver.find_element(By.ID, "export-csv").get_attribute("href")
    cookie = "; ".join(f"{c['name']}={c['value']}" for c in driver.get_cookies())
    with urllib.request.urlopen(urllib.request.Request(href, headers={"Cookie": cookie}), timeout=10) as r:
        rows = list(csv.DictReader(io.StringIO(r.read().decode())))
    exported = [
        (
            r["site"],
            r["device"],
            int(datetime.fromisoformat(r["start"]).timestamp()),
            r["line"],
            r["direction"],
            r["class_name"],
            int(r["n"]),
            r["exact"] == "true",
        )
        for r in rows
    ]
    assert exported == table

    # the raised alert, then "Restocked", the device's answer, the alert cleared
    driver.get(f"{url}/alerts")
    row = driver.find_element(
        By.CSS_SELECTOR, f"tr.alert[data-device='{DEVICE}'][data-product='milk_carton']"
    )
    assert "estimate 1 of 2" in row.text
    _shot(stack, "alerts")
    row.find_element(By.NAME, "stock").send_keys("50")
    row.find_element(By.CSS_SELECTOR, "button.restocked").click()
    assert wait_until(lambda: "/commands/" in driver.current_url, 10)
    assert wait_until(lambda: _text(driver, "command-state") == "done", 40), (
        driver.page_source[:3000],
        stack["procs"].log("device-idle"),
    )
    assert "milk_carton restocked" in _text(driver, "command-answer")

    def cleared() -> bool:
        driver.refresh()
        return _text(driver, "alert-state").startswith("cleared")

    assert wait_until(cleared, 20, interval=0.5)
    driver.get(f"{url}/alerts")
    assert driver.find_elements(By.ID, "no-alerts") and not driver.find_elements(By.CSS_SELECTOR, "tr.alert")
    log = driver.find_element(By.ID, "commands-table").text
    assert "alice" in log and "done: milk_carton restocked" in log
    with engine.connect() as conn:
        (alert,) = queries.alerts(conn, site=SITE, device=DEVICE, state=None)
    assert alert.state == "cleared" and alert.payload["estimate"] == 50


def _text(driver: webdriver.Chrome, element_id: str) -> str:
    found = driver.find_elements(By.ID, element_id)
    return found[0].text if found else ""


def test_another_stores_manager_is_refused(stack: dict[str, Any]) -> None:
    driver, url = stack["driver"], stack["url"]
    _login(driver, url, "bob")
    assert not driver.find_elements(By.CSS_SELECTOR, "tr.lane")  # bob's store has no lanes yet
    assert "No lane has reported yet" in driver.page_source
    for path in (
        f"/sites/{SITE}",
        f"/sites/{SITE}/lanes/{DEVICE}",
        f"/api/sites/{SITE}/counts",
        f"/api/sites/{SITE}/lanes/{DEVICE}",
        f"/api/sites/{SITE}/counts.csv",
        f"/alerts?site={SITE}",
    ):
        driver.get(url + path)
        page = driver.page_source
        assert "404" in page or '"detail"' in page, (path, page[:1000])
        for secret in (DEVICE, "milk_carton", "apple", "online", "estimate"):
            assert secret not in page, (path, secret, page[:2000])
    # exactly what a store that does not exist gives
    driver.get(f"{url}/sites/{SITE}")
    mine = driver.find_element(By.TAG_NAME, "main").text.replace(SITE, "X")
    driver.get(f"{url}/sites/zz")
    assert driver.find_element(By.TAG_NAME, "main").text.replace("zz", "X") == mine
    driver.get(f"{url}/alerts")
    assert not driver.find_elements(By.CSS_SELECTOR, "tr.alert")
    driver.get(f"{url}/api/alerts")
    assert json.loads(driver.find_element(By.TAG_NAME, "body").text) == []
