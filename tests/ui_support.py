"""Shared helpers for the web console's browser tests (Playwright driving Debian's chromium,
never a downloaded browser). The fixtures built on them live in tests/e2e/conftest.py:

    ui_browser   one chromium per test module
    ui_server    one `vmplane serve --driver qemu --accel tcg` per test module (.origin .key .api)
    ui_sim_server  one `vmplane serve --driver sim` per test module (no guests; fail-* creates fail)
    ui_page      a factory: ui_page(dpr=1, viewport=(1280, 800), path="", server=ui_server)
                 -> a page signed in at /ui/<path> (the qemu server unless another is given)

Screenshots go to artifacts/screenshots/<name>/ (screenshot_dir(name) empties that folder
only, so modules do not erase each other's)."""

import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[1] / "artifacts" / "screenshots"

# Controls with no accessible name (no label, aria-label or text), among those shown
UNNAMED = """() => [...document.querySelectorAll("input, select, textarea, button, a[href]")]
  .filter((el) => el.getClientRects().length > 0)
  .filter((el) => !((el.labels && [...el.labels].map((l) => l.textContent).join("").trim())
                    || el.getAttribute("aria-label") || el.textContent.trim()))
  .map((el) => el.outerHTML.slice(0, 120))"""


def require_browser() -> None:
    """Skip without chromium or playwright, unless VMPLANE_REQUIRE_BROWSER=1 (CI): then fail."""
    missing = []
    if not CHROMIUM.exists():
        missing.append(f"{CHROMIUM} (scripts/install-browser.sh installs Debian's chromium)")
    if importlib.util.find_spec("playwright") is None:
        missing.append("the playwright package (pip install -e '.[test]')")
    if not missing:
        return
    if os.environ.get("VMPLANE_REQUIRE_BROWSER") == "1":
        pytest.fail("VMPLANE_REQUIRE_BROWSER=1 but missing: " + "; ".join(missing))
    pytest.skip("no browser: missing " + "; ".join(missing))


def screenshot_dir(name: str) -> Path:
    """artifacts/screenshots/<name>/, emptied."""
    d = SCREENSHOTS / name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    return d


def shot(page: Any, path: Path, *, check: bool = True) -> None:
    """A full-page screenshot; with `check`, every shown control has a name and nothing scrolls sideways."""
    page.screenshot(path=str(path), full_page=True)
    if not check:
        return
    assert page.evaluate(UNNAMED) == [], path.name
    width = page.viewport_size["width"]
    assert page.evaluate("document.documentElement.scrollWidth") <= width, f"{path.name} scrolls sideways"


def terminal_text(page: Any) -> str:
    """What the in-page terminal shows (xterm.js's DOM renderer: one element per row)."""
    rows = page.locator("#console-screen .xterm-rows > div").all_text_contents()
    return "\n".join(r.replace("\xa0", " ").rstrip() for r in rows)
