"""`fvgraph serve` in real time: one /api/explain end to end (request sent -> PNG received) for gradient,
guided, lrp-epsilon and gradcam on the embedded EfficientNet-Lite0 (each request for another class, and for
LRP another epsilon, so nothing is served from the cache), and, in headless Chromium, a slider change -> the
new map drawn.

    python benchmarks/serve.py [--threads 2] [--requests 30] [--screenshot docs/serve.png]
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import time

from common import ROOT, arguments, write_json

TARGETS = {"api": 100.0, "browser": 200.0}


def main():
    args = arguments(__doc__, "serve", requests=30, port=8931, screenshot=None)
    import httpx
    import numpy as np
    proc = subprocess.Popen([sys.executable, "-m", "fvgraph", "serve", "--port", str(args.port), "--quiet",
                             "--threads", str(args.threads)], cwd=ROOT)
    client = httpx.Client(base_url=f"http://127.0.0.1:{args.port}", timeout=60)
    rows = []
    try:
        for _ in range(200):
            try:
                if client.get("/api/model").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        image = client.post("/api/predict", json={"name": "chelsea.png"}).json()["image_id"]
        for method in ("gradient", "guided", "lrp-epsilon", "gradcam"):
            client.post("/api/explain", json={"image_id": image, "method": method})  # build it once
            times = []
            for i in range(args.requests):
                params = {"epsilon": 10 ** (-3 - i * 0.01)} if method == "lrp-epsilon" else {}
                body = {"image_id": image, "method": method, "params": params, "target": 100 + i}
                start = time.perf_counter()
                r = client.post("/api/explain", json=body)
                times.append((time.perf_counter() - start) * 1e3)
                assert r.status_code == 200, r.text
            rows.append(dict(what=f"/api/explain {method}", ms=float(np.median(times)), target=TARGETS["api"]))
        if shutil.which("chromium") and shutil.which("chromedriver"):
            rows.append(dict(what="browser: epsilon slider -> map drawn", ms=browser(args), target=TARGETS["browser"]))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print(f"fvgraph serve, embedded EfficientNet-Lite0, threads={args.threads}, medians of {args.requests}")
    for r in rows:
        print(f"{r['what']:<40} {r['ms']:>8.1f} ms   (target <= {r['target']:.0f} ms)")
    write_json(args.json, {"threads": args.threads, "rows": rows})


def browser(args) -> float:
    import numpy as np
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--window-size=1400,820", "--disable-dev-shm-usage"):
        opts.add_argument(a)
    opts.binary_location = shutil.which("chromium")
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    try:
        driver.get(f"http://127.0.0.1:{args.port}/")
        end = time.time() + 120
        while driver.execute_script("return window.fvTimings.length") < 4 and time.time() < end:
            time.sleep(0.1)
        panel = "document.querySelector('.panel[data-method=\"lrp-epsilon\"]')"
        times = []
        for i in range(args.requests):
            count = driver.execute_script("return window.fvTimings.length")
            driver.execute_script(f"""const s = {panel}.querySelector('.param[data-name="epsilon"] input');
                window.__t0 = performance.now(); s.value = arguments[0]; s.dispatchEvent(new Event('input'));""",
                                  -1.5 - (i % 12) * 0.25)
            while not driver.execute_script("return window.fvTimings.slice(arguments[0])"
                                            ".some(t => t.method === 'lrp-epsilon')", count):
                time.sleep(0.005)
            times.append(driver.execute_script("return window.fvTimings.slice(arguments[0]).find("
                                               "t => t.method === 'lrp-epsilon').drawn - window.__t0", count))
        if args.screenshot:
            driver.save_screenshot(args.screenshot)
        return float(np.median(times))
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
