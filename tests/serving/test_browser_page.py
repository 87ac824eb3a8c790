"""The browser page in a real browser: headless Chromium (Debian's chromium and chromium-driver,
driven by Selenium) loads the page, the automatic segmentation appears, a left click on the
missed block (a real mouse click on NiiVue's canvas) labels it, Save stores it, and the label
file on disk equals the session's labels. Skipped, saying why, without Chromium or Selenium."""

from __future__ import annotations

import os
import shutil
import time

import numpy as np
import pytest

from nnsam3d.io.image_io import read_volume_in_file_order

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
MISSED_BLOCK = (slice(24, 34), slice(20, 30), slice(4, 10))
SCREENSHOT_VARIABLE = "NNSAM3D_PAGE_SCREENSHOT"


@pytest.fixture
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs selenium (pip install selenium)")
    if not CHROMIUM or not CHROMEDRIVER:
        pytest.skip("the browser test needs Chromium and its driver (apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900",
                     "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def _wait(driver, condition: str, timeout: float = 90.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = driver.execute_script("return window.nnsam3d ? Object.assign({}, window.nnsam3d) : null")
        if state and state.get("error"):
            raise AssertionError(f"the page reports: {state['error']}")
        if state and driver.execute_script(f"const s = window.nnsam3d; return Boolean({condition});"):
            return state
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {condition}; page state {state}; console "
                         f"{driver.get_log('browser') if hasattr(driver, 'get_log') else ''}")


def test_the_page_clicks_a_missed_structure_and_saves_what_the_session_holds(browser, start_server, phantom_file,
                                                                           voxels, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    import requests

    url, datastore = start_server()
    with open(phantom_file, "rb") as handle:
        requests.put(f"{url}/datastore/image", params={"image": "case"},
                     files={"file": ("case.nii.gz", handle)}, timeout=60).raise_for_status()
    browser.get(f"{url}/?image=case")
    automatic = _wait(browser, "s.ready && s.version >= 1")
    # A real click where the axial view shows the centre of the missed block.
    _, geometry = read_volume_in_file_order(phantom_file)
    centre_mm = (geometry.affine_array @ [*voxels["missed"], 1.0])[:3].tolist()
    assert browser.execute_script("return window.nnsam3d.fileVoxel(arguments[0])", centre_mm) == list(voxels["missed"])
    point = browser.execute_script("return window.nnsam3d.canvasPointOf(arguments[0])", centre_mm)
    canvas = browser.find_element(By.ID, "gl")
    ActionChains(browser).move_to_element_with_offset(canvas, point[0] - canvas.size["width"] / 2,
                                                      point[1] - canvas.size["height"] / 2).click().perform()
    clicked = _wait(browser, f"s.version > {automatic['version']} && !s.busy")
    assert clicked["foreground"] > automatic["foreground"]
    browser.find_element(By.ID, "save").click()
    _wait(browser, "s.saved === 1")
    if os.environ.get(SCREENSHOT_VARIABLE):
        browser.save_screenshot(os.environ[SCREENSHOT_VARIABLE])

    saved, saved_geometry = read_volume_in_file_order(datastore.label_path("case", "final"))
    assert saved_geometry.shape == geometry.shape
    live = start_server.apps[0].state.sessions.get("case", datastore.image_version("case"),
                                                   datastore.image_path("case"))
    assert np.array_equal(saved, live.labels)
    assert (live.automatic[MISSED_BLOCK] == 0).all() and (saved[MISSED_BLOCK] == 1).any()
    assert saved[voxels["bright"]] == 1
