"""The app's page in a real headless Chromium (Debian's package, driven by Playwright), against the demo's outputs:
filter a dataset, compose and generate (the same pixels as `cxrgen generate`), read a run's curves, open a
report, and a traversal URL's 404. With CXRGEN_SCREENSHOTS=DIR each page is also saved there (docs/app-*.png).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import serving_app
from PIL import Image

from cxrgen.cli import main

INSTALL = (
    "the browser tests need Chromium and Playwright: apt-get install chromium (Debian/Ubuntu) and "
    "pip install playwright, or set CXRGEN_CHROMIUM to a Chromium binary"
)


def chromium() -> str | None:
    found = os.environ.get("CXRGEN_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    return found if found and Path(found).exists() else None


def missing(reason: str) -> None:
    """Skip, saying how to install the browser; fail where it must be there (CI sets CXRGEN_REQUIRE_BROWSER)."""
    if os.environ.get("CXRGEN_REQUIRE_BROWSER"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright import sync_api as playwright
    except ImportError:
        missing(INSTALL)
    executable = chromium()
    if executable is None:
        missing(INSTALL)
    with playwright.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def served(demo_output, tmp_path_factory):
    out = tmp_path_factory.mktemp("app-output")
    folders = ["--data", str(demo_output / "prepared"), "--runs", str(demo_output / "run")]
    with serving_app(*folders, "--evals", str(demo_output / "evaluation"), "--out", str(out)) as app:
        yield app, out


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda exc: errors.append(str(exc)))
    # a refused prompt is a 400 answer, which Chromium logs; anything else logged as an error fails the test
    opened.on("console", lambda m: m.type == "error" and "status of 400" not in m.text and errors.append(m.text))
    yield opened
    context.close()
    assert not errors, errors  # no script error, no failed request, no refused resource


def screenshot(page, name: str) -> None:
    folder = os.environ.get("CXRGEN_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"app-{name}.png"))


def test_filtering_a_dataset_to_a_label_shows_only_images_with_it(page, served):
    app, _ = served
    page.goto(app.url + "#data")
    page.wait_for_selector("#grid .card")
    assert page.locator("#plots figure").count() == 4  # findings, sex, age, projection
    everything = int(page.inner_text("#grid-total").split()[0])
    options = page.locator("#f-label option").all_inner_texts()
    label = options[2].rsplit(" (", 1)[0]  # the second commonest finding
    expected = int(options[2].rsplit("(", 1)[1].rstrip(")"))
    page.select_option("#f-label", label)
    page.wait_for_function(f"() => document.querySelector('#grid-total').textContent === '{expected} image(s)'")
    page.wait_for_function(f"() => document.querySelectorAll('#grid .card').length === {min(expected, 48)}")
    labels = page.eval_on_selector_all("#grid .card", "cards => cards.map(c => JSON.parse(c.dataset.labels))")
    assert labels and all(label in card for card in labels)
    assert expected < everything
    page.select_option("#f-sex", "F")
    page.wait_for_function(f"() => !document.querySelector('#grid-total').textContent.startsWith('{expected} ')")
    texts = page.locator("#grid .card").all_inner_texts()
    assert all(" · F · " in text or " · F\n" in text for text in texts)
    page.select_option("#f-sex", "")
    page.select_option("#f-label", "")
    page.wait_for_function(f"() => document.querySelector('#grid-total').textContent === '{everything} image(s)'")
    page.locator("#grid img").first.evaluate("img => img.decode()")
    screenshot(page, "datasets")


def test_compose_generate_two_images_equal_to_cxrgen_generate(page, served, demo_output, tmp_path):
    app, out = served
    page.goto(app.url + "#generate")
    page.wait_for_selector("#model option", state="attached")
    page.fill("#age", "70")
    page.select_option("#sex", "F")
    page.fill(".finding-label", "efus")
    page.wait_for_selector(".suggest li")  # suggestions as one types
    assert "pleural effusion" in page.locator(".suggest li").first.inner_text()
    page.fill(".finding-label", "pleural efusion")  # a name the training data never uses
    page.wait_for_function("() => document.querySelector('#prompt-error').textContent.includes('closest known')")
    assert "pleural effusion" in page.inner_text("#prompt-error") and page.is_disabled("#generate")
    page.fill(".finding-label", "effusion")  # a synonym: read as the data's name
    page.fill(".finding-locations", "left")
    page.fill("#n", "2")
    page.fill("#steps", "5")
    page.fill("#seed", "3")
    page.wait_for_function("() => document.querySelector('#prompt-preview').textContent.includes('pleural effusion')")
    page.wait_for_function("() => !document.querySelector('#generate').disabled")
    prompt = page.inner_text("#prompt-preview")
    assert prompt.startswith("chest x-ray, age 70 female") and "loc left" in prompt
    tokens, _, rest = page.inner_text("#token-count").partition(" ")
    assert int(tokens) > 10 and rest.startswith("tokens of 77")
    page.click("#generate")
    page.wait_for_selector("#results .card img", timeout=180_000)
    assert page.locator("#results .card").count() == 2
    assert page.is_visible("#download")
    seeds = [line.split()[1] for line in page.inner_text("#results").splitlines() if line.startswith("seed ")]
    screenshot(page, "generate")
    made = sorted((out / page.inner_text("#progress-text").rsplit(": ", 1)[1]).glob("train/*/*.png"))
    cli_out = tmp_path / "cli"
    args = ["generate", "--run", str(demo_output / "run"), "--age", "70", "--sex", "F"]
    args += ["--finding", "effusion@left", "--n", "2", "--steps", "5", "--seed", "3", "--out", str(cli_out)]
    assert main(args) == 0
    expected = sorted(cli_out.glob("train/*/*.png"))
    assert len(made) == len(expected) == 2
    rows = [json.loads(line) for line in (cli_out / "train" / "metadata.jsonl").read_text().splitlines()]
    assert seeds == [str(r["seed"]) for r in rows]  # every digit of each seed, as the page shows it
    for a, b in zip(made, expected, strict=True):
        assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b))), (a, b)


def test_a_runs_curves_and_sample_grids(page, served):
    app, _ = served
    page.goto(app.url + "#training")
    page.wait_for_selector("#curve-loss svg [data-series='loss/train']")  # a line, or a dot for one value
    assert page.inner_text("#run-state").startswith("finished")
    assert page.locator("#curve-loss svg [data-series='loss/val']").count() == 1
    assert page.locator("#curve-lr svg [data-series='lr']").count() == 1
    page.wait_for_function("() => document.querySelector('#sample').naturalWidth > 0")
    assert "step" in page.inner_text("#sample-label") and page.locator("#settings tr").count() > 20
    screenshot(page, "training")


def test_a_report_opens_in_the_page(page, served):
    app, _ = served
    page.goto(app.url + "#reports")
    page.wait_for_function("() => document.querySelector('#report-frame').src.endsWith('report.html')")
    frame = page.frame_locator("#report-frame")
    assert "cxrgen evaluation" in frame.locator("h1").inner_text()
    screenshot(page, "reports")


def test_a_traversal_url_is_404_in_the_browser(browser, served):
    app, _ = served
    context = browser.new_context()
    opened = context.new_page()
    for path in ("files/data/x/../../../etc/passwd", "files/runs/x/%2e%2e/%2e%2e/etc/passwd", "static/../server.py"):
        response = opened.goto(app.url + path)
        assert response is not None and response.status == 404, path
    context.close()
