"""bench report: report.md with its figures beside it, and one self-contained report.html that a real
browser (headless Chromium, where installed; CI installs it) opens with every image decoded and no
console error."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest
from typer.testing import CliRunner

from dmlbench.cli import app
from dmlbench.report.plots.common import NOT_LOSS_COLUMNS, bar_metrics, seeds_note

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def bench(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    """Two methods and the raw floor, two seeds, on the digits: a report's every section but tuning."""
    out = tmp_path_factory.mktemp("report")
    r = bench("run", "--methods", "siamese,vae", "--seeds", "0,1", "--steps", "12", "--test-triplets", "200",
              "--threads", "2", "--out", out)
    assert r.exit_code == 0, r.stderr
    r = bench("report", out / "digits")
    assert r.exit_code == 0, r.stderr
    return out / "digits"


def test_report_holds_the_table_statistics_gallery_figures_and_provenance(suite):
    md = (suite / "report.md").read_text()
    for section in ("## Results", "## Budgets", "## Statistics (map@r)", "## Retrieval gallery", "## Figures"):
        assert section in md, section
    assert "| steps |" in md and "detectable at 80% power" in md and "seeds for 0.005" in md
    assert "| siamese | 12 |" in md  # the budget table: steps per row
    assert "Made by commit:" in md and "code hash:" in md and "torch:" in md
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert {"figures/gallery.png", "figures/metrics.png", "figures/loss_curves.png", "figures/embeddings.png",
            "figures/reconstructions.png"} <= set(images)
    for rel in images:  # beside report.md, and small enough to commit
        assert (suite / rel).is_file() and (suite / rel).stat().st_size <= 300_000, rel


def test_report_html_is_one_self_contained_file(suite):
    page = (suite / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') >= 5
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing fetched from elsewhere
    assert "<table>" in page and "<strong>" in page  # the table, with the bold of the best rows


@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("DMLBENCH_REQUIRE_CHROMIUM"),
                    reason="no Chromium here (Debian: apt-get install chromium); CI installs it")
def test_report_opens_in_a_real_browser_with_every_image_decoded(suite, tmp_path):
    assert CHROMIUM, "DMLBENCH_REQUIRE_CHROMIUM is set but no chromium is on PATH"
    probe = """<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push(String(e.message || (e.target && e.target.alt) || e.type)), true);
const consoleError = console.error;
console.error = (...a) => { window.__errors.push(a.join(' ')); consoleError(...a); };
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const r = {images: imgs.length, broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt),
             errors: window.__errors};
  const pre = document.createElement('pre'); pre.id = 'probe'; pre.textContent = JSON.stringify(r);
  document.body.appendChild(pre);
});
</script>"""
    page = tmp_path / "probe.html"
    page.write_text((suite / "report.html").read_text().replace("<head>", "<head>" + probe, 1))
    common = [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000"]
    dom = subprocess.run([*common, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    found = re.search(r'<pre id="probe">([^<]*)</pre>', dom)
    assert found, dom[-2000:]
    result = json.loads(found.group(1).replace("&quot;", '"'))
    assert result["images"] >= 5 and result["broken"] == [] and result["errors"] == [], result
    shot = tmp_path / "report.png"
    subprocess.run([*common, f"--screenshot={shot}", "--window-size=1280,2400", (suite / "report.html").as_uri()],
                   capture_output=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 10_000  # a rendered page, not a blank one
    shutil.copy(shot, suite / "report-screenshot.png")  # kept beside the report for a look


def test_figures_fit_for_a_paper(suite, tmp_path):
    """Loss curves never draw the step counter; bars leave out metrics that cannot be ranked; error
    bars only with 2 seeds or more; --format and --dpi."""
    assert {"step", "epoch", "lr", "seconds", "images_per_s"} <= NOT_LOSS_COLUMNS
    assert "triplet_acc_margin" not in bar_metrics() and "map@r" in bar_metrics()
    import pandas as pd

    one = pd.DataFrame({"label": ["a", "b"], "seed": [0, 0]})
    assert seeds_note(one)[0] is None and seeds_note(pd.concat([one, one.assign(seed=1)]))[0] is not None
    r = bench("plot", suite, "--out", tmp_path / "svg", "--format", "svg", "--dpi", "72", "--projection", "pca")
    assert r.exit_code == 0, r.stderr
    files = sorted(p.name for p in (tmp_path / "svg").iterdir())
    assert "metrics.svg" in files and "loss_curves.svg" in files and all(f.endswith(".svg") for f in files), files
    r = bench("plot", suite, "--format", "gif")
    assert r.exit_code == 2 and "--format 'gif' is not one of: png, pdf, svg" in r.stderr


def test_report_refuses_what_it_cannot_do(tmp_path, suite):
    r = bench("report", tmp_path / "nowhere")
    assert r.exit_code == 2 and "does not exist" in r.stderr
    r = bench("report", suite.parent, "--suite", "nope")
    assert r.exit_code == 2 and "no suite folder 'nope'" in r.stderr
    r = bench("report", suite, "--metric", "triplet_acc_margin")
    assert r.exit_code == 2 and "not a metric that can be ranked" in r.stderr
