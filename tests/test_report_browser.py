"""The HTML report in a real browser: headless Chromium loads the one file, every table row and
image is there and every embedded PNG decodes, and a screenshot is a non-blank page.

Skips where no Chromium is installed (Debian: ``apt-get install -y chromium``) or matplotlib is
missing. Nothing is fetched: the page has no external resources, which is what this checks.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from kdlab.report.build import ReportOptions, write_report
from kdlab.store import RunStore
from test_report import EXPERIMENT, FIGURES, N_GROUPS, build_sweep_store

BROWSERS = ("chromium", "chromium-browser", "headless_shell", "google-chrome", "chrome")
WIDTH, HEIGHT = 1024, 1600

#: Runs after the load event (images decoded by then) and leaves its findings in the DOM, which
#: --dump-dom prints.
PROBE = """<script>
window.addEventListener("load", () => {
  const images = [...document.images];
  document.body.dataset.images = images.length;
  document.body.dataset.decoded = images.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.rows = document.querySelectorAll("#results tbody tr").length;
});
</script>"""


def browser() -> str | None:
    found = (shutil.which(name) for name in BROWSERS)
    return next((path for path in found if path), None)


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if browser() is None:
        pytest.skip(f"no headless browser ({', '.join(BROWSERS)}): apt-get install -y chromium")
    pytest.importorskip("matplotlib")
    folder = tmp_path_factory.mktemp("browser")
    with RunStore(build_sweep_store(folder / "store")) as store:
        options = ReportOptions(EXPERIMENT, by="temperature,alpha", formats="html",
                                out=folder / "out")  # fmt: skip
        write_report(store, options)
    return folder / "out" / "report.html"


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    command = [browser(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               "--disable-dev-shm-usage", f"--user-data-dir={profile}", *args]  # fmt: skip
    env = {**os.environ, "HOME": str(profile)}  # no writes to the real home's config
    return subprocess.run(command, capture_output=True, text=True, timeout=90, env=env)


def test_chromium_shows_the_table_and_decodes_every_image(page: Path, tmp_path: Path) -> None:
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", PROBE + "\n</body>"))
    done = chromium("--virtual-time-budget=10000", "--dump-dom", probe.as_uri(), profile=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", done.stdout)
    assert body is not None, done.stdout[:2000]
    found = dict(re.findall(r'data-(\w+)="(\d+)"', body.group(1)))
    assert found == {"images": str(len(FIGURES)), "decoded": str(len(FIGURES)),
                     "rows": str(N_GROUPS)}  # fmt: skip
    assert done.stdout.count("<img ") == len(FIGURES) and "<table" in done.stdout


def test_chromium_screenshot_is_a_non_blank_page(page: Path, tmp_path: Path) -> None:
    from PIL import Image

    shot = tmp_path / "shot.png"
    done = chromium("--hide-scrollbars", f"--window-size={WIDTH},{HEIGHT}",
                    f"--screenshot={shot}", page.as_uri(), profile=tmp_path)  # fmt: skip
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    with Image.open(shot) as image:
        assert image.format == "PNG" and image.size == (WIDTH, HEIGHT)
        grey = image.convert("L")
        histogram = grey.histogram()
    dark = sum(histogram[:128]) / (WIDTH * HEIGHT)  # text, table rules, plot lines
    assert 0.002 < dark < 0.5, dark
    assert sum(1 for count in histogram if count) > 50  # anti-aliased text and figures
