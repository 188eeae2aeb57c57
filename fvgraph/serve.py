"""`fvgraph serve`: an interactive view of every method on one model, in the browser (the paper's stated next
step: "interactive real-time visualizations to assist the comparison of different methods and visualize the
influence of different parameters").

The app is a small ASGI application on Starlette (routing, requests, JSON and streaming responses and static
files in one well-kept library with two small dependencies; FastAPI would add validation layers we do not
need), served by uvicorn. The page (fvgraph/static: plain HTML, CSS and JavaScript, no build step, no CDN)
uses the JSON API below, which scripts can use too:

    GET  /api/model      {"name", "inputs", "layers", "classes", "methods", "params", "images"}
    GET  /api/images/N   an image file of the --images folder (only files listed there: never a path)
    POST /api/predict    {"image": base64 PNG/JPEG | "image_id" | "name"} -> {"image_id", "top": [...], "shown"}
    POST /api/concepts   {"image" | "image_id" | "name", "method", "layer", "target", "top"} -> {"concepts":
                          [{"channel", "relevance", "share", "png"}]}: the CRP atlas of the decision at a layer
    POST /api/clusters   {"method", "target"} -> {"clusters": [{"size", "members", "png"}], "embedding"}: SpRAy
                          over the --images folder
    POST /api/explain    {"image" | "image_id" | "name", "method", "params", "target", "layer", "channel",
                          "alpha", "colors", "array", "stream"} -> {"png", "target", "label", "ms", ["npy"]}
                         occlusion and reconstruction with "stream": newline-delimited JSON, progress and the
                         partial map as it grows, the final map last

The methods, their panels' sliders and the options a request may give all come from the method table
(fvgraph.methods.registry), so a panel's map is `fvgraph explain`'s with the same options.

Only same-origin requests are answered (SameOrigin: the Host must be an IP literal, localhost, this machine's
name, the bound host or an --allow-host name, which defeats DNS rebinding; an Origin must equal the page's;
POSTs must be JSON, which a cross-site form cannot send). Uploads go through the command line's safe image
reader; each request's passes are bounded by --max-passes, and its work runs in a Job that is cancelled when
the client goes away.

Errors are HTTP 4xx (or 500) with {"error": "<one line>"}, and the server keeps serving. The model runs on a
worker thread, one request at a time (two cores gain nothing from more); decoded images and explanations are
kept in small LRU caches, so changing only the overlay or the colours re-renders without recomputing, and
memory stays bounded however many requests come.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import math
import os
import queue
import threading
import time
from pathlib import Path

import numpy as np

from .errors import FvGraphError, InputError
from .lru import LRU

STATIC = Path(__file__).parent / "static"
MAX_UPLOAD = 20 << 20
MAX_PASSES = 2048  # forward/reverse passes one request may take (occlusion's windows, IG's steps, ...)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def panel_specs(method) -> list[dict]:
    """What the page offers for a method of the table: a slider per option that has one and a choice per
    option with choices, under the option's own name, range and default (so a panel's map is the command
    line's with the same values)."""
    out = []
    for o in method.options:
        default = o.default if not callable(o.default) and o.default is not None else None
        if o.slider:
            lo, hi, step = o.slider[:3]
            log = len(o.slider) > 3 and o.slider[3] == "log10"
            value = default if default is not None else lo
            if log:
                value = math.log10(value) if value and value > 0 else lo
            elif isinstance(value, tuple):
                value = value[0]
            out.append({"name": o.name, "min": lo, "max": hi, "step": step, "default": value, "log10": log})
        elif o.choices and o.type != "array" or o.type in ("fill", "array"):
            choices = [str(c) for c in o.choices]
            out.append({"name": o.name, "choices": choices,
                        "default": str(default) if str(default) in choices else choices[0]})
    return out


class Cancelled(Exception):
    """The client went away: stop the work."""


class Service:
    """The model and what the API does with it (independent of HTTP, so it is tested directly too)."""

    def __init__(self, model, images_dir=None, max_upload=MAX_UPLOAD, name=None, max_passes=MAX_PASSES):
        from .image import DEMO_MODEL, demo_images
        from .methods.registry import table
        self.model = model
        self.name = name or Path(model.source or "model").name
        self.images_dir = Path(images_dir).resolve() if images_dir else None
        self.demo = images_dir is None and Path(model.source or "") == Path(DEMO_MODEL)
        self.demo_images = {p.name: p for p in demo_images()} if self.demo else {}
        self.max_upload = max_upload
        self.max_passes = max_passes
        self.lock = threading.Lock()
        self.images = LRU(32)        # image_id -> (x, shown picture)
        self.results = LRU(64)       # request key -> relevance (re-rendering needs no recomputation)
        self.table = table()
        self.methods = list(self.table)
        self.spec = model.preprocessing()
        self._shaped = False
        self.stopping = threading.Event()

    def warm_up(self, methods=("gradient", "guided", "lrp-epsilon", "gradcam")):
        """Build the default panels' graphs and sessions before the first click (a few hundred ms each)."""
        from .image import input_shape
        try:
            x = np.zeros(input_shape(self.model), np.float32)
            for m in methods:
                if self.stopping.is_set():
                    return
                with self.lock:
                    self.model.explain(x, m)
        except FvGraphError:
            pass  # the first request will say what is wrong

    # ------------------------------------------------------------------ what the page needs
    def describe(self) -> dict:
        if not self._shaped:
            try:
                self.model.concrete_shapes()
            except FvGraphError:
                pass  # the layer list still names every layer
            self._shaped = True
        layers = [{"index": l.index, "name": l.name, "op": l.op_type,
                   "shape": [d if isinstance(d, int) else "N" for d in (l.shape or ())]} for l in self.model.layers]
        return {"name": self.name, "source": self.model.source,
                "inputs": [{"name": v.name, "shape": [d if isinstance(d, int) else str(d) for d in (v.shape or ())]}
                           for v in self.model.inputs],
                "layers": layers, "classes": self.model.class_names(), "methods": self.methods,
                "params": {k: panel_specs(m) for k, m in self.table.items()},
                "draws_at_layer": [k for k, m in self.table.items() if m.layer],
                "streams": [k for k, m in self.table.items() if m.streams],
                "images": self.list_images(), "examples": self.images_dir is not None}

    def list_images(self) -> list[str]:
        if self.images_dir is None:
            return sorted(self.demo_images)
        try:
            return sorted(e.name for e in os.scandir(self.images_dir)
                          if e.is_file(follow_symlinks=False) and e.name.lower().endswith(IMAGE_SUFFIXES))
        except OSError:
            return []

    def image_path(self, name) -> Path:
        """A file of the images folder by its listed name: never a path, never outside the folder."""
        if not isinstance(name, str) or name not in self.list_images():
            raise InputError(f"no image {name!r} in the images folder")
        if self.images_dir is None:
            return self.demo_images[name]
        path = (self.images_dir / name).resolve()
        if path.parent != self.images_dir or not path.is_file():
            raise InputError(f"no image {name!r} in the images folder")
        return path

    # ------------------------------------------------------------------ images
    def decode(self, data: bytes):
        """An upload as uint8 RGB: the size, the pixel count and the aspect ratio are checked before decoding
        (image.read_rgb, the limits every command uses)."""
        from .image import read_rgb
        if len(data) > self.max_upload:
            raise TooLarge(f"the image is {len(data) / 2**20:.1f} MB; the limit is {self.max_upload / 2**20:.0f} MB")
        return read_rgb(data, name="the upload")

    def image(self, body: dict):
        """(image_id, x, shown) from an upload (base64), an id of an earlier one, or a listed file."""
        from .image import resize_crop, to_input
        for field in ("image_id", "name"):
            if body.get(field) is not None and not isinstance(body[field], str):
                raise InputError(f"{field} must be a string")
        if body.get("image_id") in self.images:
            x, shown = self.images[body["image_id"]]
            return body["image_id"], x, shown
        if body.get("image") is not None:
            text = body["image"]
            if not isinstance(text, str):
                raise InputError("image must be a base64 string")
            if "," in text[:100] and text.startswith("data:"):
                text = text.split(",", 1)[1]
            if len(text) > self.max_upload * 4 // 3 + 4:
                raise TooLarge(f"the image is over the {self.max_upload / 2**20:.0f} MB limit")
            try:
                data = base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError):
                raise InputError("image is not valid base64") from None
        elif body.get("name") is not None:
            data = self.image_path(body["name"]).read_bytes()
        elif body.get("image_id") is not None:
            raise InputError("unknown image_id (the server forgot it): send the image again")
        else:
            raise InputError("send an image: {\"image\": base64} or {\"name\": a listed image} or {\"image_id\"}")
        key = hashlib.sha1(data).hexdigest()[:16]
        if key not in self.images:
            shown = resize_crop(self.decode(data), self.spec)
            self.images.put(key, (to_input(shown, self.spec), shown))
        x, shown = self.images[key]
        return key, x, shown

    # ------------------------------------------------------------------ the API's work
    def predict(self, body: dict) -> dict:
        from .methods.attribution import prediction, top_classes
        image_id, x, shown = self.image(body)
        with self.lock:
            logits = self.model.run(x)[0]
        top = top_classes(self.model, logits, 5) or [prediction(self.model, logits)]
        return {"image_id": image_id, "top": [{"class": c, "label": label, "p": p} for c, label, p in top],
                "shown": png64(shown)}

    def explain(self, body: dict, progress=None) -> dict:
        """One map as a PNG (and optionally the array as .npy). progress(done, total, picture) hears
        occlusion's and reconstruction's growing results."""
        from .render import KINDS
        start = time.perf_counter()
        method = body.get("method", "gradient")
        if not isinstance(method, str) or method not in self.methods:
            raise InputError(f"unknown method {method!r}: use one of {', '.join(self.methods)}")
        m = self.table[method]
        params = self.checked_params(m, body.get("params"))
        target, layer, channel = body.get("target"), body.get("layer") or None, body.get("channel")
        if layer is not None and not isinstance(layer, str):
            raise InputError(f"layer must be a layer name or null, got {layer!r}")
        if body.get("colors") is not None and body["colors"] not in KINDS:
            raise InputError(f"colors must be one of {', '.join(KINDS)}, got {body['colors']!r}")
        if target is not None and (not isinstance(target, int) or isinstance(target, bool)):
            raise InputError(f"target must be a class index or null, got {target!r}")
        if channel is not None and (not isinstance(channel, int) or isinstance(channel, bool)):
            raise InputError(f"channel must be an integer or null, got {channel!r}")
        alpha = _number(body.get("alpha", 0.5), "alpha", 0, 1)
        kind = body.get("colors") or m.kind
        image_id, x, shown = self.image(body)
        self.check_work(m, params, x.shape)
        key = json.dumps([image_id, method, params, target, layer, channel], sort_keys=True, default=str)
        rel = self.results.get(key)
        info = {}
        if rel is None:
            def partial_picture(done, total, partial):
                if progress is not None:  # a method without a partial map (ReciproCAM's) reports its progress only
                    progress(done, total, None if partial is None else
                             lambda: self._render(m, partial()[0], kind, shown, alpha))
            with self.lock:
                rel, info = self._compute(m, x, params, target, layer, channel, partial_picture)
            self.results.put(key, (rel, info))
        else:
            rel, info = rel
        out = {"png": png64(self._render(m, rel, kind, shown, alpha)), **info,
               "ms": round((time.perf_counter() - start) * 1000, 1)}
        if body.get("array"):
            buf = io.BytesIO()
            np.save(buf, rel)
            out["npy"] = base64.b64encode(buf.getvalue()).decode()
        return out

    def checked_params(self, method, params) -> dict:
        """The request's options, an object of numbers and strings, checked by the method's table entry (one
        OptionError line naming the valid options and ranges, as the command line and the API say)."""
        params = params or {}
        if not isinstance(params, dict):
            raise InputError("params must be an object")
        for name, value in params.items():
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise InputError(f"{name} must be a number or a string, got {value!r}")
        return method.check(method.parse(params))

    def check_work(self, method, options, shape):
        """One request's forward/reverse passes stay under the server's budget (--max-passes): the server
        runs one request at a time, so one huge request would block everybody."""
        passes = method.passes_for(options, shape)
        if passes > self.max_passes:
            raise InputError(f"{method.name} with these parameters takes {passes} passes; this server allows "
                             f"{self.max_passes} per request (fvgraph serve --max-passes)")

    def _render(self, method, rel, kind, shown, alpha):
        from .image import to_display
        from .render import picture
        if method.kind == "image":
            return to_display(rel, self.spec)
        return picture(rel, kind, image=shown, alpha=alpha)

    def _compute(self, method, x, options, target, layer, channel, progress):
        """The method as `fvgraph explain` runs it (fvgraph.methods.registry.place_layer): a layer without a
        channel is where a CAM is drawn; a layer with a channel is a unit, the target of every method."""
        from .methods.registry import place_layer
        names = self.model.class_names()
        label = lambda c: names[c] if names and c is not None and 0 <= c < len(names) else str(c)  # noqa: E731
        if method.kind == "image" and target is None and not (layer and channel is not None):
            raise InputError("reconstruction needs a class: click a prediction or search a class")
        unit = bool(layer) and channel is not None
        if layer and not unit and not method.layer:
            layer = None  # the page's layer is for the CAMs and, with a channel, units; other panels keep the class
        tgt, extra = place_layer(method, None if unit else target, layer or None, channel if unit else None)
        if extra:
            options = {**options, "layer": method.option("layer").check(extra["layer"], method.name)}
        e = self.model.explain(x, method, target=tgt, progress=progress, **options)
        if method.kind == "image":
            return e.relevance[0], {"target": target, "label": label(target)}
        used = e.target[0] if isinstance(e.target, np.ndarray) and e.target.size else None
        used = int(used) if used is not None else None
        return e.relevance[0], {"target": used, "label": label(used) if used is not None else str(e.target)}

    def examples(self, body: dict) -> dict:
        """A unit's dataset examples among the served images (--images): the top patches, best first."""
        from .image import read_rgb, resize_crop
        from .methods.examples import top_examples
        if self.images_dir is None:
            raise InputError("dataset examples need a folder of images: fvgraph serve MODEL --images DIR")
        layer, channel = body.get("layer"), body.get("channel")
        if not layer or not isinstance(channel, int) or isinstance(channel, bool):
            raise InputError("examples need a layer and a channel")
        k = _int(body.get("k", 6), "k", 1, 32)
        key = json.dumps(["examples", layer, channel, k, self.list_images()])
        cached = self.results.get(key)
        if cached is None:
            files = [self.images_dir / n for n in self.list_images()]
            with self.lock:
                ex = top_examples(self.model, files, layer, [channel], k, quiet=True)[channel]
            cached = [{"image": Path(e.image).name, "score": e.score, "box": e.box,
                       "png": png64(_crop(resize_crop(read_rgb(e.image), self.spec), e.box))} for e in ex]
            self.results.put(key, cached)
        return {"layer": layer, "channel": channel, "examples": cached}


    def concepts(self, body: dict) -> dict:
        """The concept atlas of the image's decision at a layer (CRP): the top channels by relevance, each with
        its share and its conditional heatmap over the image; a channel's examples come from /api/examples."""
        from .methods.concepts import atlas
        method = body.get("method", "lrp-epsilon")
        m = self.table.get(method) if isinstance(method, str) else None
        if m is None or m.option("concept") is None:
            rules = [k for k, v in self.table.items() if v.option("concept")]
            raise InputError(f"concepts take a reverse-pass method: one of {', '.join(rules)}")
        layer, target = body.get("layer"), body.get("target")
        if not layer or not isinstance(layer, str):
            raise InputError("concepts need a layer: choose one (its channels are the concepts)")
        if target is not None and (not isinstance(target, int) or isinstance(target, bool)):
            raise InputError(f"target must be a class index or null, got {target!r}")
        top = _int(body.get("top", 6), "top", 1, 32)
        alpha = _number(body.get("alpha", 0.5), "alpha", 0, 1)
        image_id, x, shown = self.image(body)
        key = json.dumps(["concepts", image_id, method, layer, target, top])
        found = self.results.get(key)
        if found is None:
            with self.lock:
                found = atlas(self.model, x, method, layer, target, top)
            self.results.put(key, found)
        from .render import picture
        return {"layer": layer, "method": method, "total": float(found.total),
                "concepts": [{"channel": int(c), "relevance": float(r), "share": float(sh),
                              "png": png64(picture(found.maps[k], "heat", image=shown, alpha=alpha))}
                             for k, (c, r, sh) in enumerate(zip(found.channels, found.relevance, found.share))]}


    def clusters(self, body: dict) -> dict:
        """SpRAy over the served images (--images): the explanations of one class clustered; per cluster its
        size, members and the picture of its mean map and typical members, and the embedding of all maps."""
        from .methods.spray import cluster_picture, clusters, embedding_picture
        if self.images_dir is None:
            raise InputError("clusters need a folder of images: fvgraph serve MODEL --images DIR")
        method = body.get("method", "lrp-epsilon")
        if not isinstance(method, str) or method not in self.table:
            raise InputError(f"unknown method {method!r}: use one of {', '.join(self.methods)}")
        target = body.get("target")
        if target is not None and (not isinstance(target, int) or isinstance(target, bool)):
            raise InputError(f"target must be a class index or null, got {target!r}")
        files = [self.images_dir / n for n in self.list_images()]
        passes = len(files) * self.table[method].passes_for(self.table[method].check({}), (1, 3, 224, 224))
        if passes > self.max_passes:
            raise InputError(f"clustering {len(files)} images with {method} takes {passes} passes; this server "
                             f"allows {self.max_passes} per request (fvgraph serve --max-passes, or fvgraph "
                             "clusters from the command line)")
        key = json.dumps(["clusters", method, target, self.list_images()])
        found = self.results.get(key)
        if found is None:
            with self.lock:
                found = clusters(self.model, files, target, method, quiet=True, failed={})
            self.results.put(key, found)
        return {"method": method, "target": target, "images": len(found.names),
                "embedding": png64(embedding_picture(found)),
                "clusters": [{"size": c.size, "members": list(c.members), "png": png64(cluster_picture(found, c))}
                             for c in found.clusters]}


def _crop(rgb, box):
    y0, x0, y1, x1 = box
    return np.ascontiguousarray(rgb[y0:y1, x0:x1])


class TooLarge(InputError):
    """An upload over the size limit (HTTP 413)."""


def png64(rgb) -> str:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(np.asarray(rgb, np.uint8)).save(buf, format="PNG", compress_level=1)
    return base64.b64encode(buf.getvalue()).decode()


def _number(v, name, lo, hi) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, got {v!r}") from None
    if not lo <= f <= hi:
        raise InputError(f"{name} must be between {lo} and {hi}, got {f}")
    return f


def _int(v, name, lo, hi) -> int:
    f = _number(v, name, lo, hi)
    if f != int(f):
        raise InputError(f"{name} must be an integer, got {v!r}")
    return int(f)


# ---------------------------------------------------------------------------------------------- HTTP
class Job:
    """One explanation on a worker thread, its progress as events; the client going away cancels it (at the
    next progress report: occlusion's windows, reconstruction's steps), streamed or not."""

    def __init__(self, service: Service, body: dict, stream: bool):
        self.service, self.body, self.stream = service, body, stream
        self.queue: queue.Queue = queue.Queue()
        self.cancel = threading.Event()
        self.last = 0.0

    def progress(self, done, total, partial_png):
        if self.cancel.is_set():
            raise Cancelled()
        now = time.perf_counter()
        if self.stream and (now - self.last > 0.25 or done == total):  # a picture four times a second at most
            self.last = now
            self.queue.put({"progress": done / max(total, 1),
                            **({} if partial_png is None else {"png": png64(partial_png())})})

    def work(self):
        try:
            self.queue.put({"done": True, **self.service.explain(self.body, self.progress)})
        except Cancelled:
            self.queue.put(None)
        except TooLarge as e:
            self.queue.put({"error": str(e), "status": 413})
        except FvGraphError as e:
            self.queue.put({"error": str(e).splitlines()[0] if str(e) else "error", "status": 400})
        except Exception as e:  # the server keeps serving
            self.queue.put({"error": f"internal error: {type(e).__name__}: {e}", "status": 500})

    async def events(self, request):
        """Progress events, then the final answer (or an error); nothing more once the client is gone."""
        import anyio
        threading.Thread(target=self.work, daemon=True).start()
        try:
            while True:
                try:
                    item = await anyio.to_thread.run_sync(lambda: self.queue.get(timeout=0.2))
                except queue.Empty:
                    if await request.is_disconnected():
                        return
                    continue
                if item is None:
                    return
                yield item
                if item.get("done") or "error" in item:
                    return
        finally:
            self.cancel.set()

    async def lines(self, request):
        async for item in self.events(request):
            yield json.dumps(item) + "\n"


class SameOrigin:
    """ASGI middleware: only this server's own pages and local scripts get answers.

    - Host must name this server: an IP address (DNS rebinding needs a name), localhost, this machine's name
      or a name given with --allow-host; a page on attacker.example whose name was re-pointed at 127.0.0.1
      is refused.
    - Origin, when a browser sends one, must be this very server (scheme, host and port).
    - Sec-Fetch-Site, when sent, must be same-origin or none for the API (a cross-site page cannot even
      start work).
    - POSTs must say Content-Type: application/json, which a cross-origin page cannot send without a CORS
      preflight, and this server answers none.
    """

    def __init__(self, app, allowed_hosts=()):
        import socket
        self.app = app
        self.names = {"localhost", socket.gethostname().lower(), *(h.lower() for h in allowed_hosts)}

    def refusal(self, scope) -> tuple[int, str] | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
        host = headers.get("host", "")
        name = _host_name(host)
        if not name or not (_is_ip(name) or name in self.names or name.endswith(".localhost")):
            return 403, f"this server does not answer for the host {host!r} (fvgraph serve --allow-host NAME)"
        origin = headers.get("origin")
        if origin is not None and origin.lower() != f"{scope.get('scheme', 'http')}://{host}".lower():
            return 403, f"cross-origin requests are refused (origin {origin!r})"
        api = scope["path"].startswith("/api/")
        if api and headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            return 403, "cross-site requests are refused"
        if scope.get("method") == "POST":
            kind = headers.get("content-type", "").split(";")[0].strip().lower()
            if kind != "application/json":
                return 415, "send the request body as JSON (Content-Type: application/json)"
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            refused = self.refusal(scope)
            if refused is not None:
                from starlette.responses import JSONResponse
                await JSONResponse({"error": refused[1]}, refused[0])(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _host_name(host: str) -> str:
    """The name or address of a Host header, without the port ("[::1]:8000" -> "::1")."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.index("]")] if "]" in host else ""
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _is_ip(name: str) -> bool:
    import ipaddress
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def app(service: Service, allowed_hosts=()):
    """The Starlette application over a Service, answering same-origin requests only (SameOrigin)."""
    import anyio
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import FileResponse, JSONResponse, StreamingResponse
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    def error(status, message):
        return JSONResponse({"error": str(message).splitlines()[0][:500] if str(message) else "error"}, status)

    async def body_of(request: Request) -> dict:
        size = request.headers.get("content-length")
        limit = service.max_upload * 4 // 3 + 65536
        if size is not None and size.isdigit() and int(size) > limit:
            raise TooLarge(f"the request is {int(size) / 2**20:.1f} MB; uploads are limited to "
                           f"{service.max_upload / 2**20:.0f} MB")
        data = bytearray()
        async for chunk in request.stream():
            data += chunk
            if len(data) > limit:
                raise TooLarge(f"uploads are limited to {service.max_upload / 2**20:.0f} MB")
        try:
            body = json.loads(bytes(data) or b"{}")
        except ValueError:
            raise InputError("the request body is not JSON") from None
        if not isinstance(body, dict):
            raise InputError("the request body must be a JSON object")
        return body

    def guarded(handler):
        async def wrapped(request):
            try:
                return await handler(request)
            except TooLarge as e:
                return error(413, e)
            except FvGraphError as e:
                return error(400, e)
            except HTTPException:
                raise
            except Exception as e:  # the server keeps serving
                return error(500, f"internal error: {type(e).__name__}: {e}")
        return wrapped

    async def index(request):
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    async def model_info(request):
        return JSONResponse(await anyio.to_thread.run_sync(service.describe))

    async def image_file(request):
        path = service.image_path(request.path_params["name"])
        return FileResponse(path)

    def answer(work):
        """A POST whose JSON body goes to one of the service's calls, run on a worker thread."""
        async def handler(request):
            body = await body_of(request)
            return JSONResponse(await anyio.to_thread.run_sync(work, body))
        return handler

    predict, examples, clusters, concepts = (answer(service.predict), answer(service.examples),
                                             answer(service.clusters), answer(service.concepts))

    async def explain(request):
        body = await body_of(request)
        job = Job(service, body, stream=bool(body.get("stream")))
        if body.get("stream"):
            return StreamingResponse(job.lines(request), media_type="application/x-ndjson")
        final = None
        async for item in job.events(request):
            final = item
        if final is None:  # the client went away: nobody reads the answer
            return error(499, "the client went away")
        if "error" in final:
            return error(final["status"], final["error"])
        final.pop("done", None)
        return JSONResponse(final)

    async def not_found(request, exc):
        return error(exc.status_code, exc.detail if exc.status_code != 404 else f"no such page: {request.url.path}")

    routes = [Route("/", index), Route("/api/model", guarded(model_info)),
              Route("/api/images/{name:path}", guarded(image_file)),
              Route("/api/predict", guarded(predict), methods=["POST"]),
              Route("/api/explain", guarded(explain), methods=["POST"]),
              Route("/api/examples", guarded(examples), methods=["POST"]),
              Route("/api/concepts", guarded(concepts), methods=["POST"]),
              Route("/api/clusters", guarded(clusters), methods=["POST"]),
              Mount("/static", StaticFiles(directory=STATIC), name="static")]
    return SameOrigin(Starlette(routes=routes, exception_handlers={HTTPException: not_found}), allowed_hosts)


def serve(model, images_dir=None, host="127.0.0.1", port=8000, quiet=False, max_upload=MAX_UPLOAD,
          max_passes=MAX_PASSES, allowed_hosts=()):
    """Run the app until Ctrl-C."""
    import uvicorn
    if images_dir is not None and not Path(images_dir).is_dir():
        raise InputError(f"{images_dir}: not a folder of images")
    service = Service(model, images_dir, max_upload, max_passes=max_passes)
    warm = threading.Thread(target=service.warm_up, daemon=True)
    warm.start()
    if not quiet:
        print(f"fvgraph: serving {service.name} at http://{host}:{port}/ (Ctrl-C to stop)", flush=True)
    config = uvicorn.Config(app(service, (host, *allowed_hosts)), host=host, port=port, log_level="warning" if quiet else "info",
                            access_log=False)
    server = uvicorn.Server(config)
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn shuts down gracefully, then re-raises the signal it caught
        pass
    except OSError as e:
        raise InputError(f"cannot serve on {host}:{port}: {e.strerror or e}") from None
    finally:  # no thread may be inside onnxruntime when the interpreter goes
        service.stopping.set()
        warm.join()
        with service.lock:
            pass
    if not quiet:
        print("fvgraph: stopped", flush=True)
    return 0
