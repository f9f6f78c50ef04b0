"""The web page, driven in a real headless Chromium: upload, predictions, gallery, text search;
the app's k, image_id and search k through Flask's test client."""

import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from conftest import headless_chromium
from PIL import Image

from clipvdb.web import MAX_UPLOAD_BYTES


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(cli, db_url, syn_data):
    w = ["--model", "tiny"]
    cli("ingest", "--stage", "first,origin", "--data", syn_data, "--limit", "30", "--workers", "0", *w)
    cli("evaluate", "--stage", "first", "--data", syn_data, "--num", "4", "--workers", "0")
    port = _free_port()
    env = {**os.environ, "CLIPVDB_DATABASE_URL": db_url}
    proc = subprocess.Popen(
        [sys.executable, "-m", "clipvdb", "serve", "--port", str(port), *w],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180  # start-up imports torch: slow on a busy machine
    while True:
        try:
            urllib.request.urlopen(base + "/health", timeout=5)
            break
        except OSError:
            if proc.poll() is not None:
                pytest.fail(proc.stdout.read())
            if time.monotonic() > deadline:
                proc.terminate()
                pytest.fail(f"clipvdb serve did not answer /health within 180 s: {proc.stdout.read()}")
            time.sleep(0.1)
    yield base
    proc.terminate()
    proc.wait(10)


def _wait_for(drv, css: str, timeout: float = 180) -> None:
    """A form submission returns before the next page has loaded; the first request also loads the model."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(drv, timeout).until(lambda d: d.find_elements(By.CSS_SELECTOR, css))


def test_page_in_a_real_browser(server, syn_data, tmp_path):
    from selenium.webdriver.common.by import By

    drv = headless_chromium(tmp_path / "profile", "1200,1400")
    try:
        drv.get(server)
        assert "clipvdb" in drv.title
        drv.find_element(By.ID, "image").send_keys(str(syn_data / "test" / "red-circle" / "0000.png"))
        drv.find_element(By.ID, "classify").click()
        _wait_for(drv, "#predictions, #error")
        errors = drv.find_elements(By.ID, "error")
        assert not errors, errors[0].text
        rows = drv.find_elements(By.CSS_SELECTOR, "#predictions tr")
        assert len(rows) == 3  # header + first + origin
        assert {r.find_elements(By.TAG_NAME, "td")[0].text for r in rows[1:]} == {"first", "origin"}
        tiles = drv.find_elements(By.CSS_SELECTOR, "#gallery-first img")
        assert len(tiles) == 5
        assert all(drv.execute_script("return arguments[0].naturalWidth", t) == 96 for t in tiles)
        drv.find_element(By.ID, "q").send_keys("a red circle")
        drv.find_element(By.ID, "search").click()
        _wait_for(drv, "#search-results, #error")
        assert len(drv.find_elements(By.CSS_SELECTOR, "#search-results .tile")) == 10
        shot = tmp_path / "page.png"
        drv.save_screenshot(str(shot))
    finally:
        drv.quit()
    with Image.open(shot) as img:
        img = img.convert("L")
        assert img.size[0] >= 800
        assert len(set(img.getdata())) > 20, "the screenshot is blank"


def test_uploads_are_validated(server):
    import http.client
    import uuid

    def post(body: bytes, name: str = "x.png"):
        boundary = uuid.uuid4().hex
        data = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
                f"Content-Type: image/png\r\n\r\n"
            ).encode()
            + body
            + f"\r\n--{boundary}--\r\n".encode()
        )
        host, port = server.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request("POST", "/classify", data, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        resp = conn.getresponse()
        return resp.status, resp.read().decode()

    status, body = post(b"not an image")
    assert status == 400 and "not a readable image" in body
    status, body = post(b"\0" * (MAX_UPLOAD_BYTES + 1))
    assert status == 413 and "larger than" in body


@pytest.mark.parametrize("k", [2, 4])
def test_web_k_image_id_and_search_k(store, syn_data, k):
    from clipvdb.web import create_app

    store.ingest(syn_data, "first,origin", workers=0)
    store.evaluate(syn_data, "first", workers=0, limit=2)
    client = create_app(store, k=k).test_client()
    with store.connection() as conn:
        test_id = conn.execute("SELECT min(id) FROM images WHERE split = 'test'").fetchone()[0]
    page = client.get(f"/classify?image_id={test_id}&stage=first").get_data(as_text=True)
    assert page.count('<div class="tile"><img src="/image/') == k and f"stored image {test_id}" in page
    hits = client.get("/search?q=a+red+circle&k=3").get_data(as_text=True)
    assert hits.count("/image/") == 3  # one tile per hit; the sample links go to /classify, not /image/
    assert client.get("/search?q=x&k=0").status_code == 400
