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
from collections.abc import Callable, Iterator
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
