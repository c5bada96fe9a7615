"""The Dagster UI in a real browser: `dagster dev` on the repo's workspace.yaml (the real `assets`
definitions), headless Chromium from Debian's `chromium` package driven by Playwright. It sees every asset
group, every schedule and sensor and every asset check, launches a materialization from the Materialize
button and waits for the run to show Success."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from assets import definitions
from pipelines.settings import REPO_ROOT

CHROMIUM = Path("/usr/bin/chromium")
PORTS = range(8330, 8340)
# a quick asset that needs no LLM server: the stratified prompt set (reads the shared RouterBench files)
ASSET = "prompt_set"
CHECKS_QUERY = (
    "{ assetNodes { assetKey { path } assetChecksOrError { ... on AssetChecks { checks { name } } } } }"
)

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM} (Debian package `chromium`): no browser test"
)


def _free_port() -> int:
    for port in PORTS:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) != 0:
                return port
    raise RuntimeError(f"ports {PORTS.start}-{PORTS.stop - 1} are all in use")


def _graphql(base: str, query: str) -> dict:
    req = urllib.request.Request(
        f"{base}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())["data"]


class DagsterDev:
    """`dagster dev` (webserver, daemon, code server) in its own process group with a throwaway home."""

    def __init__(self, tmp: Path) -> None:
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.home, self.run_dir, self.log_path = tmp / "dagster_home", tmp / "run", tmp / "dagster.log"
        self.home.mkdir()
        (self.home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        env = {**os.environ, "DAGSTER_HOME": str(self.home), "SM_RUN_DIR": str(self.run_dir),
               "LITELLM_LOCAL_MODEL_COST_MAP": "True", "HF_HUB_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
        cmd = [str(REPO_ROOT / ".venv" / "bin" / "dagster"), "dev", "-h", "127.0.0.1", "-p", str(self.port),
               "-w", "workspace.yaml"]  # fmt: skip
        self.log = self.log_path.open("wb")
        self.proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)  # fmt: skip

    def tail(self, n: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def wait_loaded(self, timeout_s: float) -> None:
        """Until the webserver answers and the code location has loaded (or failed to: then raise)."""
        query = "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus "
        query += "locationOrLoadError { __typename ... on PythonError { message } } } } } }"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"dagster dev exited:\n{self.tail()}"
            try:
                entries = _graphql(self.base, query)["workspaceOrError"]["locationEntries"]
            except OSError:
                entries = []
            if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                errors = [e["locationOrLoadError"] for e in entries if "message" in e["locationOrLoadError"]]
                assert not errors, f"code location failed to load: {errors}"
                return
            time.sleep(1)
        raise AssertionError(f"dagster dev not ready after {timeout_s}s:\n{self.tail()}")

    def stop(self) -> None:
        """SIGTERM to the whole group (dagster dev shuts its children down), then SIGKILL what is left."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(15)
        self.proc.wait(15)
        self.log.close()


def _dismiss_popups(page) -> None:
    skip = page.get_by_role("button", name="Skip")  # the community newsletter dialog on a fresh home
    if skip.count():
        skip.first.click()


def test_dagster_ui_shows_the_definitions_and_materializes_an_asset(tmp_path, shared_data):
    sync_api = pytest.importorskip("playwright.sync_api")
    defs = definitions.defs
    graph = defs.resolve_asset_graph()
    groups = {graph.get(k).group_name for k in graph.get_all_asset_keys()}
    assert set(definitions.GROUPS) <= groups
    automations = [s.name for s in defs.schedules or []] + [s.name for s in defs.sensors or []]
    checks = {(k.asset_key.to_user_string(), k.name) for k in graph.asset_check_keys}

    server = DagsterDev(tmp_path)
    try:
        server.wait_loaded(timeout_s=300)
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
            page = browser.new_page()
            page.set_default_timeout(60_000)

            page.goto(f"{server.base}/asset-groups")
            for group in sorted(groups):
                page.get_by_text(group, exact=True).first.wait_for()
            _dismiss_popups(page)

            page.goto(f"{server.base}/automation")
            for name in automations:
                page.get_by_text(name, exact=True).first.wait_for()

            # every check the definitions hold is served to the UI on its asset
            nodes = _graphql(server.base, CHECKS_QUERY)["assetNodes"]
            served = {("/".join(n["assetKey"]["path"]), c["name"])
                      for n in nodes for c in n["assetChecksOrError"].get("checks", [])}  # fmt: skip
            assert served == checks
            asset_with_check, check_name = sorted(checks)[0]
            page.goto(f"{server.base}/assets/{asset_with_check}?view=checks")
            page.get_by_text(check_name, exact=True).first.wait_for()

            page.goto(f"{server.base}/assets/{ASSET}")
            page.get_by_text("Latest materialization").wait_for()
            _dismiss_popups(page)
            page.locator("button", has_text="Materialize").first.click()
            page.get_by_text("Launched run").wait_for()
            run_link = page.locator("a[href*='/runs/']").first
            run_link.wait_for()
            run_id = run_link.get_attribute("href").rstrip("/").split("/runs/")[-1]
            page.goto(f"{server.base}/runs/{run_id}")
            page.get_by_text("Success", exact=True).first.wait_for(timeout=300_000)
            browser.close()
        status = _graphql(server.base, f'{{ runOrError(runId: "{run_id}") {{ ... on Run {{ status }} }} }}')
        assert status["runOrError"]["status"] == "SUCCESS"
        assert (server.run_dir / "bench" / f"{ASSET}.parquet").is_file()
    finally:
        server.stop()
