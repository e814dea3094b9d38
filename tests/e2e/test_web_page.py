"""The web page in a real browser: Debian's chromium, headless, driven by Selenium through
chromium-driver, against the real API handler behind localhost (what ``anonymize serve`` runs).

A real face photo goes in, the before/after slider and the outlines appear, the download is
checked pixel by pixel (face region changed, the detector finds no face in it) and "download all"
zips it; files that are not an image, animated or too big say so beside it while the photo goes
on. A big photo takes the presigned upload with its progress bar; the API key is asked once and
travels only as a header; a dropped file, a redo with new settings, and a phone-sized window
(no sideways scrolling) work too. With UPDATE_SCREENSHOT=1 the run rewrites the README's screenshot,
docs/img/web-page.png.

Without chromium and chromium-driver (``apt-get install chromium chromium-driver``; ``.ci/run``
does it) the tests are skipped with that reason.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from badinput import make_gif

from anonymizer import imageio
from anonymizer.aws import api_flow, get_anonymizer
from anonymizer.options import parse_options
from anonymizer_local.server import LocalApi

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore:No application metrics to publish")]

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "docs" / "img" / "web-page.png"
FACE_PHOTO = "maksssksksss446.jpg"  # street-masks-dev: one big face (317 px wide), 500 x 500
WAIT_S = 60.0


BROWSER = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
CHROMEDRIVER = shutil.which("chromedriver")
if not BROWSER or not CHROMEDRIVER:  # one line in the summary, not one per test
    pytest.skip("no headless browser: apt-get install chromium chromium-driver (.ci/run does)", allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium missing: pip install -e .[dev]")


class GatewayApi(LocalApi):
    """The local server with API Gateway's key check in front when ``required_key`` is set: as
    deployed, every route but the page and its form answers 403 without the right x-api-key."""

    required_key: str | None = None

    def _invoke_api(self, event: dict) -> dict:
        keyless = event["httpMethod"] == "GET" and event["path"] in ("/", "/options")
        sent = {k.lower(): v for k, v in (event.get("headers") or {}).items()}.get("x-api-key")
        if self.required_key and not keyless and sent != self.required_key:
            return {
                "statusCode": 403,
                "headers": {"Content-Type": "application/json"},
                "body": '{"message":"Forbidden"}',
            }
        return super()._invoke_api(event)


@pytest.fixture(scope="module")
def server():
    quiet = {"POWERTOOLS_METRICS_DISABLED": "true", "POWERTOOLS_LOG_LEVEL": "WARNING"}
    with GatewayApi(port=0, worker_interval=0.3, env_defaults=quiet) as api:
        yield api


@pytest.fixture(scope="module")
def downloads(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def driver(downloads):
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = BROWSER
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(arg)
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    )
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})  # console, requests
    drv = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    drv.implicitly_wait(0)
    yield drv
    drv.quit()


def wait_for(predicate, what: str, timeout: float = WAIT_S):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def csp_violations(drv) -> list[str]:
    return [e["message"] for e in drv.get_log("browser") if "Content Security Policy" in e["message"]]


def open_page(drv, server) -> None:
    drv.get(server.url + "/")
    wait_for(lambda: drv.execute_script("return document.body.dataset.ready === 'true'"), "the form from GET /options")


def item_named(drv, name: str):
    for node in drv.find_elements("css selector", "#files li"):
        if node.find_element("css selector", "h2").text == name:
            return node
    return None


def drop_file(drv, path: Path, mime: str = "image/jpeg") -> None:
    """Drop a file on the drop zone, as a drag from the desktop does (a DragEvent with its files)."""
    drv.execute_script(
        """const [b64, name, type] = arguments;
           const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
           const dt = new DataTransfer();
           dt.items.add(new File([bytes], name, {type}));
           const zone = document.getElementById('drop');
           for (const kind of ['dragenter', 'dragover', 'drop'])
             zone.dispatchEvent(new DragEvent(kind, {dataTransfer: dt, bubbles: true, cancelable: true}));""",
        base64.b64encode(path.read_bytes()).decode(),
        path.name,
        mime,
    )


def face_boxes(shared_data: Path, file_name: str) -> list[tuple[int, int, int, int]]:
    """The labelled faces of one street-masks-dev photo, as x1, y1, x2, y2."""
    coco = json.loads((shared_data / "faces" / "street-masks-dev" / "annotations.json").read_text())
    image_id = next(i["id"] for i in coco["images"] if i["file_name"].endswith(file_name))
    boxes = [a["bbox"] for a in coco["annotations"] if a["image_id"] == image_id and a["category_id"] == 1]
    return [(round(x), round(y), round(x + w), round(y + h)) for x, y, w, h in boxes]


def test_every_control_is_labelled_and_the_form_comes_from_the_option_table(driver, server):
    open_page(driver, server)
    unlabelled = driver.execute_script(
        """return [...document.querySelectorAll('input, select, button')]
             .filter(c => c.offsetParent !== null || c.closest('details'))
             .filter(c => !(c.labels && c.labels.length) && !c.getAttribute('aria-label') && !c.textContent.trim())
             .map(c => c.outerHTML)"""
    )
    assert unlabelled == []
    keys = set(driver.execute_script("return [...document.querySelectorAll('[data-key]')].map(c => c.dataset.key)"))
    from anonymizer.options import describe

    expected = {
        f"{t}.{o['key']}" if o["per_target"] else o["key"]
        for o in describe()
        if not o["deployment_only"] and o["type"] != "list"
        for t in (("face", "plate") if o["per_target"] else (None,))
    }
    assert keys == expected
    assert driver.find_elements("css selector", "input[data-list=targets]")
    assert csp_violations(driver) == []


def test_a_real_photo_is_anonymized_downloaded_and_a_bad_file_fails_beside_it(
    driver, server, shared_data, downloads, tmp_path
):
    photo = shared_data / "faces" / "street-masks-dev" / "images" / FACE_PHOTO
    bad = tmp_path / "holiday-notes.jpg"
    bad.write_bytes(b"these are notes, not a JPEG\n" * 20)
    animated = tmp_path / "blink.gif"
    animated.write_bytes(make_gif(4, 3, frames=2))
    huge = tmp_path / "huge.png"
    with huge.open("wb") as f:  # sparse: the page refuses it by its size before reading a byte
        f.truncate(api_flow.options_document(api_flow.ApiConfig.from_env({}))["limits"]["upload_bytes"] + 2**20)
    open_page(driver, server)
    driver.find_element("css selector", "#opt-face-effect option[value=pixelate]").click()
    driver.find_element("id", "file-input").send_keys("\n".join(map(str, (photo, bad, animated, huge))))

    def error_of(path: Path) -> str:
        node = item_named(driver, path.name)
        return node.find_element("css selector", "[data-role=error]").text if node else ""

    failing = (bad, animated, huge)
    errors = wait_for(lambda: all(map(error_of, failing)) and [error_of(path) for path in failing], "the errors")
    assert re.fullmatch(r"Not an image: \w.+", errors[0]), errors  # the server's reason, in words
    assert re.fullmatch(r"Not supported: .*animat.+", errors[1]), errors
    assert re.fullmatch(r"Too big: 51\.0 MB; the largest accepted is 50\.0 MB", errors[2]), errors
    item = wait_for(lambda: item_named(driver, FACE_PHOTO), "the photo's entry")
    slider = wait_for(lambda: item.find_elements("css selector", "input.compare-slider"), "the before/after slider")[0]
    stats = item.find_element("css selector", ".stats").text
    assert "1 face" in stats and " ms" in stats, stats

    # the slider moves the split between the two images, by keyboard too
    slider.send_keys("\ue012" * 10)  # ArrowLeft
    clip = driver.execute_script("return arguments[0].querySelector('img.after').style.clipPath", item)
    assert clip == "inset(0px 60% 0px 0px)", clip

    # outlines come from the JSON report: one face box, drawn over the image
    item.find_element("css selector", "input[id^=outline-]").click()
    wait_for(lambda: item.find_elements("css selector", ".boxes:not([hidden]) div.face"), "the face outline")

    # the README's picture: the whole page (settings, the photo, the files that failed); written to
    # the repository only when asked (UPDATE_SCREENSHOT=1), so a test run leaves the tree clean
    shot = SCREENSHOT if os.environ.get("UPDATE_SCREENSHOT") == "1" else tmp_path / "web-page.png"
    chrome = driver.execute_script("return window.outerHeight - window.innerHeight")
    driver.set_window_size(1280, driver.execute_script("return document.documentElement.scrollHeight") + chrome)
    driver.execute_script("window.scrollTo(0, 0); document.activeElement.blur()")
    assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    driver.set_window_size(1280, 1000)

    item.find_element("css selector", "a[download]").click()
    out_path = wait_for(lambda: next(downloads.glob("maksssksksss446-anonymized.jpg"), None), "the download")
    wait_for(lambda: not list(downloads.glob("*.crdownload")), "the download to finish")
    out = out_path.read_bytes()
    assert imageio.metadata_markers(out) == []
    original = imageio.decode(photo.read_bytes()).pixels.astype(np.int16)
    anonymized = imageio.decode(out).pixels.astype(np.int16)
    assert anonymized.shape == original.shape
    diff = np.abs(anonymized - original).mean(axis=2)
    outside = np.ones(diff.shape, bool)
    for x1, y1, x2, y2 in face_boxes(shared_data, FACE_PHOTO):
        outside[y1:y2, x1:x2] = False
    for x1, y1, x2, y2 in face_boxes(shared_data, FACE_PHOTO):
        face, rest = diff[y1:y2, x1:x2].mean(), diff[outside].mean()  # rest: JPEG re-encoding only
        assert face > 5 and face > 4 * rest, f"face region barely changed: mean |diff| {face:.1f}, elsewhere {rest:.1f}"
    again = get_anonymizer().detect(out, parse_options({"targets": "face"}))
    assert again["counts"]["face"] == 0, again["detections"]
    assert driver.find_element("id", "summary").text.startswith("1 done, 3 failed")

    # "download all": one zip of the batch's successes, built in the page
    driver.find_element("id", "download-all").click()
    archive = wait_for(lambda: next(downloads.glob("anonymized.zip"), None), "the zip")
    wait_for(lambda: not list(downloads.glob("*.crdownload")), "the zip to finish")
    with zipfile.ZipFile(archive) as z:
        assert z.testzip() is None  # every CRC checks out
        assert z.namelist() == [out_path.name]
        assert z.read(out_path.name) == out
    assert csp_violations(driver) == []


def test_a_big_photo_goes_through_the_presigned_upload_with_a_progress_bar(
    driver, server, shared_data, downloads, tmp_path
):
    import cv2

    photo = shared_data / "faces" / "street-masks-dev" / "images" / FACE_PHOTO
    scale = 4  # 2000 x 2000, with a little noise so that the PNG stays over the synchronous limit
    pixels = imageio.decode(photo.read_bytes()).pixels
    big_pixels = cv2.resize(pixels, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
    noise = np.random.default_rng(0).integers(-6, 7, big_pixels.shape)
    big_pixels = np.clip(big_pixels.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    big = tmp_path / "big-portrait.png"
    big.write_bytes(imageio.encode(big_pixels, None, "png"))
    open_page(driver, server)
    limits = driver.execute_script("return fetch('options').then(r => r.json()).then(d => d.limits)")
    assert limits["uploads"] and limits["sync_bytes"] < big.stat().st_size < limits["upload_bytes"]
    driver.execute_script(  # record what the progress bars show (test-side code; the page's CSP does not apply)
        """window.seen = [];
           new MutationObserver(() => document.querySelectorAll('#files progress[value]')
             .forEach(p => window.seen.push(Number(p.value)))).observe(document.body,
             {subtree: true, attributes: true, attributeFilter: ['value'], childList: true});"""
    )
    driver.find_element("id", "file-input").send_keys(str(big))
    item = wait_for(lambda: item_named(driver, big.name), "the big photo's entry")
    wait_for(
        lambda: (
            item.find_elements("css selector", "input.compare-slider")
            or item.find_element("css selector", "[data-role=error]").text
        ),
        "the big photo's result",
        timeout=180,
    )
    assert item.find_element("css selector", "[data-role=error]").text == ""
    assert max(driver.execute_script("return window.seen")) == 100  # the upload's progress reached the end
    stats = item.find_element("css selector", ".stats").text
    assert re.match(r"[1-9]\d* faces?, ", stats) and " ms" in stats, stats
    item.find_element("css selector", "input[id^=outline-]").click()  # the report came with the result
    wait_for(lambda: item.find_elements("css selector", ".boxes:not([hidden]) div.face"), "the face outline")

    item.find_element("css selector", "a[download]").click()
    out_path = wait_for(lambda: next(downloads.glob("big-portrait-anonymized.png"), None), "the download")
    wait_for(lambda: not list(downloads.glob("*.crdownload")), "the download to finish")
    anonymized = imageio.decode(out_path.read_bytes()).pixels.astype(np.int16)
    (x1, y1, x2, y2), *_ = [tuple(v * scale for v in box) for box in face_boxes(shared_data, FACE_PHOTO)]
    change = np.abs(anonymized[y1:y2, x1:x2] - big_pixels[y1:y2, x1:x2].astype(np.int16)).mean()
    assert change > 5, f"face region barely changed: mean |diff| {change:.1f}"
    assert get_anonymizer().detect(out_path.read_bytes(), parse_options({"targets": "face"}))["counts"]["face"] == 0
    assert csp_violations(driver) == []


def test_the_api_key_is_asked_once_kept_for_the_tab_and_sent_only_as_a_header(driver, server, shared_data):
    photo = shared_data / "faces" / "street-masks-dev" / "images" / FACE_PHOTO
    server.required_key = "k3y-for-this-tab"
    try:
        open_page(driver, server)
        driver.execute_script("sessionStorage.clear()")
        open_page(driver, server)  # the page and its form need no key
        assert not driver.find_element("id", "keybox").is_displayed()
        driver.get_log("performance")  # forget the requests so far
        drop_file(driver, photo)  # dragged in this time, not chosen: 403, so the page asks for the key
        wait_for(lambda: driver.find_element("id", "keybox").is_displayed(), "the key to be asked for")
        assert driver.switch_to.active_element.get_attribute("id") == "api-key"  # focus goes to the field
        driver.switch_to.active_element.send_keys("k3y-for-this-tab\n")
        item = wait_for(lambda: item_named(driver, FACE_PHOTO), "the photo's entry")
        wait_for(lambda: item.find_elements("css selector", "input.compare-slider"), "the result after the key")
        assert not driver.find_element("id", "keybox").is_displayed()
        assert driver.execute_script("return sessionStorage.getItem('anonymizer.apiKey')") == "k3y-for-this-tab"
        drop_file(driver, photo)  # a second file: the key is not asked again
        wait_for(lambda: len(driver.find_elements("css selector", "#files input.compare-slider")) == 2, "2 results")
        assert not driver.find_element("id", "keybox").is_displayed()
    finally:
        server.required_key = None

    sent = [json.loads(e["message"])["message"] for e in driver.get_log("performance")]
    requests = [m["params"]["request"] for m in sent if m["method"] == "Network.requestWillBeSent"]
    api_calls = [r for r in requests if r["url"].startswith(server.url + "/anonymize")]
    keys = [{k.lower(): v for k, v in r["headers"].items()}.get("x-api-key") for r in api_calls]
    assert keys == [None, "k3y-for-this-tab", "k3y-for-this-tab"], keys  # refused once, then sent with each
    assert not [r["url"] for r in requests if "k3y" in r["url"]]  # never in a URL
    assert all(r["url"].startswith((server.url, "blob:", "data:")) for r in requests)  # only its own API

    # "Redo with current settings": the same file again, with the settings as they are now
    first = item.find_element("css selector", "img.after").get_attribute("src")
    driver.find_element("css selector", "#opt-face-effect option[value=fill]").click()
    item.find_element("xpath", ".//button[starts-with(., 'Redo')]").click()
    wait_for(lambda: (img := item.find_elements("css selector", "img.after")) and img[0].get_attribute("src") != first,
             "the new result")  # fmt: skip
    assert driver.execute_script("return fetch(arguments[0]).then(() => 'alive', () => 'revoked')", first) == "revoked"
    sent = [json.loads(e["message"])["message"] for e in driver.get_log("performance")]
    urls = [m["params"]["request"]["url"] for m in sent if m["method"] == "Network.requestWillBeSent"]
    assert any("/anonymize?" in url and "face.effect=fill" in url for url in urls), urls


def test_the_page_and_a_result_fit_a_phone(driver, server, shared_data):
    photo = shared_data / "faces" / "street-masks-dev" / "images" / FACE_PHOTO
    driver.set_window_size(390, 844)
    try:
        open_page(driver, server)
        drop_file(driver, photo)
        item = wait_for(lambda: item_named(driver, FACE_PHOTO), "the photo's entry")
        wait_for(lambda: item.find_elements("css selector", "input.compare-slider"), "the result")
        overflow = driver.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{overflow} px of sideways scrolling on a phone"
        small = driver.execute_script(
            "return [...document.querySelectorAll('button, a.button, select')].filter(c => c.offsetParent)"
            ".map(c => c.getBoundingClientRect().height).filter(h => h < 40)"
        )
        assert small == []  # touch targets of 40 px and more
    finally:
        driver.set_window_size(1280, 1000)
