"""Helpers for the real-browser check of the MLflow UI (slow tier, ``make test-browser``).

A private ``mlflow server`` on localhost, Debian's headless Chromium driven by Selenium, a few
MLflow UI interactions (expanding a sweep's parent run, choosing metric columns), and a folder
that keeps the screenshots as test artifacts. Selenium is imported on use only, so collecting
the tests does not need it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from support import ROOT

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.remote.webelement import WebElement

# Debian's packages (apt-get install chromium chromium-driver); Selenium Manager is never used.
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WINDOW = (1600, 1000)
WAIT = 60.0  # seconds the UI gets to show something (a wait, not a timing assertion)


def artifacts_dir() -> Path:
    """Where the screenshots are kept: ``$TINYEXP_TEST_ARTIFACTS/mlflow_ui``, by default
    ``<repo>/test-artifacts/mlflow_ui`` (git-ignored)."""
    root = os.environ.get("TINYEXP_TEST_ARTIFACTS") or ROOT / "test-artifacts"
    folder = Path(root) / "mlflow_ui"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def require_browser() -> None:
    """Fail (not skip) in one line when Debian's chromium or chromedriver is missing."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if missing:
        pytest.fail(f"{' and '.join(missing)} not found: run `make test-browser`, which installs "
                    "chromium and chromium-driver", pytrace=False)


# ----------------------------------------------------------------------------- mlflow server


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.is_file() else ""


def _stop_group(proc: subprocess.Popen) -> None:
    """End the process group we started (the server, its uvicorn worker and job runners)."""
    for sig, grace in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


@contextmanager
def mlflow_server(backend_store_uri: str, artifact_root: Path, cwd: Path,
                  timeout: float = 90) -> Iterator[str]:
    """Run ``mlflow server`` on a free localhost port; yield its base URL; always stop it.

    Runs logged straight to a sqlite store keep plain file artifact URIs
    (``<cwd>/mlruns/<exp>/<run>/artifacts``): the server reads those in place for the UI's
    ``get-artifact`` and ``artifacts/list`` requests, so no proxying is needed
    (``--no-serve-artifacts``; ``--artifacts-destination`` only applies to
    ``mlflow-artifacts:`` URIs). ``--default-artifact-root`` keeps any experiment created
    through the server next to the others rather than in ``./mlartifacts``.
    The default security middleware allows localhost, so no host or CORS flags are needed.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = cwd / "mlflow-server.log"
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server",
           "--backend-store-uri", backend_store_uri,
           "--default-artifact-root", artifact_root.as_uri(), "--no-serve-artifacts",
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with open(log, "w") as out:
        # A session of its own: stopping it ends the whole group, job-runner children included.
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited with {proc.returncode}:\n{_tail(log)}",
                            pytrace=False)
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not answer {url}/health within {timeout:g} s:\n"
                            f"{_tail(log)}", pytrace=False)
            time.sleep(0.5)
        yield url
    finally:
        _stop_group(proc)


# ----------------------------------------------------------------------------- the browser


@contextmanager
def chrome(window: tuple[int, int] = WINDOW) -> Iterator[WebDriver]:
    """Headless Debian Chromium through Debian's chromedriver, in a fresh profile."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    previous = os.environ.get("SE_OFFLINE")
    os.environ["SE_OFFLINE"] = "true"  # belt and braces: Selenium Manager must not download
    profile = tempfile.mkdtemp(prefix="tinyexp-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", f"--user-data-dir={profile}",
                f"--window-size={window[0]},{window[1]}"):
        options.add_argument(arg)
    try:
        driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)),
                                  options=options)
        try:
            yield driver
        finally:
            driver.quit()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
        if previous is None:
            os.environ.pop("SE_OFFLINE", None)
        else:
            os.environ["SE_OFFLINE"] = previous


def wait_for(driver: WebDriver, condition: Callable[[WebDriver], Any], what: str,
             timeout: float = WAIT) -> Any:
    """``condition``'s first truthy result; on timeout an AssertionError saying ``what``."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.25).until(condition)
    except TimeoutException:
        raise AssertionError(f"MLflow UI: timed out after {timeout:g} s waiting for {what}") \
            from None


def _visible(driver: WebDriver, by: str, selector: str) -> list[WebElement]:
    from selenium.common.exceptions import StaleElementReferenceException

    found = []
    for element in driver.find_elements(by, selector):
        try:
            if element.is_displayed():
                found.append(element)
        except StaleElementReferenceException:
            pass  # the grid re-rendered the row meanwhile; the next poll finds the new one
    return found


@contextmanager
def keep_page_on_failure(driver: WebDriver, name: str) -> Iterator[None]:
    """On any failure inside, keep the page's HTML and a screenshot as ``<name>.failed.*``."""
    try:
        yield
    except BaseException:
        folder = artifacts_dir()
        try:
            (folder / f"{name}.failed.html").write_text(driver.page_source)
            driver.save_screenshot(str(folder / f"{name}.failed.png"))
            print(f"page at failure: {folder / f'{name}.failed.html'}")
        except Exception as err:  # the browser itself may be gone: keep the first error
            print(f"could not save the page at failure: {err}")
        raise


def screenshot(driver: WebDriver, name: str) -> Path:
    """Save a screenshot of the window as ``<artifacts>/<name>`` and print its path."""
    path = artifacts_dir() / name
    assert driver.save_screenshot(str(path)), f"could not write {path}"
    print(f"screenshot: {path}")
    return path


# ----------------------------------------------------------------------------- MLflow UI pages


def _xpath_literal(text: str) -> str:
    if "'" not in text:
        return f"'{text}'"
    if '"' not in text:
        return f'"{text}"'
    parts = text.split("'")
    return "concat(" + ", \"'\", ".join(f"'{p}'" for p in parts) + ")"


def close_assistant(driver: WebDriver) -> None:
    """Close the "MLflow Assistant" side panel if it is open (it hides half of the table)."""
    for button in _visible(driver, "css selector",
                           "[data-component-id='mlflow.assistant.chat_panel.close']"):
        button.click()


def run_link(driver: WebDriver, name: str) -> WebElement | None:
    """The visible link of the run named ``name`` in the runs table, if shown."""
    found = _visible(driver, "xpath", f"//a[normalize-space(.)={_xpath_literal(name)}]")
    return found[0] if found else None


def _row(run_id: str) -> str:
    return f"div[role='row'][row-id='{run_id}']"


def _col(column_id: str) -> str:
    return f"[col-id='{column_id}']"


def run_row(driver: WebDriver, run_id: str) -> WebElement | None:
    """The visible row of run ``run_id`` in the runs table (its run-name part), if shown."""
    found = _visible(driver, "css selector", f"{_row(run_id)} {_col('attributes.`Run Name`')}")
    return found[0] if found else None


def expand_run(driver: WebDriver, run_id: str, children: list[str]) -> None:
    """Show the child runs of the parent ``run_id`` (MLflow nests them, collapsed).

    Clicks the expander in the parent's run-name cell unless the children are shown already.
    """
    if all(run_link(driver, name) for name in children):
        return
    cell = f"{_row(run_id)} {_col('attributes.`Run Name`')} button"
    wait_for(driver, lambda d: _visible(d, "css selector", cell),
             f"the expander of parent run {run_id}")[0].click()


def column_selector_node(driver: WebDriver, name: str) -> WebElement | None:
    """The tree node of column ``name`` in the open "Columns" menu (search for it first)."""
    title = (f"//*[@data-testid='column-selector-tree']//span[contains(@class, 'tree-title')]"
             f"[normalize-space(.)={_xpath_literal(name)}]"
             f"/ancestor::div[contains(@class, 'tree-treenode')][1]")
    found = _visible(driver, "xpath", title)
    return found[0] if found else None


def set_columns(driver: WebDriver, show: Sequence[str], hide: Sequence[str] = ()) -> None:
    """Tick ``show`` and untick ``hide`` in the runs table's "Columns" menu, then close it.

    MLflow 3 shows no metric columns by default: they are chosen here, by their metric key.
    """
    from selenium.webdriver.common.keys import Keys

    wait_for(driver, lambda d: _visible(d, "xpath", "//button[normalize-space(.)='Columns']"),
             'the "Columns" button')[0].click()
    search = wait_for(driver, lambda d: _visible(
        d, "css selector", "input[placeholder='Search columns']"), "the column search box")[0]
    wanted = {**{name: True for name in show}, **{name: False for name in hide}}
    for name, checked in wanted.items():
        search.send_keys(Keys.CONTROL, "a")
        search.send_keys(Keys.DELETE)
        search.send_keys(name)

        def state(d: WebDriver, name: str = name) -> str | None:
            node = column_selector_node(d, name)
            if node is None:
                return None
            return "on" if "checkbox-checked" in (node.get_attribute("class") or "") else "off"

        if wait_for(driver, lambda d, s=state: s(d), f"column {name!r} in the Columns menu") \
                != ("on" if checked else "off"):
            column_selector_node(driver, name).find_element(
                "css selector", "span[class*='tree-checkbox']").click()
            wait_for(driver, lambda d, s=state, c=checked: s(d) == ("on" if c else "off"),
                     f"column {name!r} to be {'ticked' if checked else 'unticked'}")
    search.send_keys(Keys.ESCAPE)
    wait_for(driver, lambda d: not _visible(d, "css selector",
                                            "input[placeholder='Search columns']"),
             "the Columns menu to close")


def widen_column(driver: WebDriver, column_id: str, pixels: int) -> None:
    """Drag a column's resize handle ``pixels`` to the right (so long run names fit)."""
    from selenium.webdriver.common.action_chains import ActionChains

    handles = _visible(driver, "css selector",
                       f".ag-header-cell{_col(column_id)} .ag-header-cell-resize")
    if handles:
        ActionChains(driver).click_and_hold(handles[0]).move_by_offset(pixels, 0) \
            .release().perform()


def metric_headers(driver: WebDriver) -> list[str]:
    """The header texts of the metric columns the runs table shows."""
    return [h.text.strip() for h in
            _visible(driver, "css selector", ".ag-header-cell[col-id^='metrics.']")]


def metric_cell(driver: WebDriver, run_id: str, key: str) -> str | None:
    """The text the runs table shows for metric ``key`` of run ``run_id`` (None: no cell)."""
    cells = _visible(driver, "css selector", f"{_row(run_id)} {_col(f'metrics.`{key}`')}")
    return cells[0].text.strip() if cells else None


def shows_value(shown: str, value: float | None) -> bool:
    """Whether the table text ``shown`` is ``value`` as displayed (rounded to the digits shown,
    thousands separators allowed); a missing metric shows as ``-``."""
    text = shown.strip().replace(",", "")
    if value is None:
        return text in ("-", "")
    try:
        number = float(text)
    except ValueError:
        return False
    mantissa, _, exponent = text.lower().partition("e")
    decimals = len(mantissa.partition(".")[2])
    tolerance = 0.5 * 10.0 ** (int(exponent or 0) - decimals)
    return abs(number - value) <= tolerance * (1 + 1e-9)


def search_metric_charts(driver: WebDriver, text: str) -> None:
    """Type ``text`` into a run page's "Search metric charts" box (Model metrics tab), which
    leaves only the charts whose metric key contains it."""
    from selenium.webdriver.common.keys import Keys

    box = wait_for(driver, lambda d: _visible(
        d, "css selector", "input[placeholder='Search metric charts']"),
        'the "Search metric charts" box')[0]
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.DELETE)
    box.send_keys(text)


METRIC_CHARTS_JS = """
return Array.from(document.querySelectorAll("[data-testid='experiment-view-compare-runs-card']"))
  .filter(card => card.getBoundingClientRect().width > 0)
  .filter(card => card.innerText.includes('(' + arguments[0] + ')'))
  .map(card => {
    const plot = card.querySelector('.js-plotly-plot');
    const traces = (plot && plot.data) || [];
    return {
      markers: card.querySelectorAll('.scatterlayer .trace .points path.point').length,
      steps: traces.map(trace => Array.from(trace.x || [])),
      values: traces.map(trace => Array.from(trace.y || [])),
    };
  });
"""


def metric_chart(driver: WebDriver, key: str) -> dict[str, Any] | None:
    """The visible line chart of metric ``key`` on a run page's Model metrics tab, if shown.

    MLflow 3 titles a chart with the key's last part and names the key in full in its legend
    (``<run name> (<key>)``), which is what identifies it here. Returns ``markers``, the point
    markers drawn in the chart's SVG, and per plotted trace its ``steps`` (x) and ``values``
    (y) as the page holds them.
    """
    found = driver.execute_script(METRIC_CHARTS_JS, key)
    return found[0] if found else None


IMAGE_SHA256_JS = """
const done = arguments[arguments.length - 1];
Promise.all(arguments[0].map(src => fetch(src)
    .then(response => response.arrayBuffer())
    .then(bytes => crypto.subtle.digest('SHA-256', bytes))
    .then(hash => Array.from(new Uint8Array(hash), b => b.toString(16).padStart(2, '0')).join(''))
    .catch(err => 'error: ' + err)))
  .then(done);
"""

SHOWN_IMAGES_JS = """
return Array.from(document.images)
  .filter(img => img.complete && img.naturalWidth > 0 && img.getBoundingClientRect().width > 0)
  .filter(img => img.src.startsWith('blob:') || img.src.includes(arguments[0]))
  .map(img => [img.src, img.naturalWidth, img.naturalHeight]);
"""


def shown_images(driver: WebDriver, artifact_path: str) -> list[list[Any]]:
    """Loaded, visible images that may be the artifact: ``[src, width, height]`` each.

    MLflow 3.17 fetches an image artifact from ``get-artifact`` and shows it from a ``blob:``
    URL; a direct ``get-artifact?path=...`` src is accepted too.
    """
    from urllib.parse import quote

    return driver.execute_script(SHOWN_IMAGES_JS, f"path={quote(artifact_path, safe='')}")


def image_sha256(driver: WebDriver, sources: list[str]) -> list[str]:
    """SHA-256 of the bytes the page got for each image source (fetched again in the page)."""
    driver.set_script_timeout(WAIT)
    return driver.execute_async_script(IMAGE_SHA256_JS, sources)
