"""The MLflow UI's pages as the browser test reads them: the runs table (rows, columns, metric
cells), the run page's metric charts and the artifact viewer's images. Built on
:mod:`browser` (server, Chromium, waits and screenshots).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from browser import WAIT, _visible, wait_for

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.remote.webelement import WebElement


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
