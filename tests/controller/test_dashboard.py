"""The dashboard in a real browser: headless Debian Chromium driven by Selenium, against a
real service (in this process, on loopback ports), a probe robot on its robot socket and
``tickmpc dashboard`` in a subprocess."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import imageio_ffmpeg
import numpy as np
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from controller.dashboard import browser
from controller.dashboard.server import DashboardConfig
from controller.service.control import request
from sim_bridge.link import BridgeLink
from tests.controller.service_fixtures import (
    SPEC,
    TICKMPC,
    Running,
    publish_cartpole,
    reply_to,
    send_state,
    start_service,
    stop_service,
)


@dataclass
class Probe:
    """A robot that keeps sending states (lockstep: the next once the ACTION came) and
    remembers the horizon of every ACTION, with the time it arrived."""

    link: BridgeLink
    stop: threading.Event = field(default_factory=threading.Event)
    horizons: list[tuple[float, int]] = field(default_factory=list)

    def run(self) -> None:
        rng = np.random.default_rng(0)
        step = 0
        while not self.stop.is_set():
            obs = np.array([0.0, 0.1, 0.0, 0.0]) + 0.01 * rng.standard_normal(4)
            send_state(self.link, step, obs, None if step == 0 else 0.0)
            action = reply_to(self.link)
            self.horizons.append((time.monotonic(), int(action["horizon"])))
            step += 1
            time.sleep(0.02)

    def horizons_after(self, t: float) -> list[int]:
        return [h for at, h in list(self.horizons) if at > t]


@dataclass
class Live:
    running: Running
    probe: Probe
    url: str
    process: subprocess.Popen[str]
    videos: Path


def start_dashboard(*args: str) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [*TICKMPC, "dashboard", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    match = re.search(r"(http://\S+)", line)
    if match is None:
        process.kill()
        raise AssertionError(
            f"no address from tickmpc dashboard: {line!r} {process.communicate()[1]}"
        )
    return process, match.group(1)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    root = tmp_path_factory.mktemp("dashboard")
    publish_cartpole(root / "models")
    running = start_service(root)
    link = BridgeLink(running.endpoint, SPEC, "lockstep")
    link.connect(10.0)
    probe = Probe(link)
    thread = threading.Thread(target=probe.run, daemon=True)
    thread.start()
    videos = root / "videos"
    videos.mkdir()
    process, url = start_dashboard(
        "--control",
        running.control,
        "--telemetry",
        running.service.endpoints["telemetry"],
        "--videos",
        str(videos),
    )
    yield Live(running, probe, url, process, videos)
    process.terminate()
    process.wait(timeout=10)
    probe.stop.set()
    thread.join(timeout=10)
    link.close()
    stop_service(running)


@pytest.fixture(scope="module")
def page(live: Live) -> Iterator[Any]:
    if (why := browser.missing()) is not None:
        pytest.fail(why)
    driver = browser.chromium()
    driver.get(live.url)
    yield driver
    driver.quit()


def points(driver: Any, chart: str) -> int:
    return int(driver.find_element(By.ID, chart).get_attribute("data-points"))


def wait(driver: Any, condition: Any, timeout_s: float = 20.0) -> Any:
    return WebDriverWait(driver, timeout_s, poll_frequency=0.1).until(lambda d: condition(d))


def test_the_plan_time_plot_grows_as_ticks_arrive(page: Any, live: Live) -> None:
    first = wait(page, lambda d: points(d, "chart-plan") > 0 and points(d, "chart-plan"))
    wait(page, lambda d: points(d, "chart-plan") >= first + 10)
    row = wait(page, lambda d: d.find_elements(By.CSS_SELECTOR, '#robots tr[data-robot="probe"]'))
    assert "lockstep" in row[0].text
    stats = page.find_element(By.ID, "plan-stats").text
    assert re.search(r"p50 \d+\.\d+ ms · p99 \d+\.\d+ ms", stats), stats
    for chart in ("chart-actions", "chart-terms"):  # drawn once scrolled into sight
        page.execute_script("arguments[0].scrollIntoView()", page.find_element(By.ID, chart))
        wait(page, lambda d, chart=chart: points(d, chart) > 0)
    page.execute_script("window.scrollTo(0, 0)")
    assert page.execute_script("return window.tickmpc.robots.probe.ticks.length") > first


def test_moving_the_horizon_control_changes_the_horizon_of_the_following_actions(
    page: Any, live: Live
) -> None:
    slider = wait(page, lambda d: d.find_element(By.ID, "ctl-horizon-slider"))
    wait(page, lambda d: d.find_element(By.ID, "ctl-horizon").get_attribute("value") == "15")
    before = time.monotonic()
    slider.send_keys(Keys.ARROW_RIGHT)  # one step: 15 -> 16, sent when the slider changes
    message = wait(
        page, lambda d: "applied" in (t := d.find_element(By.ID, "settings-message").text) and t
    )
    assert "horizon = 16" in message
    applied = time.monotonic()
    wait(page, lambda d: len(live.probe.horizons_after(applied)) >= 3)
    assert set(live.probe.horizons_after(applied)) == {16}
    assert 15 in live.probe.horizons_after(before - 5.0)  # what it was before
    assert request(live.running.control, "get")["settings"]["horizon"] == 16


def test_an_out_of_range_value_shows_the_refusal_and_changes_nothing(page: Any, live: Live) -> None:
    before = request(live.running.control, "get")["settings"]
    field_ = page.find_element(By.ID, "ctl-horizon")
    field_.clear()
    field_.send_keys("9999", Keys.TAB)
    message = wait(
        page, lambda d: "refused" in (t := d.find_element(By.ID, "settings-message").text) and t
    )
    assert "bad_setting" in message and "horizon" in message and "9999" in message
    assert "error" in page.find_element(By.ID, "settings-message").get_attribute("class")
    assert request(live.running.control, "get")["settings"] == before
    refused = time.monotonic()
    wait(page, lambda d: len(live.probe.horizons_after(refused)) >= 3)
    assert set(live.probe.horizons_after(refused)) == {before["horizon"]}


def test_a_new_model_version_appears_when_it_goes_live(page: Any, live: Live) -> None:
    wait(page, lambda d: d.find_element(By.ID, "model-version").text == "v1")
    publish_cartpole(live.running.root / "models", version=2)
    wait(page, lambda d: d.find_element(By.ID, "model-version").text == "v2")
    wait(page, lambda d: d.find_elements(By.CSS_SELECTOR, '#models tr[data-version="2"]'))
    assert live.probe.horizons  # still served


def test_the_page_plays_the_runs_videos(page: Any, live: Live) -> None:
    writer = imageio_ffmpeg.write_frames(
        str(live.videos / "episode-0001.webm"),
        (64, 48),
        fps=25,
        codec="libvpx-vp9",
        macro_block_size=1,
    )
    writer.send(None)
    for k in range(25):
        writer.send(np.full((48, 64, 3), 10 * k, np.uint8).tobytes())
    writer.close()
    index = [
        {
            "file": "episode-0001.webm",
            "episode": 1,
            "robot": "sim-0",
            "return": 12.5,
            "tags": ["first", "best", "last"],
            "frames": 25,
            "seconds": 1.0,
        }
    ]
    (live.videos / "index.json").write_text(json.dumps(index))
    video = wait(page, lambda d: d.find_elements(By.CSS_SELECTOR, "#videos video"))[0]
    assert "first, best, last" in page.find_element(By.ID, "videos").text
    duration = wait(
        page,
        lambda d: d.execute_script(
            "const v = arguments[0]; return v.readyState >= 1 && v.duration", video
        ),
    )
    assert 0.5 < duration < 1.5


def test_the_page_ran_without_a_script_error(page: Any) -> None:
    errors = [e for e in page.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []


def test_settings_changes_need_json_from_the_page_itself(live: Live) -> None:
    body = json.dumps({"changes": {"horizon": 20}}).encode()
    for headers, status in (
        ({"Content-Type": "text/plain"}, 415),
        ({"Content-Type": "application/json", "Origin": "http://elsewhere.example"}, 403),
    ):
        req = urllib.request.Request(live.url + "api/settings", body, headers)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(req, timeout=10)
        assert refused.value.code == status
    assert request(live.running.control, "get")["settings"]["horizon"] != 20
    # DNS rebinding: another site's name resolved to loopback is not a loopback name.
    rebound = urllib.request.Request(live.url + "api/state", headers={"Host": "evil.example"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(rebound, timeout=10)
    assert refused.value.code == 403
    # Another site's page opening the WebSocket (browsers apply no CORS to it).
    upgrade = {"Origin": "http://elsewhere.example", "Connection": "Upgrade",
               "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}  # fmt: skip
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(urllib.request.Request(live.url + "ws", headers=upgrade), timeout=10)
    assert refused.value.code == 403
    req = urllib.request.Request(
        live.url + "api/settings",
        json.dumps({"oops": 1}).encode(),
        {"Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, timeout=10)
    assert refused.value.code == 400


def test_beyond_loopback_needs_the_option_and_a_token(live: Live) -> None:
    telemetry = live.running.service.endpoints["telemetry"]
    args = ["--control", live.running.control, "--telemetry", telemetry]
    done = subprocess.run([*TICKMPC, "dashboard", "--port", "0", *args, "--host", "0.0.0.0"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 1 and "--allow-remote" in done.stderr
    for host, token, why in (("0.0.0.0", None, "needs an access token"),
                             ("0.0.0.0", "short", "at least 16"),
                             ("example.com", "x" * 16, "not loopback")):  # fmt: skip
        with pytest.raises(ValueError, match=why):
            DashboardConfig("c", "t", host=host, token=token, allow_remote=host != "example.com")
    process, url = start_dashboard(*args, "--host", "0.0.0.0", "--allow-remote")
    try:
        token = re.search(r"\?token=(\S+)", url)
        assert token is not None, url  # made and printed when not given
        bare = url.split("?")[0].replace("0.0.0.0", "127.0.0.1")
        for path in ("", "api/state", "api/controls"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(bare + path, timeout=10)
            assert refused.value.code == 401
        with pytest.raises(urllib.error.HTTPError) as refused:  # not a 500
            urllib.request.urlopen(bare + "api/state?token=%C3%A9", timeout=10)
        assert refused.value.code == 401
        wrong = urllib.request.Request(
            bare + "api/state", headers={"Authorization": "Bearer " + "x" * 32}
        )
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(wrong, timeout=10)
        with urllib.request.urlopen(f"{bare}api/state?token={token.group(1)}", timeout=10) as ok:
            assert ok.status == 200 and "tickmpc_token" in ok.headers["Set-Cookie"]
    finally:
        process.terminate()
        process.wait(timeout=10)
