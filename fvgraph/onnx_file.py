"""Reads an .onnx file without copying its weights.

`onnx.load` reads the whole file into memory and then parses it, copying every weight once more: a VGG-16 file
(553 MB) peaks at 1.1 GB before anything runs. Here the file is memory-mapped and its protobuf wire format is
scanned for the initializers' `raw_data` fields (ModelProto.graph = field 7, GraphProto.initializer = 5,
TensorProto.raw_data = 9). The rest of the model (nodes, small tensors) is parsed as usual; each large
weight becomes

- a read-only NumPy view of the mapped file (what fvgraph's own executor computes with), and
- an ONNX external-data reference (location, offset, length) into the same file, which is how onnxruntime gets
  it: it maps the file itself, so the weights live once, in the page cache, however many sessions use them.

Weights already stored as ONNX external data are mapped from their files the same way.
"""
from __future__ import annotations

import mmap
import os
import sys
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto

MIN_MAPPED_BYTES = 1024  # smaller tensors are parsed (copied) as usual


@dataclass(frozen=True)
class FileRef:
    """Where a weight's bytes lie: a file (absolute path), an offset and a length."""
    path: str
    offset: int
    length: int


def _varint(buf, pos):
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(buf, start, end):
    """(field number, start of the field's key, start of its payload, end of its payload)."""
    pos = start
    while pos < end:
        key, p = _varint(buf, pos)
        wire = key & 7
        if wire == 0:
            _, q = _varint(buf, p)
        elif wire == 1:
            q = p + 8
        elif wire == 5:
            q = p + 4
        elif wire == 2:
            n, p = _varint(buf, p)
            q = p + n
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if q > end:
            raise ValueError("a field runs past the end of its message")
        yield key >> 3, pos, p, q
        pos = q


def _encode_varint(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if not v:
            out.append(b)
            return bytes(out)
        out.append(b | 0x80)


def _mapped(path: str):
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return b""
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def read_model(path: str) -> tuple[onnx.ModelProto, dict[str, np.ndarray], dict[str, FileRef]]:
    """The model with its large weights left in the file: (proto whose large initializers are external-data
    references, {name: read-only array over the mapped file}, {name: FileRef})."""
    path = os.path.abspath(path)
    buf = _mapped(path)
    rest = bytearray()
    tensors = []
    for num, key_at, start, end in _fields(buf, 0, len(buf)):
        if num != 7:
            rest += buf[key_at:end]
            continue
        graph = bytearray()
        for gnum, gkey, gstart, gend in _fields(buf, start, end):
            if gnum != 5:
                graph += buf[gkey:gend]
                continue
            header, raw = bytearray(), None
            for tnum, tkey, tstart, tend in _fields(buf, gstart, gend):
                if tnum == 9 and tend - tstart >= MIN_MAPPED_BYTES:
                    raw = (tstart, tend - tstart)
                else:
                    header += buf[tkey:tend]
            t = TensorProto()
            t.ParseFromString(bytes(header))
            tensors.append((t, raw))
        rest += _encode_varint((7 << 3) | 2) + _encode_varint(len(graph)) + graph
    proto = onnx.ModelProto()
    proto.ParseFromString(bytes(rest))
    arrays, refs = {}, {}
    base = os.path.dirname(path)
    for t, raw in tensors:
        if raw is not None:
            ref = FileRef(path, raw[0], raw[1])
            set_external(t, os.path.relpath(ref.path, base), ref.offset, ref.length)
        elif t.data_location == TensorProto.EXTERNAL:
            ref = _external_ref(t, base)
        else:
            ref = None
        if ref is not None:
            arrays[t.name] = _view(t, ref, buf if ref.path == path else None)
            refs[t.name] = ref
        proto.graph.initializer.append(t)
    return proto, arrays, refs


def set_external(t: TensorProto, location: str, offset: int, length: int):
    """Declare t's data as ONNX external data: `length` bytes at `offset` of `location` (relative to the
    model's folder)."""
    t.data_location = TensorProto.EXTERNAL
    del t.external_data[:]
    for k, v in (("location", location), ("offset", str(offset)), ("length", str(length))):
        e = t.external_data.add()
        e.key, e.value = k, v


def _external_ref(t: TensorProto, base: str) -> FileRef:
    info = {e.key: e.value for e in t.external_data}
    loc = info.get("location", "")
    full = os.path.realpath(os.path.join(base, loc))
    if not loc or os.path.isabs(loc) or not full.startswith(os.path.realpath(base) + os.sep):
        raise ValueError(f"tensor {t.name!r}: external data location {loc!r} is not a file beside the model")
    if not os.path.isfile(full):
        raise ValueError(f"tensor {t.name!r}: its external data file {loc!r} is missing")
    offset = int(info.get("offset", 0))
    length = int(info["length"]) if "length" in info else os.path.getsize(full) - offset
    return FileRef(full, offset, length)


def _view(t: TensorProto, ref: FileRef, buf) -> np.ndarray:
    from .onnx_types import numpy_dtype
    dtype = numpy_dtype(t.data_type, f"tensor {t.name!r}")
    if dtype.kind == "b" or sys.byteorder != "little" or dtype.kind in "OUS":
        raise ValueError(f"tensor {t.name!r}: raw data of type {dtype} cannot be mapped")
    dims = [int(d) for d in t.dims]
    count = int(np.prod(dims, dtype=np.float64)) if dims else 1
    if ref.length != count * dtype.itemsize:
        raise ValueError(f"tensor {t.name!r} declares shape {dims} ({count} values) but stores "
                         f"{ref.length / dtype.itemsize:g}: the file is corrupt")
    if buf is None:
        buf = _mapped(ref.path)
    if ref.offset + ref.length > len(buf):
        raise ValueError(f"tensor {t.name!r}: its data runs past the end of {os.path.basename(ref.path)}")
    return np.frombuffer(buf, dtype=dtype, count=count, offset=ref.offset).reshape(dims)


def save_model(proto, out):
    """An ONNX model written whole or not at all (fvgraph.files.write_atomic)."""
    from .files import write_atomic
    return write_atomic(out, lambda tmp: onnx.save(proto, tmp))


def write_metadata(model, out, preprocess=None, labels=None, overwrite=False, **load_options):
    """A copy of the model file with fvgraph's preprocessing (merged over what it holds) and class labels in
    its metadata, so later loads need neither; the model is loaded with them first (load_options as
    fvgraph.load takes them), so a copy fvgraph cannot use is never written. Returns (preprocessing, labels)."""
    import json
    from pathlib import Path

    from .contract import load_labels, parse_preprocess
    from .errors import InputError, refuse_overwrite
    from .model import load
    spec, names = parse_preprocess(preprocess), load_labels(labels)
    if not spec and not names:
        raise InputError("give --preprocess and/or --labels to write into the model")
    out = Path(out)
    if out.resolve() == Path(model).resolve():
        raise InputError(f"{out} is the model itself; write the copy elsewhere")
    refuse_overwrite(out, overwrite)
    load(model, preprocess=preprocess, labels=labels, **load_options)
    proto = onnx.load(model)
    meta = {p.key: p.value for p in proto.metadata_props}
    if spec:
        meta["fvgraph.preprocess"] = json.dumps({**json.loads(meta.get("fvgraph.preprocess", "{}")), **spec})
    if names:
        meta["fvgraph.classes"] = json.dumps(names)
    del proto.metadata_props[:]
    for k, v in meta.items():
        proto.metadata_props.add(key=k, value=v)
    save_model(proto, out)
    return spec, names
