"""Headless Chromium behind a recording proxy: what a page asks the network for.

`visit` opens a page with every request (loopback too) sent through a `RecordingProxy`, which
refuses and records it, and reads the browser's net log to tell the page's own requests from
the browser's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

CHROMIUM = shutil.which("chromium")
# Quiet the browser's own traffic (time queries, extensions, component downloads), so the proxy
# sees what the page asks for. One request no switch or preference stops (the profile's Google
# account list, sent when its network starts) is told apart by the browser's net log: it has no
# page as initiator. The page's own requests always do.
QUIET = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-features=MediaRouter,OptimizationHints,NetworkTimeServiceQuerying",
)
BROWSER_ITSELF = "not an origin"  # the net log's initiator of a request no page made


class RecordingProxy(ThreadingHTTPServer):
    """An HTTP proxy on loopback that answers every request with an error and records it."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Refuse)
        self.requests: list[str] = []


class Refuse(BaseHTTPRequestHandler):
    """Records each request in its `RecordingProxy` and answers it with an error."""

    def refuse(self) -> None:
        """Record this request ("METHOD target") and refuse it."""
        assert isinstance(self.server, RecordingProxy)
        self.server.requests.append(f"{self.command} {self.path}")
        self.send_error(404 if self.command == "GET" else 502)

    do_GET = do_HEAD = do_POST = do_PUT = do_OPTIONS = do_CONNECT = refuse

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test reads the records, not the log."""


@dataclass
class Visit:
    """What one visit of a page showed and asked for."""

    output: str  # chromium's stdout: the DOM with --dump-dom
    proxied: list[str]  # what reached the proxy: "GET http://host/..." or "CONNECT host:443"
    by_page: list[str]  # URLs the page asked for, from the net log
    by_browser: set[str]  # host:port the browser asked for on its own account


def visit(page: Path, proxy: RecordingProxy, tmp: Path, *action: str) -> Visit:
    """Open `page` in headless Chromium through `proxy` (loopback too) and do `action`."""
    assert CHROMIUM is not None
    (tmp / "empty").mkdir(exist_ok=True)
    netlog = tmp / f"netlog-{len(list(tmp.glob('netlog-*')))}.json"
    port = proxy.server_address[1]
    before = len(proxy.requests)
    command = [
        CHROMIUM,
        *QUIET,
        f"--proxy-server=http://127.0.0.1:{port}",
        "--proxy-bypass-list=<-loopback>",
        f"--user-data-dir={tmp / 'profile'}",
        # the on-device model manifest from an empty local folder, not the component updater
        f"--optimization-guide-manifest-override={tmp / 'empty'}",
        f"--log-net-log={netlog}",
        *action,
        page.as_uri(),
    ]
    # Chromium's singleton socket lives in TMPDIR and its path must fit 107 bytes, which the
    # test's own temporary folder (under pytest-xdist's worker folder) does not: a short one.
    short = tempfile.mkdtemp(prefix="chromium-", dir="/tmp")
    try:
        done = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
            env={**os.environ, "TMPDIR": short},
        )
    finally:
        shutil.rmtree(short, ignore_errors=True)
    log = json.loads(netlog.read_text())
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    jobs = [
        e["params"] for e in log["events"] if e["type"] == start and "url" in e.get("params", {})
    ]
    by_page = [job["url"] for job in jobs if job.get("initiator") != BROWSER_ITSELF]
    by_browser = {host_port(job["url"]) for job in jobs if job.get("initiator") == BROWSER_ITSELF}
    return Visit(done.stdout, proxy.requests[before:], by_page, by_browser)


def host_port(url: str) -> str:
    """The host:port `url` connects to."""
    scheme, rest = url.split("://", 1)
    host = rest.split("/", 1)[0]
    return host if ":" in host else f"{host}:{443 if scheme == 'https' else 80}"


def unexplained(seen: Visit) -> list[str]:
    """What reached the proxy that the browser did not ask for on its own account."""
    return [record for record in seen.proxied if target(record) not in seen.by_browser]


def target(record: str) -> str:
    """The host:port of a proxy record: "CONNECT host:443" or "GET http://host/path"."""
    method, where = record.split(" ", 1)
    return where if method == "CONNECT" else host_port(where)
