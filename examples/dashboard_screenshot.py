"""Take the README's screenshot of the dashboard during a learning run.

Starts ``tickmpc run --dashboard`` (lockstep cartpole swing-up from scratch, a run directory
under /tmp), opens the printed address in headless Chromium (``controller.dashboard.browser``:
Debian's chromium and chromium-driver, which ``make test`` installs) and saves the whole page
once the run has completed ``--after`` episodes, while it goes on learning.

    python examples/dashboard_screenshot.py [--after 6] [--out docs/dashboard.png]
"""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from controller.dashboard import browser
from controller.run import RunDir

LAST_TICK = """
const trace = window.tickmpc.robots["sim-0"];
return trace && trace.ticks.length ? trace.ticks[trace.ticks.length - 1] : null;
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--after", type=int, default=6, help="episodes completed first")
    parser.add_argument("--episodes", type=int, default=10, help="episodes of the run")
    parser.add_argument("--out", type=Path, default=Path("docs/dashboard.png"))
    parser.add_argument("--width", type=int, default=1400)
    args = parser.parse_args()
    if (why := browser.missing()) is not None:
        sys.exit(why)
    run_dir = Path(tempfile.mkdtemp(prefix="tickmpc-screenshot-")) / "run"
    cmd = [sys.executable, "-m", "controller.cli", "run", "--episodes", str(args.episodes),
           "--run-dir", str(run_dir), "--dashboard", "--set", "run.dashboard_port=0"]  # fmt: skip
    run = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert run.stdout is not None
    url = None
    for line in run.stdout:
        if match := re.search(r"dashboard: (http://\S+)", line):
            url = match.group(1)
            break
    if url is None:
        sys.exit(f"the run printed no dashboard address; see {run_dir}/logs")
    print(f"dashboard of {run_dir}: {url}", flush=True)
    driver = browser.chromium(args.width, 1000)
    try:
        driver.get(url)
        while RunDir(run_dir).completed() < args.after:
            if run.poll() is not None:
                sys.exit("the run ended before the screenshot")
            time.sleep(0.5)
        # Into the next episode, so the tick plots show the robot acting, not the wait for
        # the retrain between lockstep episodes.
        first = driver.execute_script(LAST_TICK)
        while True:
            last = driver.execute_script(LAST_TICK)
            if last and first and last["episode"] > first["episode"] and last["step"] >= 150:
                break
            if run.poll() is not None:
                sys.exit("the run ended before the screenshot")
            time.sleep(0.2)
        height = driver.execute_script("return document.documentElement.scrollHeight")
        # The whole page, not the window's height (which the screen caps).
        metrics = {"width": args.width, "height": height, "deviceScaleFactor": 1, "mobile": False}
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
        time.sleep(1.0)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(args.out))
        print(f"screenshot: {args.out} ({args.width}x{height})")
    finally:
        driver.quit()
        run.send_signal(signal.SIGINT)  # as Ctrl-C: the run stops its service and learner
        run.wait(timeout=120)


if __name__ == "__main__":
    main()
