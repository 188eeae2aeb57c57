"""The paper's comparison figures: methods x images (Figure 3) and networks x images (Figure 4).

Both return a PIL image (shown inline in Jupyter) and the underlying arrays. Maps are drawn with
fvgraph.render: signed maps on a diverging scale centred at zero, positive maps (CAM, Grad-CAM, occlusion)
as heat laid over the image, saliency as the paper's black-and-white magnitude; each map is scaled by the
99.5th percentile of its magnitude (`percentile=`), values beyond saturate.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .image import load_with_picture
from .methods.registry import map_kind, parse_spec, run_spec
from .render import grid, picture


def methods_figure(model, images, methods, percentile=99.5, kind=None, alpha=0.5, auc=None):
    """One row per image, one column per method, the input first. Returns (PIL image, {name: array}).
    kind: None picks per method (fvgraph.methods.map_kind), or one of "signed", "heat", "abs", "rgb";
    alpha: opacity of heat maps laid over the image; auc: "deletion" or "insertion" writes that faithfulness
    AUC under each map (fvgraph.methods.faithfulness)."""
    from PIL import Image
    spec = model.preprocessing()
    rows, labels, arrays = [], [], {}
    for path in images:
        x, shown = load_with_picture(path, spec)
        from .methods.attribution import prediction
        k, label, _ = prediction(model, model.run(x)[0])
        labels.append(label)
        row = [shown]
        for m in methods:
            name = parse_spec(m)[0]
            rel = run_spec(model, x, m).relevance[0]
            arrays[f"{Path(path).stem}/{m}"] = rel
            pic = picture(rel, kind or map_kind(name), percentile, image=shown, alpha=alpha)
            if auc:
                pic = _caption(pic, f"{auc} AUC {model.evaluate(x, rel[None], auc).auc[0]:.3f}")
            row.append(pic)
        rows.append(row)
    return Image.fromarray(grid(rows, ["input"] + list(methods), labels)), arrays


def networks_figure(models: dict, images, method="guided", percentile=99.5, kind=None, alpha=0.5):
    """One row per image, one column per network (its predicted class and score under each map)."""
    from PIL import Image
    name = parse_spec(method)[0]
    rows, arrays, titles = [], {}, ["input"] + list(models)
    for path in images:
        row = None
        for net, model in models.items():
            spec = model.preprocessing()
            x, shown = load_with_picture(path, spec)
            if row is None:
                row = [shown]
            logits = model.run(x)[0]
            p = np.exp(logits - logits.max())
            p /= p.sum()
            k = int(np.argmax(logits))
            cls = model.class_names()
            rel = run_spec(model, x, method).relevance[0]
            arrays[f"{Path(path).stem}/{net}"] = rel
            pic = picture(rel, kind or map_kind(name), percentile, image=shown, alpha=alpha)
            label = f"{(cls[k] if cls else k)} {p[k]:.2f}"
            row.append(_caption(pic, label))
        rows.append(row)
    return Image.fromarray(grid(rows, titles)), arrays


def _caption(pic, text):
    from PIL import Image, ImageDraw
    im = Image.fromarray(pic).resize((160, 160))
    d = ImageDraw.Draw(im)
    d.rectangle((0, 146, 6 * len(text[:26]) + 4, 159), fill=(255, 255, 255))
    d.text((2, 147), text[:26], fill=(0, 0, 0))
    return np.asarray(im)
