"""Open an HTML file in headless Chromium over the DevTools protocol and say what a reader would see.

The browser is Debian's ``chromium`` (scripts/install-test-packages.sh). It is driven through
``--remote-debugging-pipe`` (JSON messages separated by NUL bytes on file descriptors 3 and 4), so no port,
no websocket library and nothing beyond the standard library is needed. :func:`open_page` returns the
page's console errors and uncaught exceptions, the log's errors (a resource that failed to load), every
image with its decoded size, the text of every table cell, and optionally a PNG screenshot; ``actions``
are JavaScript expressions evaluated one after another once the page has loaded (clicks, typing), each
giving back a JSON-able value.

As a script it writes a screenshot: ``python tests/browser.py REPORT.html OUT.png [WIDTH HEIGHT]``.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PAGE_FACTS = """JSON.stringify({
  title: document.title,
  images: [...document.images].map(i => ({alt: i.alt, complete: i.complete, width: i.naturalWidth,
                                          height: i.naturalHeight, src: i.src.slice(0, 30)})),
  tables: [...document.querySelectorAll('table')].map(t => ({
      cls: t.className,
      rows: [...t.rows].map(r => [...r.cells].map(c => c.innerText.trim()))})),
  external: [...document.querySelectorAll('[src],[href]')].map(e => e.getAttribute('src') || e.getAttribute('href'))
            .filter(u => !u.startsWith('data:') && !u.startsWith('#')),
  height: document.documentElement.scrollHeight,
})"""


@dataclass
class Page:
    """What Chromium reported for one page."""

    title: str
    images: list[dict[str, Any]]
    tables: list[dict[str, Any]]
    external: list[str]  # src/href values that are neither data: URIs nor in-page anchors
    errors: list[str] = field(default_factory=list)  # console errors, exceptions, failed loads
    screenshot: bytes | None = None
    results: list[Any] = field(default_factory=list)  # the value of each action, in order


def chromium() -> str | None:
    """The Chromium executable, or None when it is not installed."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def open_page(path: Path, width: int = 1280, height: int = 900, screenshot: bool = False,
              timeout_s: float = 60.0, actions: tuple[str, ...] | list[str] = ()) -> Page:
    """Load ``path`` (a local file) in headless Chromium and collect :class:`Page`."""
    executable = chromium()
    if executable is None:
        raise RuntimeError("chromium is not installed (scripts/install-test-packages.sh)")
    with tempfile.TemporaryDirectory(prefix="ioussl-chromium-", ignore_cleanup_errors=True) as profile, \
            _Browser(executable, profile) as browser:
        return browser.load(path.resolve().as_uri(), width, height, screenshot, time.monotonic() + timeout_s,
                            actions)


class _Browser:
    """One headless Chromium process and its DevTools pipe."""

    def __init__(self, executable: str, profile: str) -> None:
        # Above 4, so that moving them onto 3 and 4 in the child never meets itself (a dup2 onto the same
        # number would keep the close-on-exec flag and the browser would find no pipe).
        to_browser, self._commands, self._replies, from_browser = (_above_4(fd) for fd in (*os.pipe(), *os.pipe()))
        args = [executable, "--headless", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
                "--disable-dev-shm-usage", "--hide-scrollbars", "--remote-debugging-pipe",
                f"--user-data-dir={profile}", "about:blank"]
        if os.geteuid() == 0:
            args.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox

        def descriptors() -> None:  # the protocol's fixed numbers: commands on 3, replies on 4
            os.dup2(to_browser, 3)
            os.dup2(from_browser, 4)

        # Its own process group: Chromium's renderer and GPU helpers are ended with it.
        self._process = subprocess.Popen(args, preexec_fn=descriptors, close_fds=False,  # noqa: PLW1509
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         start_new_session=True)
        os.close(to_browser)
        os.close(from_browser)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def __enter__(self) -> _Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        try:  # a clean exit first, so the profile folder is released before it is removed
            self.call("Browser.close", deadline=time.monotonic() + 10)
        except (OSError, RuntimeError, TimeoutError):
            pass
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._process.pid, signal.SIGKILL)  # our own group (start_new_session), helpers included
        self._process.wait(timeout=30)
        os.close(self._commands)
        os.close(self._replies)

    def load(self, url: str, width: int, height: int, screenshot: bool, deadline: float,
             actions: tuple[str, ...] | list[str] = ()) -> Page:
        target = self.call("Target.createTarget", {"url": "about:blank"}, deadline=deadline)["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True},
                            deadline=deadline)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable", session=session, deadline=deadline)
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
                  session=session, deadline=deadline)
        self.call("Page.navigate", {"url": url}, session=session, deadline=deadline)
        self.wait_for("Page.loadEventFired", session, deadline)
        facts = json.loads(self.call("Runtime.evaluate", {"expression": PAGE_FACTS, "returnByValue": True},
                                     session=session, deadline=deadline)["result"]["value"])
        results = []
        for action in actions:
            reply = self.call("Runtime.evaluate", {"expression": action, "returnByValue": True},
                              session=session, deadline=deadline)
            if "exceptionDetails" in reply:
                raise RuntimeError(f"action {action[:60]!r} threw: {reply['exceptionDetails'].get('text')}")
            results.append(reply["result"].get("value"))
        page = Page(facts["title"], facts["images"], facts["tables"], facts["external"], self.errors(session),
                    results=results)
        if screenshot:
            shot = self.call("Page.captureScreenshot", {"format": "png"}, session=session, deadline=deadline)
            page.screenshot = base64.b64decode(shot["data"])
        return page

    def errors(self, session: str) -> list[str]:
        """Console errors, uncaught exceptions and error log entries seen so far on ``session``."""
        found = []
        for event in (e for e in self.events if e.get("sessionId") == session):
            params = event.get("params", {})
            if event["method"] == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                found.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
            elif event["method"] == "Runtime.exceptionThrown":
                found.append("exception: " + params["exceptionDetails"].get("text", ""))
            elif event["method"] == "Log.entryAdded" and params["entry"].get("level") == "error":
                found.append(f"log: {params['entry'].get('text')} {params['entry'].get('url', '')}".strip())
        return found

    def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
             deadline: float = 0.0) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._receive(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, session: str, deadline: float) -> None:
        seen = lambda: any(e.get("method") == method and e.get("sessionId") == session  # noqa: E731
                           for e in self.events)
        while not seen():
            self.events.append(self._receive(deadline))

    def _receive(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._replies], [], [], left)[0]:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self._replies, 1 << 20)
            if not chunk:
                raise RuntimeError(f"chromium exited (code {self._process.poll()})")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)


def _above_4(fd: int) -> int:
    """The same open file on a descriptor numbered 10 or more (close-on-exec); the original is closed."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return moved


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 4):
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    width, height = (int(argv[2]), int(argv[3])) if len(argv) == 4 else (1280, 1600)
    page = open_page(Path(argv[0]), width=width, height=height, screenshot=True)
    for problem in page.errors + [f"image {i['alt']!r} did not decode" for i in page.images if not i["width"]]:
        print(problem, file=sys.stderr)
    Path(argv[1]).write_bytes(page.screenshot or b"")
    print(f"wrote {argv[1]} ({len(page.images)} image(s), {len(page.errors)} error(s))")
    return 1 if page.errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
