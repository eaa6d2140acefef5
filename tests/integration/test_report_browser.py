"""The HTML report in a real browser (Debian's headless Chromium, through Playwright):
it opens from a file without a single network request, and every plot drew: each
figure's SVG has a size on the page and its data artists (`data-*` groups) cover some
of it. The full-page screenshot lands in test-artifacts/report.png."""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import pytest

from schemas.db import make_engine
from schemas.tables import utcnow
from scoring.report import build_report
from tests.scoring.test_report import PLOTS, fill

pytestmark = pytest.mark.integration

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

# Per inline figure: its size on the page, and how many of its data groups have an extent.
MEASURE = """() => Array.from(document.querySelectorAll("figure.plot")).map(figure => {
    const svg = figure.querySelector("svg");
    const box = svg.getBoundingClientRect();
    const drawn = Array.from(svg.querySelectorAll('[id^="data-"]')).filter(group => {
        const r = group.getBoundingClientRect();
        return group.querySelector("path, use") !== null && (r.width > 0 || r.height > 0);
    });
    return {id: figure.id, width: box.width, height: box.height, drawn: drawn.length};
})"""


def test_every_plot_draws_in_a_browser_and_nothing_is_fetched(
    sqlite_url: str, tmp_path: Path
) -> None:
    from playwright.sync_api import Request, sync_playwright

    now = utcnow()
    engine = make_engine(sqlite_url)
    fill(engine, now)
    html = build_report(
        engine, now - timedelta(hours=24), now + timedelta(seconds=1), "24h", "sqlite:///test.db"
    )
    engine.dispose()
    path = tmp_path / "report.html"
    path.write_text(html, encoding="utf-8")
    ARTIFACTS.mkdir(exist_ok=True)
    fetched: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})

            def record(request: Request) -> None:
                fetched.append(request.url)

            page.on("request", record)
            page.goto(path.as_uri())
            page.wait_for_load_state("load")
            figures = page.evaluate(MEASURE)
            page.screenshot(path=ARTIFACTS / "report.png", full_page=True)
            heading = page.locator("h1").inner_text()
        finally:
            browser.close()
    assert heading == "Scoring report"
    assert [f for f in fetched if f != path.as_uri()] == []
    assert sorted(f["id"] for f in figures) == sorted(f"fig-{key}" for key in PLOTS)
    for figure in figures:
        assert figure["width"] > 100 and figure["height"] > 50, figure
        assert figure["drawn"] > 0, f"{figure['id']} drew nothing"
