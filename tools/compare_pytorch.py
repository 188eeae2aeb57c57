"""One-off: fvgraph against Captum's GuidedBackprop and Zennit's epsilon LRP on the same ResNet-18 (CPU).

Not part of the package or the tests; needs PyTorch, captum and zennit:

    pip install torch==2.13.0 captum zennit
    python tools/compare_pytorch.py [--threads 2] [--repeats 10]

Builds ResNet-18 in PyTorch (seeded weights, eval mode), exports it to ONNX, and times, in one run with
the same thread count: onnxruntime forward, PyTorch forward + backward, Captum GuidedBackprop, Zennit
EpsilonComposite, and fvgraph's guided and lrp-epsilon. Also checks that fvgraph's guided map equals
Captum's (they implement the same rule).
"""
from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from common import timings  # noqa: E402  (the benchmarks' timing loop)


def resnet18():
    import torch.nn as nn

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.b1 = nn.BatchNorm2d(cout)
            self.r1 = nn.ReLU()
            self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.b2 = nn.BatchNorm2d(cout)
            self.down = None if stride == 1 and cin == cout else nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            self.r2 = nn.ReLU()

        def forward(self, x):
            y = self.b2(self.c2(self.r1(self.b1(self.c1(x)))))
            return self.r2(y + (x if self.down is None else self.down(x)))

    layers = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [Block(cin, cout, stride), Block(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 1000)]
    return nn.Sequential(*layers)


def med(fn, repeats):
    import numpy as np
    return float(np.median(timings(fn, repeats))) * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    import numpy as np
    import onnxruntime as ort
    import torch
    from captum.attr import GuidedBackprop, IntegratedGradients
    from zennit.attribution import Gradient
    from zennit.composites import LayerMapComposite
    from zennit.rules import Epsilon, Norm, Pass

    import fvgraph as fv

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    net = resnet18().eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    x = torch.randn(1, 3, 224, 224)
    buf = io.BytesIO()
    torch.onnx.export(net, x, buf, opset_version=13, input_names=["input"], dynamo=False)
    model = fv.load(buf.getvalue())
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    sess = ort.InferenceSession(buf.getvalue(), so, providers=["CPUExecutionProvider"])
    xn = x.numpy()
    target = int(net(x).argmax())

    gbp = GuidedBackprop(net)
    composite = LayerMapComposite([(torch.nn.ReLU, Pass()), (torch.nn.Conv2d, Epsilon(1e-3)),
                                   (torch.nn.Linear, Epsilon(1e-3)), (torch.nn.AdaptiveAvgPool2d, Norm())])

    def zennit_lrp():
        with Gradient(model=net, composite=composite) as attributor:
            return attributor(x, torch.eye(1000)[[target]])[1]

    def torch_fwd_bwd():
        xx = x.clone().requires_grad_(True)
        net(xx)[0, target].backward()

    ig = IntegratedGradients(net)
    captum_ig = ig.attribute(x, target=target, n_steps=32, method="gausslegendre", internal_batch_size=32)
    fv_ig = model.explain(xn, "integrated-gradients", target=target, steps=32).relevance
    ig_agree = float(np.linalg.norm(fv_ig - captum_ig.detach().numpy()) / np.linalg.norm(captum_ig.detach().numpy()))
    net64 = resnet18().eval()  # the same settings in float64: the algorithms alone, without float32 rounding
    net64.load_state_dict(net.state_dict())
    net64 = net64.double()
    buf64 = io.BytesIO()
    torch.onnx.export(net64, x.double(), buf64, opset_version=13, input_names=["input"], dynamo=False)
    captum_ig64 = IntegratedGradients(net64).attribute(x.double(), target=target, n_steps=32, method="gausslegendre",
                                                       internal_batch_size=32).detach().numpy()
    fv_ig64 = fv.load(buf64.getvalue(), engine="numpy").explain(xn.astype(np.float64), "integrated-gradients",
                                                                target=target, steps=32).relevance
    ig64_agree = float(np.linalg.norm(fv_ig64 - captum_ig64) / np.linalg.norm(captum_ig64))
    captum_map = gbp.attribute(x, target=target).detach().numpy()
    fv_map = model.explain(xn, "guided", target=target).relevance
    agree = float(np.linalg.norm(fv_map - captum_map) / np.linalg.norm(captum_map))
    rows = [("onnxruntime forward", med(lambda: sess.run(None, {"input": xn}), args.repeats)),
            ("PyTorch forward+backward", med(torch_fwd_bwd, args.repeats)),
            ("Captum GuidedBackprop", med(lambda: gbp.attribute(x, target=target), args.repeats)),
            ("fvgraph guided", med(lambda: model.explain(xn, "guided", target=target), args.repeats)),
            ("Zennit epsilon LRP", med(zennit_lrp, args.repeats)),
            ("fvgraph lrp-epsilon", med(lambda: model.explain(xn, "lrp-epsilon", target=target), args.repeats)),
            ("Captum IntegratedGradients (32)", med(lambda: ig.attribute(x, target=target, n_steps=32,
                                                                         internal_batch_size=32), max(1, args.repeats // 3))),
            ("fvgraph integrated-gradients (32)", med(lambda: model.explain(xn, "integrated-gradients", target=target,
                                                                            steps=32), max(1, args.repeats // 3)))]
    print(f"ResNet-18, batch 1, {args.threads} threads, medians of {args.repeats}")
    for k, v in rows:
        print(f"{k:<34} {v:8.1f} ms  {v / rows[0][1]:5.2f}x ort forward")
    print(f"fvgraph guided vs Captum GuidedBackprop: relative L2 difference {agree:.1e}")
    print(f"fvgraph integrated-gradients vs Captum IntegratedGradients (32 steps, gausslegendre): relative L2 "
          f"difference {ig_agree:.1e} in float32, {ig64_agree:.1e} in float64")


if __name__ == "__main__":
    main()
