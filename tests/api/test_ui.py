"""The web console's files at /ui: served without credentials (the API behind them still
wants them), JavaScript as JavaScript, a Content-Security-Policy that keeps every request on
vmplane's own origin, and nothing in the shipped files pointing anywhere else."""

import re
from typing import Any

from vmplane.api.ui import UI_DIR


async def test_console_files_are_served_with_a_strict_policy(server: Any) -> None:
    bare = server.client_with("")
    del bare.headers["X-API-Key"]
    r = await bare.get("/ui", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"].endswith("/ui/")
    r = await bare.get("/", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"].endswith("/ui/")
    page = await bare.get("/ui/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "connect-src 'self'" in csp and "script-src 'self'" in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    # every file the page names is there, scripts as JavaScript (module scripts need it)
    for ref in re.findall(r'(?:src|href)="([^"#:]+)"', page.text):
        f = await bare.get(f"/ui/{ref}")
        assert f.status_code == 200, ref
        if ref.endswith(".js"):
            assert f.headers["content-type"].startswith("text/javascript"), ref
    for module in sorted(p.relative_to(UI_DIR).as_posix() for p in UI_DIR.rglob("*.js")):
        f = await bare.get(f"/ui/{module}")
        assert f.status_code == 200 and f.headers["content-type"].startswith("text/javascript"), module
    assert (await bare.get("/ui/js/missing.js")).status_code == 404
    assert (await bare.get("/ui/../config.py")).status_code == 404
    assert (await bare.get("/api/v1/vms")).status_code == 401  # the files are public, the API is not
    await bare.aclose()


def test_shipped_files_request_nothing_from_elsewhere() -> None:
    """Our own files name no other site at all; the vendored ones (credits in comments aside)
    import, fetch and load nothing from one. The browser test checks the requests themselves."""
    files = [p for p in UI_DIR.rglob("*") if p.is_file() and p.suffix in (".html", ".css", ".js")]
    assert len(files) >= 10
    for p in files:
        text = p.read_text()
        if "vendor" not in p.parts:
            assert set(re.findall(r"https?://[^\s\"'`)]+", text)) <= {"http://www.w3.org/2000/svg"}, p
        # (an import or url() that names another site; not prose such as "idea from https://...")
        assert not re.search(r"(?:import\s*\(?\s*[\"'`]|from\s*[\"'`]|url\s*\(\s*[\"']?)(?:https?:)?//", text), p
        # no source map is shipped, so no file names one (a bundle's code that writes such a
        # comment into a string, for a worker or a style it makes, is not a file's own)
        assert not re.search(r"(?m)^\s*(?://|/\*)[#@]\s*sourceMappingURL=", text) and "@import" not in text, p
    assert (UI_DIR / "vendor" / "xterm" / "LICENSE").read_text().startswith("Copyright")


def test_imports_resolve() -> None:
    """Every relative ES module import names a file that is shipped."""
    for p in UI_DIR.rglob("*.js"):
        if "vendor" in p.parts:
            continue
        for ref in re.findall(r'from "(\.[^"]+)"', p.read_text()):
            assert (p.parent / ref).resolve().is_file(), (p, ref)


def test_every_console_file_is_package_data() -> None:
    """Each file under ui/ (vendored ones too: noVNC's modules sit three folders deep) matches a
    package-data glob of pyproject.toml, so an installed vmplane serves what a checkout does."""
    import fnmatch
    import tomllib

    root = UI_DIR.parent  # src/vmplane
    pyproject = tomllib.loads((root.parents[1] / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["vmplane"]
    files = [p.relative_to(root).as_posix() for p in UI_DIR.rglob("*") if p.is_file()]
    # fnmatch's * also crosses "/": compare folder depth too, as setuptools' glob does
    missing = [f for f in files if not any(fnmatch.fnmatch(f, g) and f.count("/") == g.count("/") for g in globs)]
    assert missing == []
    assert any(f.startswith("ui/vendor/novnc/core/decoders/") for f in files)


def test_novnc_is_vendored_pinned_with_its_licences() -> None:
    novnc = UI_DIR / "vendor" / "novnc"
    script = (UI_DIR.parents[2] / "scripts" / "vendor-novnc.sh").read_text()
    version = re.search(r"^NOVNC_VERSION=(\S+)$", script, re.M)
    sha = re.search(r"^NOVNC_SHA512=([0-9a-f]{128})$", script, re.M)
    assert version and sha
    readme = (novnc / "README.md").read_text()
    assert f"`@novnc/novnc` {version[1]}" in readme and sha[1] in readme  # the files are that tarball's
    assert "Mozilla Public License" in (novnc / "LICENSE.MPL-2.0").read_text()
    assert (novnc / "LICENSE.txt").is_file() and (novnc / "vendor" / "pako" / "LICENSE").is_file()
    assert (novnc / "core" / "rfb.js").read_text().count("export default class RFB") == 1
