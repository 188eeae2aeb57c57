"""One-off check of fvgraph on today's architectures as timm builds them (random weights, no download), exported
by torch.onnx: forward against onnxruntime, the input gradient against PyTorch's, and finite non-zero maps for
guided backprop, LRP-epsilon and Grad-CAM. Not part of the suite (it needs PyTorch and timm):

    python -m venv /tmp/tvenv && /tmp/tvenv/bin/pip install torch==2.13.0 timm onnx onnxruntime onnxscript
    PYTHONPATH=. /tmp/tvenv/bin/python tools/timm_zoo.py [--only NAME ...] [--out zoo.json]

(The registry's torchvision is a CUDA build whose C ops do not load beside the CPU torch; its fake-kernel
registrations are skipped while timm imports it, which is all timm needs of it here.)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback

import numpy as np

ZOO = [  # (timm name, opset): small members of each family; opsets spread over 11..20
    ("resnet18", 17), ("resnet50d", 13), ("vgg11", 11), ("densenet121", 13), ("efficientnet_b0", 17),
    ("tf_efficientnet_lite0", 13), ("mobilenetv2_100", 11), ("mobilenetv3_small_100", 17),
    ("mobilenetv4_conv_small", 18), ("regnety_002", 13), ("ghostnet_100", 13), ("mixnet_s", 13), ("dla34", 13),
    ("hrnet_w18_small", 13), ("inception_v3", 13), ("repvgg_a0", 13), ("rexnet_100", 13), ("lcnet_050", 13),
    ("cspresnet50", 13), ("res2net50_14w_8s", 13), ("resnest14d", 13), ("selecsls42b", 13), ("convnext_atto", 17),
    ("convnextv2_atto", 17), ("vit_tiny_patch16_224", 17), ("deit_tiny_patch16_224", 14),
    ("swin_tiny_patch4_window7_224", 17), ("coatnet_nano_rw_224", 17), ("efficientformer_l1", 17),
    ("efficientvit_b0", 17), ("mambaout_femto", 17), ("mobilevit_xxs", 17), ("poolformer_s12", 17),
    ("tiny_vit_5m_224", 17), ("edgenext_xx_small", 17), ("levit_128s", 17), ("fastvit_t8", 17),
    ("repvit_m0_9", 17), ("caformer_s18", 17), ("vit_small_patch16_224", 20),
]


def import_timm():
    import torch
    import torch.library
    orig = torch.library.register_fake

    def skip_torchvision(name, *a, **k):
        if isinstance(name, str) and name.startswith("torchvision::"):
            return lambda f: f
        return orig(name, *a, **k)
    torch.library.register_fake = skip_torchvision
    try:
        import timm
    finally:
        torch.library.register_fake = orig
    return timm


def rel(a, b):
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / max(np.linalg.norm(b), 1e-30))


def check(name, opset, folder):
    import onnxruntime as ort
    import torch
    import fvgraph as fv
    timm = import_timm()
    torch.manual_seed(0)
    net = timm.create_model(name, pretrained=False).eval()
    size = net.pretrained_cfg.get("input_size", (3, 224, 224))
    x = torch.randn((1,) + tuple(size))
    path = os.path.join(folder, f"{name}.onnx")
    torch.onnx.export(net, (x,), path, opset_version=opset, dynamo=False, input_names=["input"],
                      output_names=["logits"])
    out = {"model": name, "opset": opset, "input": list(size)}
    t0 = time.perf_counter()
    model = fv.load(path)
    out["load_s"] = round(time.perf_counter() - t0, 2)
    xn = x.numpy()
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    ref = sess.run(None, {"input": xn})[0]
    out["forward_vs_ort"] = rel(model.run(xn), ref)
    k = int(ref[0].argmax())
    xt = x.clone().requires_grad_(True)
    net(xt)[0, k].backward()
    g = fv.load(path).explain(xn, "gradient", target=k).relevance
    out["gradient_vs_torch"] = rel(g, xt.grad.numpy())
    # a directional derivative in float32 (the gradient of a random net can be tiny: torch and fvgraph then
    # differ in rounding only, which this tells apart from a wrong VJP)
    d = np.random.default_rng(1).standard_normal(xn.shape).astype(np.float32)
    h = 1e-2
    fd = (float(model.run(xn + h * d)[0, k]) - float(model.run(xn - h * d)[0, k])) / (2 * h)
    out["directional_fd_vs_vjp"] = [fd, float(np.sum(g * d))]
    for method in ("guided", "lrp-epsilon", "gradcam", "rollout"):
        try:
            r = model.explain(xn, method, target=None if method == "rollout" else k).relevance
            out[method] = "ok" if np.all(np.isfinite(r)) and np.abs(r).sum() > 0 else "zero or not finite"
        except Exception as e:  # noqa: BLE001 -- the report says what failed
            out[method] = f"{type(e).__name__}: {str(e)[:300]}"
    import subprocess
    photo = os.path.join(os.path.dirname(fv.__file__), "data", "chelsea.png")
    cli = subprocess.run([sys.executable, "-m", "fvgraph", "explain", path, photo, "-m", "guided,gradcam",
                          "--out", os.path.join(folder, "maps"), "-q"], capture_output=True, text=True)
    out["cli_on_a_photo"] = "ok" if cli.returncode == 0 else cli.stderr.strip()[-300:]
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--out", default="zoo.json")
    args = ap.parse_args()
    import torch
    torch.set_num_threads(2)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name, opset in ZOO:
            if args.only and name not in args.only:
                continue
            try:
                row = check(name, opset, folder)
            except Exception as e:  # noqa: BLE001
                row = {"model": name, "opset": opset, "error": f"{type(e).__name__}: {str(e)[:400]}",
                       "where": traceback.format_exc().splitlines()[-3][:200]}
            rows.append(row)
            print(json.dumps(row), flush=True)
            import shutil
            shutil.rmtree(folder, ignore_errors=True)
            os.makedirs(folder, exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=1)
    ok = sum(1 for r in rows if "error" not in r and r["forward_vs_ort"] < 1e-4 and r["gradient_vs_torch"] < 1e-3
             and all(r[m] == "ok" for m in ("guided", "lrp-epsilon", "gradcam")) and r["cli_on_a_photo"] == "ok")
    print(f"{ok} of {len(rows)} fully explained", file=sys.stderr)


if __name__ == "__main__":
    main()
