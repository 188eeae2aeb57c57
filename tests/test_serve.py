"""fvgraph serve against a real running server: the JSON API, its errors, what it refuses to read, a load of
concurrent clients, Ctrl-C, and the page itself driven in headless Chromium."""
import base64
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx  # in the test extra: a missing one fails the run, it does not skip these tests
import numpy as np
import pytest
from PIL import Image

import fvgraph as fv
from fvgraph.cli import DEMO_MODEL
from fvgraph.image import demo_images, load_image
from tests.conftest import rel_l2


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(tmp, *extra):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "fvgraph", "serve", "--port", str(port), "--quiet", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
    for _ in range(300):
        try:
            if client.get("/api/model").status_code == 200:
                return proc, client, port
        except httpx.TransportError:
            time.sleep(0.1)
        if proc.poll() is not None:
            raise RuntimeError(proc.stderr.read())
    raise RuntimeError("the server did not start")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    images = tmp / "images"
    images.mkdir()
    for p in demo_images()[:2]:
        shutil.copy(p, images / p.name)
    (tmp / "secret.txt").write_text("do not read me")
    os.symlink(tmp / "secret.txt", images / "link.png")  # a listed-looking name that points outside
    (images / "notes.txt").write_text("not an image")
    proc, client, port = start_server(tmp, "--images", str(images), "--max-upload", "1")
    yield client, proc, images, port
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=20)


def b64(path_or_bytes):
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
    return base64.b64encode(data).decode()


def png_of(text):
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(text))))


def test_model_description(server):
    client, *_ = server
    m = client.get("/api/model").json()
    assert m["name"] == "efficientnet_lite0.onnx" and len(m["classes"]) == 1000
    assert {"gradient", "guided", "lrp-epsilon", "gradcam", "occlusion", "reconstruction", "scorecam"} <= set(m["methods"])
    assert sorted(m["images"]) == sorted(p.name for p in demo_images()[:2])  # no symlink, no text file
    shapes = [l["shape"] for l in m["layers"] if l["op"] == "Conv"]
    assert shapes[0] == ["N", 32, 112, 112]  # concrete, not symbolic
    assert m["params"]["lrp-epsilon"][0]["name"] == "epsilon"


def test_predict_and_explain_equal_the_python_api(server):
    client, *_ = server
    photo = demo_images()[0]
    p = client.post("/api/predict", json={"image": b64(photo)}).json()
    assert len(p["top"]) == 5 and p["top"][0]["label"] == "Egyptian Mau"
    assert p["top"][0]["p"] >= p["top"][1]["p"] and png_of(p["shown"]).shape == (224, 224, 3)
    model = fv.load(DEMO_MODEL)
    x = load_image(photo, model.preprocessing())
    for method, params in (("gradient", {}), ("guided", {}), ("lrp-epsilon", {"epsilon": 0.01}), ("gradcam", {}),
                           ("integrated-gradients", {"steps": 4})):
        r = client.post("/api/explain", json={"image_id": p["image_id"], "method": method, "params": params,
                                              "target": 281, "array": True})
        assert r.status_code == 200, r.text
        out = r.json()
        assert png_of(out["png"]).shape == (224, 224, 3) and out["target"] == 281 and out["label"] == "tabby cat"
        got = np.load(io.BytesIO(base64.b64decode(out["npy"])))
        want = model.explain(x, method, target=281, **params).relevance[0]
        assert rel_l2(got, want) < 1e-5, method


def test_occlusion_and_reconstruction_stream_their_progress(server):
    client, _, images, _ = server
    name = sorted(os.listdir(images))[0] if sorted(os.listdir(images))[0].endswith((".png", ".jpg")) else None
    body = {"name": "chelsea.png", "method": "occlusion", "params": {"box": 56, "stride": 56}, "stream": True}
    with client.stream("POST", "/api/explain", json=body) as r:
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert r.status_code == 200 and lines[-1]["done"] and name is not None
    assert png_of(lines[-1]["png"]).shape == (224, 224, 3)
    assert any("progress" in line for line in lines)
    body = {"name": "chelsea.png", "method": "reconstruction", "params": {"steps": 20}, "target": 1, "stream": True}
    with client.stream("POST", "/api/explain", json=body) as r:
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert lines[-1]["done"] and lines[-1]["label"] == "goldfish"


def test_reconstruction_takes_its_parameterization_and_a_unit_shows_its_examples(server):
    client, _, images, _ = server
    body = {"name": "chelsea.png", "method": "reconstruction", "target": 1,
            "params": {"param": "maco", "steps": 16, "crops": 2}}
    r = client.post("/api/explain", json=body)
    assert r.status_code == 200 and png_of(r.json()["png"]).shape == (224, 224, 3)
    assert client.post("/api/explain", json={**body, "params": {"param": "wavelet"}}).status_code == 400
    assert client.get("/api/model").json()["examples"] is True
    layer = [l for l in fv.load(DEMO_MODEL).layers if l.op_type == "Clip"][12].name
    r = client.post("/api/examples", json={"layer": layer, "channel": 3, "k": 2})
    assert r.status_code == 200, r.text
    ex = r.json()["examples"]
    from fvgraph.methods.examples import top_examples
    listed = [images / n for n in client.get("/api/model").json()["images"]]
    want = top_examples(fv.load(DEMO_MODEL), listed, layer, [3], 2)[3]
    assert [e["image"] for e in ex] == [Path(e.image).name for e in want]
    assert all(png_of(e["png"]).ndim == 3 for e in ex)
    assert client.post("/api/examples", json={"layer": layer}).status_code == 400


def test_errors_are_one_line_4xx_and_the_server_keeps_serving(server):
    client, *_ = server
    bad = [({"name": "chelsea.png", "method": "nope"}, 400, "unknown method"),
           ({"image": "%%%not base64%%%", "method": "gradient"}, 400, "base64"),
           ({"image": b64(b"not an image at all"), "method": "gradient"}, 400, "not an image fvgraph can read"),
           ({"name": "chelsea.png", "method": "lrp-epsilon", "params": {"epsilon": "big"}}, 400, "number"),
           ({"name": "chelsea.png", "method": "gradient", "target": 5000}, 400, "out of range"),
           ({"image": b64(os.urandom(1_500_000)), "method": "gradient"}, 413, "limit"),
           ({"method": "gradient"}, 400, "send an image")]
    for body, status, words in bad:
        r = client.post("/api/explain", json=body)
        assert r.status_code == status and words in r.json()["error"] and "\n" not in r.json()["error"], (body, r.text)
    r = client.post("/api/predict", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]
    malformed = [({"image_id": {"a": 1}, "method": "gradient"}, "image_id must be a string"),
                 ({"name": ["chelsea.png"]}, "name must be a string"),
                 ({"name": "chelsea.png", "method": {"m": 1}}, "unknown method"),
                 ({"name": "chelsea.png", "method": "gradient", "params": {"target": 3}}, "unknown parameter 'target' for gradient"),
                 ({"name": "chelsea.png", "method": "lrp-epsilon", "params": {"epsilon": {"x": 1}}}, "number or"),
                 ({"name": "chelsea.png", "method": "gradient", "params": [1]}, "params must be an object"),
                 ({"name": "chelsea.png", "method": "gradient", "layer": 3}, "layer must be"),
                 ({"name": "chelsea.png", "method": "gradient", "colors": "plaid"}, "colors must be")]
    for body, words in malformed:
        r = client.post("/api/explain", json=body)
        assert r.status_code == 400 and words in r.json()["error"], (body, r.text)
    assert client.get("/api/nothing").status_code == 404
    assert client.post("/api/predict", json={"name": "chelsea.png"}).status_code == 200


def test_only_same_origin_requests_are_answered(server):
    """A page on another site can neither start work (Origin, Sec-Fetch-Site, a non-JSON body) nor read answers
    through DNS rebinding (a Host that is not this server's)."""
    client, _, _, port = server
    body = json.dumps({"name": "chelsea.png", "method": "gradient"})
    here = f"http://127.0.0.1:{port}"
    refused = [("POST", "/api/explain", {"Origin": "http://evil.example", "Content-Type": "text/plain"}, 403),
               ("POST", "/api/explain", {"Origin": "http://evil.example", "Content-Type": "application/json"}, 403),
               ("POST", "/api/explain", {"Origin": "null", "Content-Type": "application/json"}, 403),
               ("POST", "/api/explain", {"Content-Type": "text/plain"}, 415),
               ("POST", "/api/explain", {}, 415),
               ("POST", "/api/explain", {"Sec-Fetch-Site": "cross-site", "Content-Type": "application/json"}, 403),
               ("GET", "/api/model", {"Host": "attacker.example"}, 403),
               ("GET", "/api/model", {"Host": f"attacker.example:{port}"}, 403),
               ("GET", "/api/images/chelsea.png", {"Host": "rebind.evil.example"}, 403),
               ("GET", "/", {"Host": "attacker.example"}, 403),
               ("GET", "/api/model", {"Origin": f"http://127.0.0.1:{port + 1}"}, 403)]
    for method, path, headers, status in refused:
        r = client.request(method, path, content=body if method == "POST" else None, headers=headers)
        assert r.status_code == status and "\n" not in r.json()["error"], (method, path, headers, r.text)
        assert b"efficientnet" not in r.content and b"chelsea" not in r.content
    allowed = [("POST", "/api/explain", {"Origin": here, "Content-Type": "application/json; charset=utf-8",
                                          "Sec-Fetch-Site": "same-origin"}),
               ("GET", "/api/model", {"Host": f"localhost:{port}"}),
               ("GET", "/api/model", {"Host": f"[::1]:{port}", "Sec-Fetch-Site": "none"})]
    for method, path, headers in allowed:
        r = client.request(method, path, content=body if method == "POST" else None, headers=headers)
        assert r.status_code == 200, (method, path, headers, r.text)


def test_work_and_images_are_bounded_per_request(server):
    client, *_ = server
    heavy = [("integrated-gradients", {"steps": 20000}), ("occlusion", {"box": 1, "stride": 1}),
             ("smoothgrad", {"samples": 5000}), ("reconstruction", {"steps": 2000, "crops": 8})]
    for method, params in heavy:
        start = time.perf_counter()
        r = client.post("/api/explain", json={"name": "chelsea.png", "method": method, "params": params,
                                              "target": 1})
        assert r.status_code == 400 and "--max-passes" in r.json()["error"], (method, r.text)
        assert time.perf_counter() - start < 5, method  # refused before any work
    strip = io.BytesIO()
    Image.new("RGB", (20000, 1)).save(strip, format="PNG")
    r = client.post("/api/explain", json={"image": b64(strip.getvalue()), "method": "gradient"})
    assert r.status_code == 400 and "aspect" in r.json()["error"], r.text
    bomb = io.BytesIO()
    Image.new("1", (12000, 6000)).save(bomb, format="PNG")  # 72 megapixels in a few kB
    r = client.post("/api/explain", json={"image": b64(bomb.getvalue()), "method": "gradient"})
    assert r.status_code == 400 and "megapixels" in r.json()["error"], r.text


def test_work_is_cancelled_when_the_client_goes(server):
    """A client that gives up on a long request (not streamed) does not hold the server: the work stops at
    its next window."""
    _, _, _, port = server
    body = {"name": "chelsea.png", "method": "occlusion", "params": {"box": 4, "stride": 5}}  # 2025 windows
    impatient = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=1.0)
    with pytest.raises(httpx.TimeoutException):
        impatient.post("/api/explain", json=body)
    impatient.close()
    start = time.perf_counter()
    r = httpx.post(f"http://127.0.0.1:{port}/api/explain", json={"name": "chelsea.png", "method": "gradient"},
                   timeout=120)
    took = time.perf_counter() - start
    assert r.status_code == 200 and took < 6, took


def test_no_file_outside_the_images_folder_is_read(server):
    client, *_ = server
    for name in ("..%2Fsecret.txt", "%2E%2E/secret.txt", "link.png", "notes.txt", "%2Fetc%2Fpasswd", "../../etc/passwd",
                 "chelsea.png%00.txt"):
        r = client.get(f"/api/images/{name}")
        assert r.status_code in (400, 404) and b"do not read me" not in r.content and b"root:" not in r.content, name
    for name in ("../secret.txt", "link.png", "/etc/passwd", str(Path(demo_images()[0]).resolve())):
        r = client.post("/api/predict", json={"name": name})
        assert r.status_code == 400 and "no image" in r.json()["error"], name
    assert client.get("/api/images/chelsea.png").status_code == 200


def test_500_requests_from_8_clients(server):
    client, proc, _, port = server
    photo = b64(demo_images()[1])
    image_id = client.post("/api/predict", json={"image": photo}).json()["image_id"]

    def rss():
        return int([line.split()[1] for line in open(f"/proc/{proc.pid}/status") if line.startswith("VmRSS")][0])

    errors, done = [], []

    def worker(k):
        c = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120)
        for i in range(k, 500, 8):
            method = ("gradient", "guided", "lrp-epsilon", "gradcam")[i % 4]
            body = {"image_id": image_id, "method": method, "alpha": round(0.3 + (i % 7) * 0.05, 2),
                    "params": {"epsilon": 10 ** (-2 - (i % 5) * 0.25)} if method == "lrp-epsilon" else {}}
            r = c.post("/api/explain", json=body) if i % 10 else c.post("/api/predict", json={"image": photo})
            (done if r.status_code == 200 else errors).append((i, r.status_code))
    for rnd in range(2):  # the first round fills the caches; the second must not grow beyond them
        before = rss()
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        assert not errors, errors[:5]
        grown = rss() - before
    assert len(done) == 1000 and grown < 40_000, f"resident memory grew by {grown} kB in the second round"


def test_ctrl_c_stops_it_cleanly(tmp_path):
    proc, client, _ = start_server(tmp_path)
    assert client.get("/").status_code == 200 and b"fvgraph" in client.get("/").content
    proc.send_signal(signal.SIGINT)
    code, err = proc.wait(timeout=20), proc.stderr.read()
    assert code == 0 and "Traceback" not in err, (code, err[-2000:])


def _chrome():
    return shutil.which("chromium") and shutil.which("chromedriver")


@pytest.mark.skipif(not _chrome(), reason="needs Debian's chromium and chromium-driver (.ci/run installs them)")
def test_the_page_in_a_real_browser(server, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    _, _, _, port = server
    opts = webdriver.ChromeOptions()
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--window-size=1400,900", "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(a)
    opts.binary_location = shutil.which("chromium")
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)

    def wait(condition, timeout=60):
        end = time.time() + timeout
        while time.time() < end:
            value = condition()
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError("the page did not get there in time")
    try:
        driver.get(f"http://127.0.0.1:{port}/")
        wait(lambda: driver.execute_script("return window.fvTimings.length >= 4"))
        photo = tmp_path / "upload.jpg"
        Image.open(demo_images()[2]).convert("RGB").save(photo)
        driver.find_element(By.ID, "upload").send_keys(str(photo))  # the upload the page offers
        wait(lambda: "missile" in driver.find_element(By.ID, "predictions").text.lower()
             or "projectile" in driver.find_element(By.ID, "predictions").text.lower())
        panel = "document.querySelector('.panel[data-method=\"lrp-epsilon\"]')"
        wait(lambda: driver.execute_script("return !document.querySelector('.panel.busy')"))  # all drawn
        before = driver.execute_script(f"return {panel}.querySelector('img.map').src")
        count = driver.execute_script("return window.fvTimings.length")
        driver.execute_script(f"""const i = {panel}.querySelector('.param[data-name="epsilon"] input');
                                 i.value = -1; i.dispatchEvent(new Event('input'));""")
        wait(lambda: driver.execute_script(
            "return window.fvTimings.slice(arguments[0]).some(t => t.method === 'lrp-epsilon')", count))
        after = driver.execute_script(f"return {panel}.querySelector('img.map').src")
        assert after != before and after.startswith("data:image/png;base64,")
        assert "1e-1" in driver.execute_script(f"return {panel}.querySelector('output').textContent")
        driver.execute_script("document.querySelector('#predictions li:nth-child(2)').click()")
        wait(lambda: "explaining class" in driver.find_element(By.ID, "target-note").text)
        driver.save_screenshot(str(tmp_path / "serve.png"))
        assert Image.open(tmp_path / "serve.png").size[0] >= 1000
        assert not [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    finally:
        driver.quit()


def test_the_concept_atlas_of_the_image_at_a_layer(server):
    """POST /api/concepts: the CRP atlas of the decision at a layer, as fvgraph.methods.concepts.atlas gives it."""
    client, _, images, _ = server
    from fvgraph.image import load_image
    from fvgraph.methods.concepts import atlas
    model = fv.load(DEMO_MODEL)
    layer = [l for l in model.layers if l.op_type == "Clip"][-3].name
    r = client.post("/api/concepts", json={"name": "chelsea.png", "layer": layer, "top": 4})
    assert r.status_code == 200, r.text
    got = r.json()["concepts"]
    x = load_image(images / "chelsea.png", model.preprocessing())
    want = atlas(model, x, "lrp-epsilon", layer, None, 4)
    assert [c["channel"] for c in got] == [int(c) for c in want.channels]
    assert np.allclose([c["share"] for c in got], want.share, rtol=1e-4)
    assert png_of(got[0]["png"]).shape == (224, 224, 3)
    for body, word in (({"name": "chelsea.png"}, "need a layer"),
                       ({"name": "chelsea.png", "layer": layer, "method": "gradcam"}, "reverse-pass method"),
                       ({"name": "chelsea.png", "layer": layer, "top": 0}, "top")):
        r = client.post("/api/concepts", json=body)
        assert r.status_code == 400 and word in r.json()["error"], r.text


def test_the_dataset_view_clusters_the_folder_as_spray_does(server):
    """POST /api/clusters: SpRAy over the --images folder, the clusters fvgraph.methods.spray.clusters finds."""
    client, _, images, _ = server
    from fvgraph.methods.spray import clusters
    r = client.post("/api/clusters", json={"method": "gradient", "target": None})
    assert r.status_code == 200, r.text
    got = r.json()
    model = fv.load(DEMO_MODEL)
    files = sorted(p for p in images.iterdir() if p.suffix == ".png" and not p.is_symlink())
    want = clusters(model, files, None, "gradient", quiet=True, failed={})
    assert sorted(sorted(c["members"]) for c in got["clusters"]) == sorted(sorted(c.members) for c in want.clusters)
    assert png_of(got["embedding"]).ndim == 3
    r = client.post("/api/clusters", json={"method": "gradient", "target": "cat"})
    assert r.status_code == 400 and "target" in r.json()["error"]


def test_a_method_without_partial_maps_streams_its_progress(server):
    """ReciproCAM reports progress without a partial map: the stream carries the progress alone, then the map."""
    client, *_ = server
    body = {"name": "chelsea.png", "method": "reciprocam", "stream": True}
    with client.stream("POST", "/api/explain", json=body) as r:
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert r.status_code == 200 and lines[-1]["done"] and "error" not in lines[-1]
    assert png_of(lines[-1]["png"]).shape == (224, 224, 3)
