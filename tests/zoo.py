"""Seeded test networks built with onnx.helper: small versions of the architectures exported CNNs use,
and the exact layer shapes of ResNet-18 and VGG-16 for the benchmarks."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class NetBuilder:
    """Appends nodes to a graph; every `op` returns its output name(s)."""

    def __init__(self, shape, opset=13, seed=0, batch="N", name="net"):
        self.opset, self.name = opset, name
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.k = [], [], 0
        self.input_shape = [batch] + list(shape[1:]) if batch else list(shape)
        self.x = "input"

    def fresh(self, base):
        self.k += 1
        return f"{base}_{self.k}"

    def const(self, value, base="c", dtype=np.float32):
        name = self.fresh(base)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def param(self, shape, fan_in=None, scale=1.0, base="w"):
        fan_in = fan_in or int(np.prod(shape[1:])) or 1
        return self.const(self.rng.standard_normal(shape) * scale * np.sqrt(2.0 / fan_in), base)

    def op(self, op_type, inputs, n_out=1, name=None, **attrs):
        outs = [self.fresh(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=name or self.fresh(op_type), **attrs))
        return outs[0] if n_out == 1 else outs

    # common layers -------------------------------------------------------------
    def conv(self, x, cin, cout, k, stride=1, pad=None, group=1, dilation=1, bias=True, **attrs):
        k2 = (k, k) if isinstance(k, int) else k
        w = self.param((cout, cin // group, *k2))
        ins = [x, w] + ([self.const(self.rng.standard_normal(cout) * 0.1, "b")] if bias else [])
        if pad is None and "auto_pad" not in attrs:
            pad = [(kk - 1) * dilation // 2 for kk in k2] * 2
        if pad is not None:
            attrs["pads"] = pad
        return self.op("Conv", ins, kernel_shape=list(k2), strides=[stride, stride], group=group,
                       dilations=[dilation, dilation], **attrs)

    def bn(self, x, c):
        r = self.rng
        return self.op("BatchNormalization", [x, self.const(1 + 0.1 * r.standard_normal(c)),
                                              self.const(0.1 * r.standard_normal(c)),
                                              self.const(0.1 * r.standard_normal(c)),
                                              self.const(0.5 + r.random(c))], epsilon=1e-5)

    def relu(self, x):
        return self.op("Relu", [x])

    def gemm(self, x, cin, cout):
        return self.op("Gemm", [x, self.param((cout, cin)), self.const(0.1 * self.rng.standard_normal(cout))],
                       transB=1)

    def flatten(self, x):
        return self.op("Flatten", [x], axis=1)

    def model(self, outputs, metadata=None) -> onnx.ModelProto:
        outputs = [outputs] if isinstance(outputs, str) else outputs
        g = helper.make_graph(self.nodes, self.name,
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, self.input_shape)],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
                              self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", self.opset)], producer_name="fvgraph-tests")
        m.ir_version = 8 if self.opset <= 17 else 9
        g2 = onnx.shape_inference.infer_shapes(m).graph
        inferred = {v.name: v for v in list(g2.value_info) + list(g2.output) if v.type.tensor_type.HasField("shape")}
        for o in m.graph.output:  # declare the output shapes, as exporters do
            if o.name in inferred:
                o.CopyFrom(inferred[o.name])
            else:  # shape computed at run time: declare symbolic (batch, features)
                o.CopyFrom(helper.make_tensor_value_info(o.name, TensorProto.FLOAT, ["N", "out"]))
        for k, v in (metadata or {}).items():
            m.metadata_props.add(key=k, value=v)
        return m


def vgg_like(opset=13, size=32, classes=10, softmax=True):
    b = NetBuilder((1, 3, size, size), opset, seed=1, name="vgg_like")
    x, c = "input", 3
    for cout in (8, 16):
        x = b.relu(b.conv(x, c, cout, 3))
        x = b.relu(b.conv(x, cout, cout, 3))
        x = b.op("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
        c = cout
    x = b.flatten(x)
    x = b.relu(b.gemm(x, c * (size // 4) ** 2, 32))
    x = b.op("Dropout", [x])
    x = b.gemm(x, 32, classes)
    return b.model(b.op("Softmax", [x], axis=1) if softmax else x)


def resnet_like(opset=13, size=32, classes=10):
    b = NetBuilder((1, 3, size, size), opset, seed=2, name="resnet_like")
    x = b.relu(b.bn(b.conv("input", 3, 8, 3, stride=1, bias=False), 8))
    x = b.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    c = 8
    for cout, stride in ((8, 1), (16, 2)):
        y = b.relu(b.bn(b.conv(x, c, cout, 3, stride=stride, bias=False), cout))
        y = b.bn(b.conv(y, cout, cout, 3, bias=False), cout)
        short = x if (stride == 1 and c == cout) else b.bn(b.conv(x, c, cout, 1, stride=stride, bias=False), cout)
        x = b.relu(b.op("Add", [y, short]))
        c = cout
    x = b.op("GlobalAveragePool", [x])
    return b.model(b.gemm(b.flatten(x), c, classes))


def alexnet_like(opset=13, size=35, classes=10):
    b = NetBuilder((1, 3, size, size), opset, seed=3, name="alexnet_like")
    x = b.relu(b.conv("input", 3, 8, 5, stride=2, pad=[2, 2, 2, 2]))
    x = b.op("LRN", [x], size=5, alpha=1e-4 * 5, beta=0.75, bias=2.0)
    x = b.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)
    x = b.relu(b.conv(x, 8, 16, 3, group=2))
    x = b.op("AveragePool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1)
    x = b.op("LRN", [x], size=3, alpha=1e-3, beta=0.75, bias=1.0)
    x = b.op("AveragePool", [x], kernel_shape=[2, 2], strides=[1, 1], ceil_mode=1, pads=[0, 0, 1, 1])
    x = b.flatten(x)
    return b.model(b.gemm(x, 16 * 5 * 5, classes))


def mobilenet_like(opset=13, size=32, classes=10):
    """Inverted residuals with depthwise convs and ReLU6 (Clip 0..6); Clip bounds as attributes below 11."""
    b = NetBuilder((1, 3, size, size), opset, seed=4, name="mobilenet_like")

    def relu6(x):
        if opset < 11:
            return b.op("Clip", [x], min=0.0, max=6.0)
        return b.op("Clip", [x, b.const(0.0), b.const(6.0)])

    x = relu6(b.bn(b.conv("input", 3, 8, 3, stride=2, bias=False), 8))
    c = 8
    for cout, stride, t in ((8, 1, 2), (16, 2, 3)):
        h = relu6(b.bn(b.conv(x, c, c * t, 1, bias=False), c * t))
        h = relu6(b.bn(b.conv(h, c * t, c * t, 3, stride=stride, group=c * t, bias=False), c * t))
        h = b.bn(b.conv(h, c * t, cout, 1, bias=False), cout)
        x = b.op("Add", [x, h]) if (stride == 1 and c == cout) else h
        c = cout
    x = b.op("GlobalAveragePool", [x])
    return b.model(b.gemm(b.flatten(x), c, classes))


def inception_like(opset=13, size=32, classes=10):
    """Inception/DenseNet-style Concat of parallel branches, padded pooling."""
    b = NetBuilder((1, 3, size, size), opset, seed=5, name="inception_like")
    x = b.relu(b.conv("input", 3, 8, 3, stride=2))
    b1 = b.relu(b.conv(x, 8, 4, 1))
    b2 = b.relu(b.conv(b.relu(b.conv(x, 8, 4, 1)), 4, 6, 3))
    b3 = b.relu(b.conv(b.op("MaxPool", [x], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1]), 8, 2, 1))
    x = b.op("Concat", [b1, b2, b3], axis=1)
    d = b.relu(b.conv(x, 12, 4, 3))
    x = b.op("Concat", [x, d], axis=1)  # dense connection
    x = b.op("GlobalAveragePool", [x])
    return b.model(b.gemm(b.flatten(x), 16, classes))


def se_block(opset=13, size=16, classes=10):
    b = NetBuilder((1, 3, size, size), opset, seed=6, name="se_block")
    x = b.relu(b.conv("input", 3, 16, 3))
    s = b.op("GlobalAveragePool", [x])
    s = b.relu(b.conv(s, 16, 4, 1))
    s = b.op("Sigmoid", [b.conv(s, 4, 16, 1)])
    x = b.op("Mul", [x, s])
    x = b.op("HardSwish", [x]) if opset >= 14 else b.op("HardSigmoid", [x])
    x = b.op("ReduceMean", [x], axes=[2, 3], keepdims=0) if opset < 18 else \
        b.op("ReduceMean", [x, b.const([2, 3], dtype=np.int64)], keepdims=0)
    return b.model(b.gemm(x, 16, classes))


def misc_ops(opset=13, size=20, classes=10):
    """LeakyRelu, PRelu, reflect/edge Pad, ceil_mode pooling, dilated and asymmetric-pad convs, Elu/Selu/Tanh."""
    b = NetBuilder((1, 3, size, size), opset, seed=7, name="misc_ops")
    if opset < 11:
        x = b.op("Pad", ["input"], mode="reflect", pads=[0, 0, 1, 2, 0, 0, 2, 1])
    else:
        x = b.op("Pad", ["input", b.const([0, 0, 1, 2, 0, 0, 2, 1], dtype=np.int64)], mode="reflect")
    x = b.op("LeakyRelu", [b.conv(x, 3, 8, 3, pad=[0, 1, 2, 0])], alpha=0.1)
    x = b.op("PRelu", [b.conv(x, 8, 8, 3, dilation=2), b.const(0.25 * np.ones((8, 1, 1)))])
    x = b.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1, pads=[1, 0, 0, 1])
    x = b.op("Elu", [b.conv(x, 8, 8, 3, auto_pad="SAME_UPPER")])
    x = b.op("Selu", [b.conv(x, 8, 8, 2, stride=2, auto_pad="SAME_LOWER")])
    if opset >= 11:
        x = b.op("Pad", [x, b.const([0, 0, 1, 1, 0, 0, 1, 1], dtype=np.int64)], mode="edge")
        # TF-style "same" padding of a strided conv: a zero Pad (bottom/right heavy) before an unpadded Conv
        x = b.op("Pad", [x, b.const([0, 0, 0, 1, 0, 0, 1, 2], dtype=np.int64)], mode="constant")
        x = b.relu(b.conv(x, 8, 8, 3, stride=2, pad=[0, 0, 0, 0]))
    x = b.op("Tanh", [b.conv(x, 8, 8, 3, auto_pad="VALID")])
    x = b.op("GlobalMaxPool", [x])
    return b.model(b.gemm(b.flatten(x), 8, classes))


def exporter_style(opset=13, size=16, classes=10):
    """What PyTorch and tf2onnx write: Shape -> Gather -> Unsqueeze -> Concat -> Reshape instead of Flatten,
    an Identity chain, Resize upsampling, Transpose, Split/Sum, Sqrt/Pow/Div/Sub/Neg/Abs/Exp/Erf math."""
    b = NetBuilder((1, 3, size, size), opset, seed=8, name="exporter_style")
    x = b.relu(b.conv("input", 3, 8, 3))
    x = b.op("Identity", [b.op("Identity", [x])])
    if opset >= 11:
        roi = b.const([], dtype=np.float32) if opset < 13 else ""
        x = b.op("Resize", [x, roi, b.const([1, 1, 2, 2])], mode="nearest")
    elif opset == 10:
        x = b.op("Resize", [x, b.const([1, 1, 2, 2])], mode="nearest")
    else:
        x = b.op("Upsample", [x, b.const([1, 1, 2, 2])], mode="nearest")
    x = b.op("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    if opset >= 13:
        p1, p2 = b.op("Split", [x, b.const([3, 5], dtype=np.int64)], n_out=2, axis=1)
    else:
        p1, p2 = b.op("Split", [x], n_out=2, axis=1, split=[3, 5])
    p1 = b.op("Sqrt", [b.op("Add", [b.op("Abs", [p1]), b.const(1.0)])])
    p2 = b.op("Div", [b.op("Sub", [p2, b.const(0.5)]), b.const(2.0)])
    p2 = b.op("Erf", [b.op("Neg", [p2])])
    x = b.op("Concat", [p1, p2], axis=1)
    x = b.op("Mul", [b.op("Pow", [x, b.const(2.0)]), b.op("Exp", [b.const(-0.5)])])
    x = b.op("Sum", [x, x, b.op("Max", [x, b.const(0.1)]), b.op("Min", [x, b.const(0.9)])])
    x = b.op("Mean", [x, b.op("Transpose", [b.op("Transpose", [x], perm=[0, 1, 3, 2])], perm=[0, 1, 3, 2])])
    if opset >= 13:
        x = b.op("ReduceSum", [x, b.const([1], dtype=np.int64)], keepdims=1)
    else:
        x = b.op("ReduceSum", [x], axes=[1], keepdims=1)
    shape = b.op("Shape", [x])
    n = b.op("Gather", [shape, b.const(0, dtype=np.int64)], axis=0)
    if opset >= 13:
        n = b.op("Unsqueeze", [n, b.const([0], dtype=np.int64)])
    else:
        n = b.op("Unsqueeze", [n], axes=[0])
    target = b.op("Concat", [n, b.const([-1], dtype=np.int64)], axis=0)
    x = b.op("Reshape", [x, target])
    x = b.op("Cast", [b.op("Cast", [x], to=TensorProto.DOUBLE)], to=TensorProto.FLOAT)
    y = b.op("MatMul", [x, b.param((size * size, classes))])
    return b.model(b.op("LogSoftmax", [y], axis=1))


MIN_OPSET = {"alexnet_like": 10, "misc_ops": 10}  # ceil_mode pooling exists from opset 10

ZOO = {"vgg_like": vgg_like, "resnet_like": resnet_like, "alexnet_like": alexnet_like,
       "mobilenet_like": mobilenet_like, "inception_like": inception_like, "se_block": se_block,
       "misc_ops": misc_ops, "exporter_style": exporter_style}


# --------------------------------------------------------------------------- full-size benchmark nets
def resnet18(size=224, classes=1000, seed=0):
    """ResNet-18 with exactly the real network's layer shapes (BatchNorm after every conv)."""
    b = NetBuilder((1, 3, size, size), 13, seed=seed, name="resnet18")
    x = b.relu(b.bn(b.conv("input", 3, 64, 7, stride=2, pad=[3, 3, 3, 3], bias=False), 64))
    x = b.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    c = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        for blk in range(2):
            s = stride if blk == 0 else 1
            y = b.relu(b.bn(b.conv(x, c, cout, 3, stride=s, bias=False), cout))
            y = b.bn(b.conv(y, cout, cout, 3, bias=False), cout)
            short = x if (s == 1 and c == cout) else b.bn(b.conv(x, c, cout, 1, stride=s, pad=[0, 0, 0, 0],
                                                                 bias=False), cout)
            x = b.relu(b.op("Add", [y, short]))
            c = cout
    x = b.op("GlobalAveragePool", [x])
    return b.model(b.gemm(b.flatten(x), 512, classes))


def vgg16(size=224, classes=1000, seed=0):
    b = NetBuilder((1, 3, size, size), 13, seed=seed, name="vgg16")
    x, c = "input", 3
    for cout, n in ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3)):
        for _ in range(n):
            x = b.relu(b.conv(x, c, cout, 3))
            c = cout
        x = b.op("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    x = b.flatten(x)
    x = b.relu(b.gemm(x, 512 * (size // 32) ** 2, 4096))
    x = b.relu(b.gemm(x, 4096, 4096))
    return b.model(b.gemm(x, 4096, classes))


def yolo_like(size=320, classes=80, seed=0, widths=(16, 32, 64, 128, 256), depth=(1, 2, 2, 1), opset=13):
    """A YOLOv8n-shaped detector: Conv + Sigmoid + Mul (SiLU) blocks, C2f (Split, bottlenecks, Concat), SPPF
    (chained 5x5 max pools), nearest upsampling, a three-level head with distribution focal loss box decoding
    (Softmax over 16 bins), anchors and strides as constants; output (batch, 4 + classes, anchors), boxes
    as (cx, cy, w, h) in pixels and class scores after a sigmoid, as ultralytics exports it."""
    b = NetBuilder((1, 3, size, size), opset, seed=seed, name="yolo_like")

    def silu_conv(x, cin, cout, k, stride=1):
        y = b.conv(x, cin, cout, k, stride=stride)
        return b.op("Mul", [y, b.op("Sigmoid", [y])])

    def c2f(x, cin, cout, n, shortcut=True):
        c = cout // 2
        y = silu_conv(x, cin, 2 * c, 1)
        parts = list(b.op("Split", [y, b.const([c, c], dtype=np.int64)], n_out=2, axis=1))
        for _ in range(n):
            h = silu_conv(silu_conv(parts[-1], c, c, 3), c, c, 3)
            parts.append(b.op("Add", [parts[-1], h]) if shortcut else h)
        return silu_conv(b.op("Concat", parts, axis=1), (2 + n) * c, cout, 1)

    def sppf(x, c):
        y = silu_conv(x, c, c // 2, 1)
        pools = [y]
        for _ in range(3):
            pools.append(b.op("MaxPool", [pools[-1]], kernel_shape=[5, 5], strides=[1, 1], pads=[2, 2, 2, 2]))
        return silu_conv(b.op("Concat", pools, axis=1), 2 * c, c, 1)

    def up(x):
        return b.op("Resize", [x, "", b.const([1, 1, 2, 2])], mode="nearest")

    w0, w1, w2, w3, w4 = widths
    x = silu_conv("input", 3, w0, 3, 2)
    x = c2f(silu_conv(x, w0, w1, 3, 2), w1, w1, depth[0])
    p3 = c2f(silu_conv(x, w1, w2, 3, 2), w2, w2, depth[1])
    p4 = c2f(silu_conv(p3, w2, w3, 3, 2), w3, w3, depth[2])
    p5 = sppf(c2f(silu_conv(p4, w3, w4, 3, 2), w4, w4, depth[3]), w4)
    n4 = c2f(b.op("Concat", [up(p5), p4], axis=1), w4 + w3, w3, 1, shortcut=False)
    o3 = c2f(b.op("Concat", [up(n4), p3], axis=1), w3 + w2, w2, 1, shortcut=False)
    o4 = c2f(b.op("Concat", [silu_conv(o3, w2, w2, 3, 2), n4], axis=1), w2 + w3, w3, 1, shortcut=False)
    o5 = c2f(b.op("Concat", [silu_conv(o4, w3, w3, 3, 2), p5], axis=1), w3 + w4, w4, 1, shortcut=False)
    reg, levels, anchors, strides = 16, [], [], []
    for feat, c, stride in ((o3, w2, 8), (o4, w3, 16), (o5, w4, 32)):
        box = b.conv(silu_conv(silu_conv(feat, c, 64, 3), 64, 64, 3), 64, 4 * reg, 1)
        cls = b.conv(silu_conv(silu_conv(feat, c, 80, 3), 80, 80, 3), 80, classes, 1)
        h = size // stride
        levels.append(b.op("Reshape", [b.op("Concat", [box, cls], axis=1),
                                       b.const([0, 4 * reg + classes, -1], dtype=np.int64)]))
        gy, gx = np.meshgrid(np.arange(h) + 0.5, np.arange(h) + 0.5, indexing="ij")
        anchors.append(np.stack([gx.reshape(-1), gy.reshape(-1)]))
        strides.append(np.full(h * h, stride))
    out = b.op("Concat", levels, axis=2)
    box, cls = b.op("Split", [out, b.const([4 * reg, classes], dtype=np.int64)], n_out=2, axis=1)
    dist = b.op("Softmax", [b.op("Reshape", [box, b.const([0, 4, reg, -1], dtype=np.int64)])], axis=2)
    bins = b.const(np.arange(reg, dtype=np.float32).reshape(1, 1, reg, 1))
    dist = b.op("ReduceSum", [b.op("Mul", [dist, bins]), b.const([2], dtype=np.int64)], keepdims=0)
    lt, rb = b.op("Split", [dist, b.const([2, 2], dtype=np.int64)], n_out=2, axis=1)
    anchor = b.const(np.concatenate(anchors, axis=1)[None])
    x1y1, x2y2 = b.op("Sub", [anchor, lt]), b.op("Add", [anchor, rb])
    centre = b.op("Div", [b.op("Add", [x1y1, x2y2]), b.const(2.0)])
    wh = b.op("Sub", [x2y2, x1y1])
    boxes = b.op("Mul", [b.op("Concat", [centre, wh], axis=1), b.const(np.concatenate(strides)[None, None])])
    return b.model(b.op("Concat", [boxes, b.op("Sigmoid", [cls])], axis=1),
                   metadata={"imgsz": f"[{size}, {size}]", "stride": "32",
                             "names": str({k: f"class{k}" for k in range(classes)})})


def seg_like(size=32, classes=4, seed=0, opset=13):
    """A small segmentation net: a strided encoder, nearest upsampling back to the input size, per-pixel class
    logits (batch, classes, H, W)."""
    b = NetBuilder((1, 3, size, size), opset, seed=seed, name="seg_like")
    x = b.relu(b.conv("input", 3, 8, 3, stride=2))
    x = b.relu(b.conv(x, 8, 16, 3, stride=2))
    for cin, cout in ((16, 8), (8, 8)):
        x = b.op("Resize", [x, "", b.const([1, 1, 2, 2])], mode="nearest")
        x = b.relu(b.conv(x, cin, cout, 3))
    return b.model(b.conv(x, 8, classes, 1))


def vit_like(size=32, patch=8, dim=16, heads=2, depth=2, classes=5, seed=0, prefix=1, pool="token", opset=18,
             swin_like=False):
    """A vision transformer as timm exports one: patch conv -> tokens (+ class token) -> [LayerNorm -> attention
    (softmax(QK^T / sqrt d) V) -> residual -> LayerNorm -> GELU MLP -> residual] x depth -> LayerNorm -> class
    token (or mean) -> head. swin_like: the last blocks' tokens kept as an (N, h, w, C) map, mean-pooled."""
    b = NetBuilder((1, 3, size, size), opset, seed=seed, name="vit_like")
    g = size // patch
    t = g * g + prefix
    dh = dim // heads
    x = b.conv("input", 3, dim, patch, stride=patch, pad=[0, 0, 0, 0])                # (N, dim, g, g)
    x = b.op("Transpose", [b.op("Reshape", [x, b.const([0, dim, -1], dtype=np.int64)])], perm=[0, 2, 1])
    if prefix:
        cls = b.param((1, prefix, dim), fan_in=dim)
        shape = b.op("Concat", [b.op("Slice", [b.op("Shape", ["input"]), b.const([0], dtype=np.int64),
                                                b.const([1], dtype=np.int64)]), b.const([prefix, dim], dtype=np.int64)],
                     axis=0)
        x = b.op("Concat", [b.op("Expand", [cls, shape]), x], axis=1)
    x = b.op("Add", [x, b.param((1, t, dim), fan_in=dim)])

    def ln(v):
        return b.op("LayerNormalization", [v, b.const(1 + 0.1 * b.rng.standard_normal(dim)),
                                           b.const(0.1 * b.rng.standard_normal(dim))], axis=-1, epsilon=1e-6)

    def dense(v, cin, cout):
        return b.op("Add", [b.op("MatMul", [v, b.param((cin, cout), fan_in=cin)]),
                            b.const(0.1 * b.rng.standard_normal(cout))])
    for _ in range(depth):
        h = ln(x)
        qkv = b.op("Reshape", [dense(h, dim, 3 * dim), b.const([0, t, 3, heads, dh], dtype=np.int64)])
        qkv = b.op("Transpose", [qkv], perm=[2, 0, 3, 1, 4])                                 # (3, N, heads, t, dh)
        q, k, v = (b.op("Squeeze", [s, b.const([0], dtype=np.int64)])
                   for s in b.op("Split", [qkv, b.const([1, 1, 1], dtype=np.int64)], n_out=3, axis=0))
        att = b.op("Softmax", [b.op("Mul", [b.op("MatMul", [q, b.op("Transpose", [k], perm=[0, 1, 3, 2])]),
                                            b.const(dh ** -0.5)])], axis=-1)
        o = b.op("Reshape", [b.op("Transpose", [b.op("MatMul", [att, v])], perm=[0, 2, 1, 3]),
                             b.const([0, t, dim], dtype=np.int64)])
        x = b.op("Add", [x, dense(o, dim, dim)])
        m = b.op("Gelu", [dense(ln(x), dim, 2 * dim)]) if opset >= 20 else \
            b.op("Mul", [dense(ln(x), dim, 2 * dim), b.op("Sigmoid", [dense(ln(x), dim, 2 * dim)])])
        x = b.op("Add", [x, dense(m, 2 * dim, dim)])
    x = ln(x)
    if swin_like:  # (N, g, g, dim), pooled over both grid axes
        x = b.op("Reshape", [b.op("Slice", [x, b.const([prefix], dtype=np.int64), b.const([t], dtype=np.int64),
                                            b.const([1], dtype=np.int64)]), b.const([0, g, g, dim], dtype=np.int64)])
        x = b.op("ReduceMean", [x, b.const([1, 2], dtype=np.int64)], keepdims=0)
    elif pool == "token":
        x = b.op("Gather", [x, b.const(0, dtype=np.int64)], axis=1)
    else:
        x = b.op("ReduceMean", [x, b.const([1], dtype=np.int64)], keepdims=0)
    return b.model(b.gemm(x, dim, classes))
