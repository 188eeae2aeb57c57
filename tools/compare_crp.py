"""One-off cross-check (#23): fvgraph's concept relevance (CRP) against zennit-crp's CondAttribution on the same
torch-exported VGG-16 (CPU, seeded random weights).

Not part of the package or the tests; needs PyTorch, zennit and zennit-crp in a venv of its own (no torchvision
is used: VGG-16 is built here layer by layer with torchvision's module names):

    python3 -m venv /tmp/crpvenv
    /tmp/crpvenv/bin/pip install torch==2.13.0 zennit zennit-crp onnx onnxruntime numpy scipy pillow
    /tmp/crpvenv/bin/pip install -e .
    /tmp/crpvenv/bin/python tools/compare_crp.py [--size 224] [--threads 2]

What it compares, with zennit's LayerMapComposite of Epsilon(1e-3) on Conv2d/Linear and Pass on ReLU (max
pooling and dropout keep the gradient: winner takes all), the rules of fvgraph's lrp-epsilon preset:
(a) the unconditional input relevance; (b) conditional maps {"y": class, "features.<L>": [c]} for several
channels at two layers, each conditioned both at the Conv's output and at its ReLU's output; (c) the channel
relevances at each layer (ChannelConcept.attribute(abs_norm=True) on attr.relevances[layer]) against
model.concepts(..., top=5): the top-5 order and the shares. Map errors are max |a - b| / max |b| (b zennit's).
Prints a table and writes benchmarks/results/crp_compare.json (crp_compare_float64.json with --double).

Finding (size 64, seed 0): in float64 every number agrees to ~1e-13 (same rules, same masking; conditioning at
the Conv's output or at its ReLU's output is the same under Pass). In float32 the remaining differences come
from max-pool windows whose two largest inputs are a near-tie that torch's and onnxruntime's convolutions round
the other way: the winner-takes-all routing then sends that window's relevance to a neighbouring pixel
(counted as maxpool_winner_flips).
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# VGG-16 ("D"): channels per conv, "M" a 2x2 max pool.
CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def vgg16(size: int):
    """VGG-16 with torchvision's module names (features.<i>, classifier.<i>); at 224 the 7x7 adaptive pool is
    the identity, so it is left out; at other sizes the classifier takes the features as they come."""
    import torch
    import torch.nn as nn

    layers, cin = [], 3
    for v in CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU()]
            cin = v
    side = size // 32

    class VGG(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(*layers)
            self.classifier = nn.Sequential(nn.Linear(512 * side * side, 4096), nn.ReLU(), nn.Dropout(),
                                            nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(), nn.Linear(4096, 1000))

        def forward(self, x):
            return self.classifier(torch.flatten(self.features(x), 1))

    net = VGG().eval()
    with torch.no_grad():  # He-scaled weights keep the activations of 16 random layers in range
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.normal_(0, (2.0 / fan_in) ** 0.5)
                m.bias.uniform_(-0.05, 0.05)
    return net


def onnx_value(model, module_name: str) -> str:
    """The ONNX value that a torch module's output became (torch.onnx names nodes /features/features.<i>/Op)."""
    want = "/" + module_name.split(".")[0] + "/" + module_name + "/"
    hits = [layer.name for layer in model.layers if want in layer.name]
    if len(hits) != 1:
        raise SystemExit(f"no single ONNX value for {module_name}: {hits}")
    return hits[0]


def pool_winner_flips(net, model, x) -> dict:
    """{max pool: windows whose winner differs between torch's activations and fvgraph's (onnxruntime's)}: a
    float32 near-tie decided the other way moves that window's relevance to its neighbour (both sides route
    max-pool relevance winner-takes-all), the one source of difference left when the rules agree."""
    import numpy as np
    import torch
    acts, hooks = {}, []
    for name, m in net.named_modules():
        if isinstance(m, torch.nn.MaxPool2d):
            hooks.append(m.register_forward_hook(lambda mod, i, o, name=name: acts.__setitem__(name, i[0].detach())))
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    flips = {}
    for name, a in acts.items():
        prev = f"features.{int(name.split('.')[1]) - 1}"  # the ReLU feeding the pool
        v = onnx_value(model, prev)
        b = model.run(x.numpy(), outputs=[v])[v]
        def winners(t):
            t = np.asarray(t)
            n, c, h, w = t.shape
            return t[:, :, :h // 2 * 2, :w // 2 * 2].reshape(n, c, h // 2, 2, w // 2, 2).transpose(
                0, 1, 2, 4, 3, 5).reshape(n, c, h // 2, w // 2, 4).argmax(-1)
        flips[name] = int((winners(a.numpy()) != winners(b)).sum())
    return flips


def rel_err(a, b) -> float:
    import numpy as np
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--double", action="store_true", help="both sides in float64: no float32 max-pool near-tie "
                    "flips between torch's and onnxruntime's convolutions, the rules alone")
    ap.add_argument("--layers", default="features.21,features.28", help="conv modules whose channels are concepts")
    ap.add_argument("--channels", type=int, default=4, help="conditional maps per layer (its top channels)")
    ap.add_argument("--out", help="default benchmarks/results/crp_compare.json (crp_compare_float64.json with --double)")
    args = ap.parse_args()
    import numpy as np
    import torch
    from crp.attribution import CondAttribution
    from crp.concepts import ChannelConcept
    from zennit.composites import LayerMapComposite
    from zennit.rules import Epsilon, Pass

    import fvgraph as fv

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    net = vgg16(args.size)
    x = torch.randn(1, 3, args.size, args.size)
    if args.double:
        net, x = net.double(), x.double()
    buf = io.BytesIO()
    torch.onnx.export(net, x, buf, opset_version=13, input_names=["input"], dynamo=False)
    # onnxruntime has no float64 Conv: fvgraph's numpy engine runs the float64 graph
    model = fv.load(buf.getvalue(), engine="numpy") if args.double else fv.load(buf.getvalue(), threads=args.threads)
    xn = x.numpy()
    with torch.no_grad():
        logits = net(x)
    cls = int(logits.argmax())
    import onnx
    out_name = onnx.load_from_string(buf.getvalue()).graph.output[0].name
    fwd = rel_err(model.run(xn, outputs=[out_name])[out_name], logits.numpy())

    composite = LayerMapComposite([(torch.nn.ReLU, Pass()), (torch.nn.Conv2d, Epsilon(1e-3)),
                                   (torch.nn.Linear, Epsilon(1e-3))])
    attribution = CondAttribution(net)
    cc = ChannelConcept()

    def crp(conditions, record=()):
        t = time.perf_counter()
        attr = attribution(x.clone().requires_grad_(True), conditions, composite, record_layer=list(record))
        return attr, time.perf_counter() - t

    def fv_sum(rel):  # fvgraph's input relevance (N, 3, H, W) summed over colour, as zennit-crp's heatmap is
        rel = np.asarray(rel)
        return rel.sum(axis=1) if rel.ndim == 4 else rel

    result = {"model": f"VGG-16 (torch.nn, seeded random He weights), input 1x3x{args.size}x{args.size}",
              "dtype": "float64" if args.double else "float32",
              "rules": "zennit LayerMapComposite Epsilon(1e-3) on Conv2d/Linear, Pass on ReLU, gradient on "
                       "MaxPool/Dropout; fvgraph lrp-epsilon",
              "class": cls, "forward_rel_err": fwd, "error": "max|fvgraph - zennit-crp| / max|zennit-crp|"}

    # (a) unconditional
    attr, t_z = crp([{"y": [cls]}])
    t = time.perf_counter()
    e = model.explain(xn, "lrp-epsilon", target=cls)
    t_f = time.perf_counter() - t
    result["unconditional"] = {"error": rel_err(fv_sum(e.relevance), attr.heatmap.numpy()),
                               "max_abs": float(np.abs(attr.heatmap.numpy()).max()),
                               "seconds_zennit": t_z, "seconds_fvgraph": t_f}
    print(f"VGG-16 at {args.size}, class {cls}; forward rel err {fwd:.1e}")
    print(f"(a) unconditional LRP-epsilon: error {result['unconditional']['error']:.2e}")

    # (c) channel relevances, then (b) conditional maps of each layer's top channels
    result["layers"] = []
    rows = []
    for conv_name in args.layers.split(","):
        relu_name = f"features.{int(conv_name.split('.')[1]) + 1}"
        conv_v, relu_v = onnx_value(model, conv_name), onnx_value(model, relu_name)
        attr, _ = crp([{"y": [cls]}], record=(conv_name, relu_name))
        entry = {"conv": conv_name, "conv_value": conv_v, "relu": relu_name, "relu_value": relu_v}
        for which, name, value in (("conv", conv_name, conv_v), ("relu", relu_name, relu_v)):
            z_share = cc.attribute(attr.relevances[name], abs_norm=True)[0].numpy()
            z_raw = cc.attribute(attr.relevances[name], abs_norm=False)[0].numpy()
            z_top = [int(c) for c in np.argsort(-z_share, kind="stable")[:5]]
            at = model.concepts(xn, "lrp-epsilon", layer=value, target=cls, top=5)
            f_top = [int(c) for c in at.channels]
            entry[which] = {
                "name": name, "zennit_top5": z_top, "fvgraph_top5": f_top, "same_order": z_top == f_top,
                "zennit_share": [float(z_share[c]) for c in z_top],
                "fvgraph_share": [float(s) for s in at.share],
                "share_max_abs_diff": float(np.abs(np.asarray(at.share) - z_share[f_top]).max()),
                "per_channel_error": rel_err(at.per_channel, z_raw),
                # the atlas's own conditional maps (its top channels) against zennit-crp's for the same channels
                "atlas_maps_error": None}
            zmaps, _ = crp([{"y": [cls], name: [c]} for c in f_top])
            entry[which]["atlas_maps_error"] = max(rel_err(fv_sum(at.maps)[j], zmaps.heatmap[j].numpy())
                                                   for j in range(len(f_top)))
        # (b) conditional maps at the conv's output and at the ReLU's output, for the top channels and a low one
        chans = entry["conv"]["zennit_top5"][:args.channels - 1] + [int(np.argsort(
            cc.attribute(attr.relevances[conv_name], abs_norm=True)[0].numpy())[0])]
        entry["conditional"] = []
        for which, name, value in (("conv", conv_name, conv_v), ("relu", relu_name, relu_v)):
            zmaps, t_z = crp([{"y": [cls], name: [c]} for c in chans])
            t = time.perf_counter()
            fe = model.explain(xn, "lrp-epsilon", target=cls, concept=[fv.Concept(value, [c]) for c in chans])
            t_f = time.perf_counter() - t
            fm = fv_sum(fe.relevance)
            for j, c in enumerate(chans):
                z = zmaps.heatmap[j].numpy()
                row = {"at": which, "layer": name, "value": value, "channel": c,
                       "error": rel_err(fm[j], z), "max_abs": float(np.abs(z).max()),
                       "zennit_sum": float(z.sum()), "fvgraph_sum": float(fm[j].sum())}
                entry["conditional"].append(row)
                rows.append(row)
            entry[f"seconds_{which}"] = {"zennit": t_z, "fvgraph": t_f, "maps": len(chans)}
        result["layers"].append(entry)

    print("\n(b) conditional maps (sum over colour), error = max|fv - crp| / max|crp|")
    print(f"{'layer':<14}{'at':<6}{'ch':>5}{'error':>11}{'max|crp|':>11}{'sum crp':>12}{'sum fv':>12}")
    for r in rows:
        print(f"{r['layer']:<14}{r['at']:<6}{r['channel']:>5}{r['error']:>11.2e}{r['max_abs']:>11.3e}"
              f"{r['zennit_sum']:>12.4e}{r['fvgraph_sum']:>12.4e}")
    print("\n(c) channel relevances (abs_norm shares), top 5")
    for entry in result["layers"]:
        for which in ("conv", "relu"):
            d = entry[which]
            print(f"{d['name']:<14}{which:<6} crp {d['zennit_top5']}  fv "
                  f"{d['fvgraph_top5']}  same order {d['same_order']}  share diff {d['share_max_abs_diff']:.1e}  "
                  f"per-channel err {d['per_channel_error']:.1e}  atlas maps err {d['atlas_maps_error']:.1e}")
            print(f"{'':<20} crp shares {[round(s, 4) for s in d['zennit_share']]}")
            print(f"{'':<20} fv  shares {[round(s, 4) for s in d['fvgraph_share']]}")
    worst = max(r["error"] for r in rows)
    result["maxpool_winner_flips"] = pool_winner_flips(net, model, x)
    print("max-pool windows whose winner differs (torch vs onnxruntime activations):",
          result["maxpool_winner_flips"])
    result["summary"] = {
        "unconditional_error": result["unconditional"]["error"],
        "conditional_worst_error": worst, "conditional_within_1e-3": worst <= 1e-3,
        "top5_same_order_everywhere": all(e[w]["same_order"] for e in result["layers"] for w in ("conv", "relu"))}
    print("\nsummary", json.dumps(result["summary"]))
    out = Path(args.out or ROOT / "benchmarks" / "results" /
               ("crp_compare_float64.json" if args.double else "crp_compare.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
