"""MatConvNet (.mat, SimpleNN and DagNN) to ONNX.

MatConvNet's conventions, converted exactly:
- images and activations are H x W x C (x N); weights H x W x Cin x Cout (ONNX: Cout x Cin x H x W);
  fully-connected layers are convolutions whose filters cover the whole input, and stay so;
- pad = [top bottom left right] (a scalar: all four); stride and dilate as [y x] or a scalar;
- pooling output size floor((H + pads - pool) / stride) + 1, i.e. ONNX's floor mode with explicit pads; max
  pooling ignores padding, average pooling divides by the part of the window inside the image
  (count_include_pad = 0);
- normalize (LRN) param = [N kappa alpha beta]: y = x (kappa + alpha sum_window x^2)^-beta, the same window
  as ONNX, whose LRN divides alpha by N: ONNX alpha = alpha * N;
- bnorm: multipliers, biases, moments = [mean sigma] (sigma includes epsilon): variance = sigma^2 - eps;
- loss layers are dropped (inference), dropout becomes Identity; noffset: y = x - param(1) * |x|_c ^ param(2)
  (the L2 norm across channels); sigmoid; DagNN Crop (the first input cropped at `crop` to the second's
  size), Scale (per-channel multiplier and bias), Sum, Concat;
- the input: channels and size from meta.inputSize, else normalization.imageSize, else the first conv's
  filters (size then left free); grayscale nets take one channel and get grayscale preprocessing;
- normalization: a per-channel averageImage (1x1xC or C values) is subtracted by the preprocessing; a full mean
  image (H x W or H x W x C, as cnn_train saves it) is subtracted inside the graph as a constant, so the
  converted model takes the raw image (pixels 0..255 after resizing and cropping), as vl_simplenn's users feed
  it after bsxfun(@minus, im, averageImage); keepAspect, border, cropSize and interpolation go into the
  preprocessing; meta.classes (or, in the pre-2015 layout, net.classes and net.normalization at the top
  level) gives the class names.

Untrusted files: a .mat is read only from its own bytes. In a v7.3 (HDF5) file, HDF5 external storage,
external links, virtual datasets, soft links that dangle or pass through an external link, filters h5py
cannot decode, reference cycles, nesting deeper than 64 levels and datasets claiming more bytes than the file
could decode to (4 GiB each; 1032x, deflate's largest ratio, the file's size in all) are refused with one
ModelLoadError line naming the file and the HDF5 path, before any of their data is read. A v5/v6 file
(scipy.io.loadmat) has no way to name another file: it is parsed from its own stream only, and its
compressed elements decode to at most deflate's ratio.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import FvGraphError, ModelLoadError, UnsupportedModelError
from ..graph import unique_name

OPSET = 13


# ----------------------------------------------------------------------------------------------- reading
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _read_mat(path):
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such file")
    with open(path, "rb") as f:
        head = f.read(128)
        # HDF5's superblock sits at 0 or after a user block of 512, 1024, 2048, ... bytes (MATLAB: 512)
        hdf5 = head[:8] == _HDF5_SIGNATURE
        for offset in (512 << k for k in range(8)):
            if hdf5:
                break
            f.seek(offset)
            hdf5 = f.read(8) == _HDF5_SIGNATURE
    if hdf5 or b"MATLAB 7.3" in head:
        return _read_hdf5(path)
    from scipy.io import loadmat
    try:
        # no squeeze_me: it would drop the leading singleton dimensions of 1x1 filters
        data = loadmat(path, squeeze_me=False, struct_as_record=False)
    except Exception as e:
        raise ModelLoadError(f"{path}: not a readable MATLAB .mat file ({type(e).__name__}: {e})") from None
    net = data.get("net", data)
    return _to_py(net)


# What a v7.3 (HDF5) file may make the reader do. HDF5 can pull data from outside the file (external storage,
# external links, virtual datasets), claim any size in a header (unallocated chunks read as the fill value) and
# reference itself; a .mat from the internet is read only from its own bytes, within these bounds:
_H5_MAX_DEPTH = 64                 # nesting of groups, cells and struct arrays (MatConvNet nets need < 10)
_H5_MAX_OBJECTS = 1_000_000        # objects visited, shared ones counted each time (a DAG of references)
_H5_MAX_DATASET = 4 << 30          # bytes one dataset may decode to (VGG-VD's largest is 0.4 GB)
_H5_MAX_RATIO = 1032               # deflate's largest ratio: decoded bytes <= this x the file's size (+ 1 MiB)
_H5_MAX_ATTR = 1 << 20             # bytes of one attribute (MATLAB's are a few bytes)
_H5_MAX_SOFT_HOPS = 16             # soft links followed to reach one object


def _read_hdf5(path):
    try:
        import h5py
    except ImportError:
        raise ModelLoadError(f"{path} is a MATLAB v7.3 (HDF5) file: install h5py to read it "
                             "(pip install 'fvgraph[matconvnet]'), or re-save it in MATLAB with save(..., '-v7')") \
            from None
    try:
        f = h5py.File(path, "r")
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{path}: not a readable MATLAB v7.3 (HDF5) file ({_one_line(e)})") from None
    with f:
        reader = _H5Reader(path, f, h5py)
        try:
            net = reader.child(f, "net")
            return reader.value(net if net is not None else f, 0, frozenset())
        except FvGraphError:
            raise
        except (OSError, KeyError, ValueError, TypeError, IndexError, RuntimeError) as e:
            raise ModelLoadError(f"{path}: malformed MATLAB v7.3 (HDF5) file ({type(e).__name__}: "
                                 f"{_one_line(e)})") from None


def _one_line(text):
    return " ".join(str(text).split())


class _H5Reader:
    """MATLAB v7.3 layout: structs are groups; a struct array's fields are datasets of references (one per
    element); cells are reference datasets marked 'cell'; char is uint16; arrays are stored transposed.
    Everything is checked before it is read: links, storage, filters, types and sizes; a refusal is a
    ModelLoadError naming the file and the HDF5 path."""

    def __init__(self, path, f, h5py):
        self.path, self.f, self.h5py = path, f, h5py
        size = os.path.getsize(path)
        self.total_left = _H5_MAX_RATIO * size + (1 << 20)
        self.dataset_cap = min(_H5_MAX_DATASET, self.total_left)
        self.objects = 0

    def refuse(self, where, why):
        return ModelLoadError(f"{self.path}: {where}: {why}; refusing to read this MATLAB v7.3 file")

    # ------------------------------------------------------------------------------------------ links
    def child(self, group, name):
        """group[name] when it stays inside this file (hard links, soft links that resolve), None if absent."""
        where = f"{group.name.rstrip('/')}/{name}"
        link = group.get(name, getlink=True)
        if link is None:
            return None
        return self._follow(group, name, link, where, 0)

    def _follow(self, group, name, link, where, hops):
        h5py = self.h5py
        if isinstance(link, h5py.ExternalLink):
            raise self.refuse(f"link {where!r}", f"an HDF5 external link to {link.filename!r}:{link.path!r} "
                                                 "(another file)")
        if isinstance(link, h5py.SoftLink):
            if hops >= _H5_MAX_SOFT_HOPS:
                raise self.refuse(f"soft link {where!r}", f"more than {_H5_MAX_SOFT_HOPS} soft links in a row "
                                                          "(a loop?)")
            return self._resolve_soft(group, link.path, where, hops + 1)
        if isinstance(link, h5py.HardLink):
            return group[name]
        raise self.refuse(f"link {where!r}", f"an HDF5 link of an unknown kind ({type(link).__name__})")

    def _resolve_soft(self, group, target, where, hops):
        """Walk a soft link's path one name at a time, so that it cannot pass through an external link."""
        cur = self.f if target.startswith("/") else group
        for part in [p for p in target.split("/") if p and p != "."]:
            if not isinstance(cur, self.h5py.Group):
                raise self.refuse(f"soft link {where!r}", f"its target {target!r} does not exist (dangling)")
            link = cur.get(part, getlink=True)
            if link is None:
                raise self.refuse(f"soft link {where!r}", f"its target {target!r} does not exist (dangling)")
            cur = self._follow(cur, part, link, where, hops)
        return cur

    def deref(self, holder, ref):
        try:
            if not ref:
                raise ValueError("null reference")
            return self.f[ref]
        except (ValueError, KeyError, TypeError, OSError) as e:
            raise self.refuse(f"dataset {holder.name!r}", f"an object reference that does not resolve "
                                                          f"({_one_line(e)})") from None

    # ------------------------------------------------------------------------------------------ checks
    def attr(self, obj, name, default):
        if name not in obj.attrs:
            return default
        aid = obj.attrs.get_id(name)
        nbytes = int(np.prod(aid.shape or (), dtype=object)) * aid.dtype.itemsize
        if nbytes > _H5_MAX_ATTR or aid.dtype.kind == "O":
            raise self.refuse(f"attribute {name!r} of {obj.name!r}", f"an attribute of {nbytes} bytes or of "
                                                                     f"type {aid.dtype}")
        return obj.attrs[name]

    def mclass(self, obj):
        c = self.attr(obj, "MATLAB_class", b"")
        return c.decode(errors="replace") if isinstance(c, bytes) else str(c)

    def check_dataset(self, d):
        """Everything that could read outside the file, fail inside a decoder or claim absurd sizes, before
        any data is read."""
        where = f"dataset {d.name!r}"
        if d.is_virtual:
            raise self.refuse(where, "an HDF5 virtual dataset (VDS), whose data comes from other files")
        external = d.external
        if external:
            names = ", ".join(repr(os.fsdecode(e[0])) for e in external)
            raise self.refuse(where, f"HDF5 external storage: its data is read from {names}, outside the file")
        plist = d.id.get_create_plist()
        for i in range(plist.get_nfilters()):
            code, _, _, fname = plist.get_filter(i)
            if not self.h5py.h5z.filter_avail(code):
                fname = fname.decode(errors="replace") if isinstance(fname, bytes) else str(fname)
                raise self.refuse(where, f"HDF5 filter {code} ({fname or 'unnamed'}) that h5py cannot decode")
        dt = d.dtype
        ref = self.h5py.check_ref_dtype(dt)
        if ref is not None and ref is not self.h5py.Reference:
            raise self.refuse(where, "HDF5 region references (MATLAB writes object references only)")
        if ref is None and (dt.kind == "O" or self.h5py.check_vlen_dtype(dt) is not None
                            or any(dt.fields[n][0].kind == "O" for n in (dt.names or ()))):
            raise self.refuse(where, f"variable-length data of type {dt} (MATLAB writes fixed-size types)")
        nbytes = int(np.prod(d.shape or (), dtype=object)) * dt.itemsize
        if nbytes > self.dataset_cap or nbytes > self.total_left:
            raise self.refuse(where, f"shape {d.shape} of {dt} claims {nbytes} bytes, more than the "
                                     f"{min(self.dataset_cap, self.total_left)} bytes a file of this size "
                                     f"can hold (at most {_H5_MAX_DATASET} per dataset, {_H5_MAX_RATIO}x the "
                                     "file's size in all)")
        self.total_left -= nbytes

    def read(self, d):
        self.check_dataset(d)
        if d.shape is None:  # an HDF5 null dataspace
            return np.zeros((0, 0))
        try:
            return d[()]
        except (OSError, ValueError, TypeError, RuntimeError) as e:
            raise self.refuse(f"dataset {d.name!r}", f"its data cannot be read ({_one_line(e)})") from None

    # ------------------------------------------------------------------------------------------ values
    def value(self, obj, depth, path):
        """obj as Python values; path holds the objects being read above it, so a cycle is refused."""
        h5py = self.h5py
        where = f"{'group' if isinstance(obj, h5py.Group) else 'dataset'} {obj.name!r}"
        info = h5py.h5o.get_info(obj.id)
        key = (info.fileno, info.addr)
        if key in path:
            raise self.refuse(where, "an HDF5 reference cycle (this object contains itself)")
        if depth >= _H5_MAX_DEPTH:
            raise self.refuse(where, f"nesting deeper than {_H5_MAX_DEPTH} levels")
        self.objects += 1
        if self.objects > _H5_MAX_OBJECTS:
            raise self.refuse(where, f"more than {_H5_MAX_OBJECTS} objects to read")
        path = path | {key}
        if isinstance(obj, h5py.Group):
            fields = {}
            for k in obj.keys():
                if not k.startswith("#"):
                    child = self.child(obj, k)
                    if child is not None:
                        fields[k] = child
            is_refs = lambda d: isinstance(d, h5py.Dataset) and d.dtype == h5py.ref_dtype  # noqa: E731
            if fields and all(is_refs(d) and self.mclass(d) != "cell" for d in fields.values()):
                refs = {k: np.asarray(self.read(d)).reshape(-1, order="F") for k, d in fields.items()}
                n = len(next(iter(refs.values())))
                if any(len(r) != n for r in refs.values()):
                    raise self.refuse(where, "a struct array whose fields have different numbers of elements")
                items = [{k: self.value(self.deref(fields[k], r[i]), depth + 1, path) for k, r in refs.items()}
                         for i in range(n)]
                return items[0] if n == 1 else items
            return {k: self.value(d, depth + 1, path) for k, d in fields.items()}
        if not isinstance(obj, h5py.Dataset):
            raise self.refuse(where, f"an HDF5 object of an unknown kind ({type(obj).__name__})")
        if self.attr(obj, "MATLAB_empty", 0):
            return np.zeros((0, 0))
        data = self.read(obj)
        if obj.dtype == h5py.ref_dtype:
            items = [self.value(self.deref(obj, r), depth + 1, path)
                     for r in np.asarray(data).reshape(-1, order="F")]
            return items[0] if len(items) == 1 else items
        if self.mclass(obj) == "char":
            return "".join(chr(c) for c in np.asarray(data).reshape(-1))
        a = np.asarray(data)
        if a.size == 1:
            return a.reshape(()).item()
        return a.T  # HDF5 stores MATLAB's column-major arrays with the dimensions reversed


def _to_py(v):
    """scipy mat_struct / object arrays -> dicts, lists, arrays, scalars, strings."""
    from scipy.io.matlab import mat_struct
    if isinstance(v, mat_struct):
        return {k: _to_py(getattr(v, k)) for k in v._fieldnames}
    if isinstance(v, dict):
        return {k: _to_py(x) for k, x in v.items() if not k.startswith("__")}
    if isinstance(v, np.ndarray):
        if v.dtype == object:  # cells and struct arrays; one element stands for itself
            items = [_to_py(x) for x in v.reshape(-1, order="F")]
            return items[0] if len(items) == 1 else items
        if v.dtype.kind in "US":
            return "".join(str(x) for x in v.reshape(-1))
        if v.dtype.kind in "fiub" and v.size == 1 and v.ndim <= 2:
            return v.reshape(()).item()
        return v
    return v


def _list(v):
    if v is None:
        return []
    if isinstance(v, (list, tuple)):
        return list(v)
    if isinstance(v, np.ndarray) and v.ndim == 0:
        return [v.item()]
    return [v]


def _ints(v, n, name):
    a = np.atleast_1d(np.asarray(v, dtype=np.float64)).reshape(-1)
    if a.size == 1:
        a = np.repeat(a, n)
    if a.size != n:
        raise UnsupportedModelError(f"{name} has {a.size} values, expected 1 or {n}")
    return [int(x) for x in a]


# ----------------------------------------------------------------------------------------------- building
class _Builder:
    def __init__(self):
        self.nodes, self.inits, self.used = [], [], set()

    def const(self, name, value):
        name = self.unique(name)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def unique(self, name):
        return unique_name(name, self.used)

    def node(self, op, inputs, output, name, **attrs):
        self.nodes.append(helper.make_node(op, inputs, [output], name=self.unique(name), **attrs))
        return output


def _weight(w):
    """H x W x Cin x Cout -> Cout x Cin x H x W, as float32 (2-D and 3-D arrays are padded with 1s)."""
    w = np.asarray(w, np.float32)
    while w.ndim < 4:
        w = w[..., None]
    return np.ascontiguousarray(w.transpose(3, 2, 0, 1))


def _conv_pads(pad):
    t, b, l, r = _ints(pad, 4, "pad")
    return [t, l, b, r]


def _layer(b: _Builder, kind, name, x, out, params, opts):
    """Append the ONNX node(s) of one MatConvNet layer; returns the output value name, or None when the layer
    is dropped (losses)."""
    kind = kind.lower().replace("dagnn.", "")
    if kind in ("conv", "convt"):
        w = params[0] if params else None
        if w is None:
            raise UnsupportedModelError(f"layer {name!r} ({kind}) has no weights")
        bias = params[1] if len(params) > 1 and params[1] is not None and np.size(params[1]) else None
        if kind == "conv":
            W = _weight(w)
            groups = max(1, int(opts.get("numGroups", 1)))
            ins = [x, b.const(f"{name}_W", W)]
            if bias is not None:
                ins.append(b.const(f"{name}_b", np.asarray(bias, np.float32).reshape(-1)))
            attrs = dict(kernel_shape=list(W.shape[2:]), pads=_conv_pads(opts.get("pad", 0)),
                         strides=_ints(opts.get("stride", 1), 2, "stride"),
                         dilations=_ints(opts.get("dilate", 1), 2, "dilate"))
            if groups > 1:
                attrs["group"] = groups
            return b.node("Conv", ins, out, name, **attrs)
        # convt: F is FH x FW x K x D (K outputs, D inputs); ONNX ConvTranspose wants D x K/groups x FH x FW
        F = np.asarray(w, np.float32)
        while F.ndim < 4:
            F = F[..., None]
        groups = max(1, int(opts.get("numGroups", 1)))
        Wt = np.ascontiguousarray(F.transpose(3, 2, 0, 1))
        ins = [x, b.const(f"{name}_W", Wt)]
        if bias is not None:
            ins.append(b.const(f"{name}_b", np.asarray(bias, np.float32).reshape(-1)))
        t, bo, l, r = _ints(opts.get("crop", 0), 4, "crop")
        return b.node("ConvTranspose", ins, out, name, kernel_shape=list(Wt.shape[2:]), pads=[t, l, bo, r],
                      strides=_ints(opts.get("upsample", 1), 2, "upsample"), group=groups)
    if kind in ("relu",):
        leak = float(opts.get("leak", 0) or 0)
        return b.node("LeakyRelu", [x], out, name, alpha=leak) if leak else b.node("Relu", [x], out, name)
    if kind in ("pool", "pooling"):
        method = str(opts.get("method", "max")).lower()
        size = _ints(opts.get("pool", opts.get("poolSize", 1)), 2, "pool")
        attrs = dict(kernel_shape=size, strides=_ints(opts.get("stride", 1), 2, "stride"),
                     pads=_conv_pads(opts.get("pad", 0)))
        if method == "max":
            return b.node("MaxPool", [x], out, name, **attrs)
        if method in ("avg", "average"):
            return b.node("AveragePool", [x], out, name, count_include_pad=0, **attrs)
        raise UnsupportedModelError(f"layer {name!r}: pooling method {method!r}")
    if kind in ("normalize", "lrn"):
        p = np.asarray(opts.get("param"), np.float64).reshape(-1)
        if p.size != 4:
            raise UnsupportedModelError(f"layer {name!r}: normalize param must be [N kappa alpha beta]")
        n, kappa, alpha, beta = p
        return b.node("LRN", [x], out, name, size=int(n), bias=float(kappa), alpha=float(alpha * n), beta=float(beta))
    if kind in ("bnorm", "batchnorm"):
        if len(params) < 3:
            raise UnsupportedModelError(f"layer {name!r} (bnorm) needs multipliers, biases and moments")
        g = np.asarray(params[0], np.float32).reshape(-1)
        beta = np.asarray(params[1], np.float32).reshape(-1)
        moments = np.asarray(params[2], np.float64).reshape(g.size, -1)
        eps = float(opts.get("epsilon", 1e-4))
        mean, sigma = moments[:, 0], moments[:, 1]
        var = np.maximum(sigma ** 2 - eps, 0)
        ins = [x, b.const(f"{name}_g", g), b.const(f"{name}_beta", beta), b.const(f"{name}_mean", mean.astype(np.float32)),
               b.const(f"{name}_var", var.astype(np.float32))]
        return b.node("BatchNormalization", ins, out, name, epsilon=eps)
    if kind in ("dropout",):
        return b.node("Identity", [x], out, name)
    if kind in ("softmax",):
        return b.node("Softmax", [x], out, name, axis=1)
    if kind in ("sigmoid",):
        return b.node("Sigmoid", [x], out, name)
    if kind in ("noffset",):
        p = np.asarray(opts.get("param", [1, 0.5]), np.float64).reshape(-1)
        norm = b.node("ReduceL2", [x], b.unique(f"{name}_norm"), f"{name}_norm", axes=[1], keepdims=1)
        powered = b.node("Pow", [norm, b.const(f"{name}_p2", np.array(p[1], np.float32))], b.unique(f"{name}_pow"),
                         f"{name}_pow")
        offset = b.node("Mul", [powered, b.const(f"{name}_p1", np.array(p[0], np.float32))],
                        b.unique(f"{name}_offset"), f"{name}_offset")
        return b.node("Sub", [x, offset], out, name)
    if kind in ("softmaxloss", "loss", "error"):
        return None
    if kind in ("pdist", "custom"):
        raise UnsupportedModelError(f"layer {name!r}: MatConvNet {kind} layers are not supported (a {kind} layer "
                                    f"{'computes a training loss' if kind == 'pdist' else 'runs MATLAB code'}; "
                                    "remove it from net.layers before converting)")
    raise UnsupportedModelError(f"layer {name!r}: MatConvNet layer type {kind!r} is not supported")


def _simplenn(net, b: _Builder):
    layers = _list(net.get("layers"))
    x = "input"
    for k, L in enumerate(layers):
        kind = str(L.get("type", "?"))
        name = str(L.get("name", f"layer{k + 1}")) or f"layer{k + 1}"
        params = _list(L.get("weights")) or [L.get("filters"), L.get("biases")]
        if kind.lower() == "bnorm" and L.get("weights") is None:
            params = [L.get("filters"), L.get("biases"), L.get("moments")]
        opts = {k2: v for k2, v in L.items() if k2 not in ("weights", "filters", "biases", "type", "name")}
        try:
            y = _layer(b, kind, name, x, b.unique(f"{name}_out"), params, opts)
        except UnsupportedModelError as e:
            raise UnsupportedModelError(f"SimpleNN layer {k + 1} of {len(layers)}, {e}") from None
        if y is not None:
            x = y
    return ["input"], [x]


def _dagnn(net, b: _Builder):
    layers = _list(net.get("layers"))
    params = {str(p.get("name")): p.get("value") for p in _list(net.get("params"))}
    produced, consumed = {}, set()
    var_names = {}

    def vname(v):
        v = str(v)
        if v not in var_names:
            var_names[v] = b.unique(v)
        return var_names[v]

    for k, L in enumerate(layers):
        kind = str(L.get("type", "?"))
        name = str(L.get("name", f"layer{k + 1}"))
        ins = [vname(v) for v in _list(L.get("inputs"))]
        outs = [vname(v) for v in _list(L.get("outputs"))]
        block = L.get("block") or {}
        opts = dict(block) if isinstance(block, dict) else {}
        ps = [params.get(str(p)) for p in _list(L.get("params"))]
        short = kind.lower().replace("dagnn.", "")
        try:
            if short == "concat":
                dim = int(opts.get("dim", 3))
                axis = {1: 2, 2: 3, 3: 1, 4: 0}[dim]
                y = b.node("Concat", ins, outs[0], name, axis=axis)
            elif short == "sum":
                y = b.node("Sum", ins, outs[0], name)
            elif short == "conv":
                opts.setdefault("pad", opts.get("pad", 0))
                y = _layer(b, "conv", name, ins[0], outs[0], ps if opts.get("hasBias", True) else ps[:1], opts)
            elif short == "convtranspose":
                y = _layer(b, "convt", name, ins[0], outs[0], ps, opts)
            elif short in ("batchnorm",):
                y = _layer(b, "bnorm", name, ins[0], outs[0], ps, opts)
            elif short == "crop":
                y = _crop(b, name, ins, outs[0], opts)
            elif short == "scale":
                y = _scale(b, name, ins[0], outs[0], ps, opts)
            else:
                y = _layer(b, short, name, ins[0] if ins else "", outs[0] if outs else b.unique(name), ps, opts)
        except UnsupportedModelError as e:
            raise UnsupportedModelError(f"DagNN layer {k + 1} of {len(layers)}, {e}") from None
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise UnsupportedModelError(f"DagNN layer {k + 1} {name!r} ({kind}) is malformed: {e}") from None
        if y is not None:  # a dropped loss layer neither produces nor consumes
            consumed.update(ins)
            produced[y] = k
    inputs = [v for v in dict.fromkeys(var_names.values()) if v not in produced]
    outputs = [v for v in produced if v not in consumed]
    return inputs[:1], outputs


def _crop(b: _Builder, name, ins, out, opts):
    """dagnn.Crop: input 1 cropped to input 2's height and width, starting at crop = [top left]."""
    top, left = (list(np.asarray(opts.get("crop", [0, 0]), np.float64).reshape(-1)) + [0, 0])[:2]
    starts = b.const(f"{name}_starts", np.array([int(top), int(left)], np.int64))
    shape = b.node("Shape", [ins[1]], b.unique(f"{name}_shape"), f"{name}_shape")
    size = b.node("Slice", [shape, b.const(f"{name}_s0", np.array([2], np.int64)),
                            b.const(f"{name}_s1", np.array([4], np.int64))], b.unique(f"{name}_size"), f"{name}_size")
    ends = b.node("Add", [starts, size], b.unique(f"{name}_ends"), f"{name}_ends")
    return b.node("Slice", [ins[0], starts, ends, b.const(f"{name}_axes", np.array([2, 3], np.int64))], out, name)


def _scale(b: _Builder, name, x, out, params, opts):
    """dagnn.Scale: x .* w + bias with w and bias per channel (size 1 x 1 x C)."""
    w = np.asarray(params[0], np.float32).reshape(1, -1, 1, 1)
    y = b.node("Mul", [x, b.const(f"{name}_w", w)], b.unique(f"{name}_mul") if len(params) > 1 else out, f"{name}_mul")
    if len(params) > 1 and params[1] is not None and np.size(params[1]) and opts.get("hasBias", True):
        return b.node("Add", [y, b.const(f"{name}_b", np.asarray(params[1], np.float32).reshape(1, -1, 1, 1))], out,
                      name)
    if y != out:
        return b.node("Identity", [y], out, f"{name}_out")
    return y


def _meta(net):
    """What the network says about its input: (size [h, w] or None, channels or None, per-channel mean or
    None, full mean image (H x W x C) or None, preprocessing options, class names)."""
    meta = net.get("meta") if isinstance(net.get("meta"), dict) else {}
    norm = meta.get("normalization") or net.get("normalization") or {}  # pre-2015: at the top level
    norm = norm if isinstance(norm, dict) else {}
    size, channels = None, None
    for source in (meta.get("inputSize"), norm.get("imageSize")):
        if source is not None and np.size(source) >= 2:
            v = [int(round(float(a))) for a in np.asarray(source, np.float64).reshape(-1)]
            size = v[:2]
            channels = v[2] if len(v) > 2 else None
            break
    mean, image = None, None
    avg = norm.get("averageImage")
    if avg is not None and np.size(avg):
        a = np.asarray(avg, np.float64)
        if a.size in (1, 3) or (a.ndim == 3 and a.shape[:2] == (1, 1)) or min(a.shape) == 1 and a.ndim <= 2 \
                and a.size <= 4:
            mean = [float(v) for v in a.reshape(-1)]
        else:
            image = a if a.ndim == 3 else a[:, :, None]
            size = size or list(image.shape[:2])
    options = {}
    if "keepAspect" in norm:
        options["resize"] = "shorter" if bool(np.asarray(norm["keepAspect"]).reshape(-1)[0]) else "stretch"
    if "border" in norm and np.size(norm["border"]):
        options["border"] = [int(v) for v in np.asarray(norm["border"], np.float64).reshape(-1)[:2]]
    if "cropSize" in norm and np.size(norm["cropSize"]):
        options["crop_fraction"] = float(np.asarray(norm["cropSize"], np.float64).reshape(-1)[0])
    if isinstance(norm.get("interpolation"), str):
        options["interpolation"] = norm["interpolation"].lower()
    classes = meta.get("classes") or net.get("classes")
    names = None
    if isinstance(classes, dict):
        desc = classes.get("description")
        names = _list(desc) if desc is not None and np.size(desc) else _list(classes.get("name"))
        names = [str(n) for n in names] if names else None
    return size, channels, mean, image, options, names


def _first_conv_channels(net, dag):
    """Input channels from the first convolution's filters (H x W x Cin x Cout)."""
    params = {str(p.get("name")): p.get("value") for p in _list(net.get("params"))} if dag else {}
    for L in _list(net.get("layers")):
        kind = str(L.get("type", "")).lower().replace("dagnn.", "")
        if kind != "conv":
            continue
        if dag:
            names = _list(L.get("params"))
            f = params.get(str(names[0])) if names else None
        else:
            f = (_list(L.get("weights")) or [L.get("filters")])[0]
        return int(np.asarray(f).shape[2]) if f is not None and np.ndim(f) >= 3 else 1 if f is not None else None
    return None


def matconvnet(path) -> onnx.ModelProto:
    """Convert a MatConvNet network (.mat, SimpleNN or DagNN) to an ONNX ModelProto."""
    net = _read_mat(path)
    if not isinstance(net, dict) or "layers" not in net:
        raise ModelLoadError(f"{path}: no MatConvNet network in this file (expected a struct with 'layers')")
    b = _Builder()
    b.used.add("input")
    layers = _list(net.get("layers"))
    dag = any(isinstance(L, dict) and ("block" in L or str(L.get("type", "")).startswith("dagnn.")) for L in layers)
    try:
        ins, outs = (_dagnn if dag else _simplenn)(net, b)
    except FvGraphError:
        raise
    except Exception as e:
        raise ModelLoadError(f"{path}: malformed MatConvNet network ({type(e).__name__}: {e})") from None
    size, channels, mean, image, options, names = _meta(net)
    channels = channels or (image.shape[2] if image is not None else None) or _first_conv_channels(net, dag) or 3
    first = ins[0]
    if image is not None:  # a full mean image: subtracted inside the graph, the model takes the raw image
        img = np.asarray(image, np.float32)
        if img.shape[2] != channels:
            img = np.broadcast_to(img.mean(axis=2, keepdims=True), img.shape[:2] + (channels,))
        raw = b.unique("image")
        b.nodes.insert(0, helper.make_node("Sub", [raw, b.const("average_image", img.transpose(2, 0, 1)[None])],
                                           [first], name=b.unique("subtract_average_image")))
        first = raw
    h, w = (size if size else ("height", "width"))
    x = helper.make_tensor_value_info(first, TensorProto.FLOAT, ["batch", channels, h, w])
    ys = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs]
    graph = helper.make_graph(b.nodes, Path(path).stem, [x], ys, b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="fvgraph.convert.matconvnet")
    model.ir_version = 8
    gray = channels == 1
    if mean is None or image is not None:
        mean = [0.0] * channels
    elif len(mean) != channels:
        mean = [float(np.mean(mean))] * channels
    spec = {"size": [h, w] if size else 224, "resize": "shorter", "crop": "center", "scale": 1.0,
            "mean": mean, "std": [1.0] * channels, "channels": "L" if gray else "RGB", **options}
    model.metadata_props.add(key="fvgraph.preprocess", value=json.dumps(spec))
    if names:
        model.metadata_props.add(key="fvgraph.classes", value=json.dumps(names))
    model.metadata_props.add(key="fvgraph.source", value=f"MatConvNet {'DagNN' if dag else 'SimpleNN'}: "
                                                         f"{os.path.basename(str(path))}")
    return model
