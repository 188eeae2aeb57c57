"""One-off: fvgraph's metrics (fvgraph.methods.metrics) beside Quantus' versions on the same maps.

Not part of the package or the tests; Quantus and torch go in a separate venv, never the project's:

    python -m venv /tmp/qvenv && /tmp/qvenv/bin/pip install quantus torch==2.13.0 onnx onnxruntime
    /tmp/qvenv/bin/python tools/compare_quantus.py [--images 2] [--methods gradient,gradcam,random]

On the embedded EfficientNet-Lite0 and the demo photos: each method's map is computed once by fvgraph and
given to both (Quantus gets the per-pixel map as (N, 1, H, W), normalise=False, abs=False), the model is the
same ONNX file (a torch module whose forward runs fvgraph's engine), the class the predicted one. Known
differences, printed with the numbers: Quantus draws with numpy's global RNG (fvgraph from its seed), its
faithfulness correlation and ROAD index the map broadcast to every channel (single channel values, not
pixels), its ROAD reports whether the class is kept (fvgraph's curve is the probability; its `kept` is
Quantus' quantity), its pointing game has no tolerance (fvgraph's run here with 0) and counts any tied
maximum, its sparseness adds 1e-7. The box is a fixed central one: the photos have no annotation, the point is
the same number from both, not a good score.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def torch_model(model):
    """A torch module running the ONNX model through fvgraph (no gradients: Quantus only predicts here)."""
    import torch

    class Wrapped(torch.nn.Module):
        def forward(self, x):
            out = model.run(x.detach().cpu().numpy().astype(np.float32))
            return torch.as_tensor(np.asarray(out, np.float32).reshape(len(x), -1))
    return Wrapped().eval()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--methods", default="gradient,gradcam,random")
    ap.add_argument("--draws", type=int, default=50, help="faithfulness-correlation subsets")
    ap.add_argument("--sensitivity-draws", type=int, default=5)
    args = ap.parse_args()
    import quantus

    import fvgraph as fv
    from fvgraph.cli import DEMO_MODEL
    from fvgraph.image import demo_images, load_image
    from fvgraph.methods import metrics as M
    from fvgraph.methods.faithfulness import pixel_relevance
    from fvgraph.methods.registry import run_spec
    warnings.filterwarnings("ignore")
    model = fv.load(DEMO_MODEL)
    paths = demo_images()[:args.images]
    x = np.concatenate([load_image(p, model.preprocessing()) for p in paths])
    n, c, h, w = x.shape
    y = np.asarray(model.run(x)).reshape(n, -1).argmax(axis=1)
    tm = torch_model(model)
    box = (w // 4, h // 4, 3 * w // 4, 3 * h // 4)
    s = np.stack([M.box_mask(box, (h, w))] * n)[:, None].astype(float)
    fractions = np.arange(1, 10) / 10
    print(f"model {Path(DEMO_MODEL).name}, {n} photos {[Path(p).name for p in paths]}, classes {y.tolist()}, "
          f"quantus {quantus.__version__}")
    rows = []

    def row(metric, method, ours, theirs, note=""):
        ours, theirs = np.asarray(ours, float), np.asarray(theirs, float).reshape(-1)
        rows.append((metric, method, ours, theirs, note))
        print(f"{metric:26s} {method:10s} fvgraph {np.round(ours, 4).tolist()}  quantus {np.round(theirs, 4).tolist()}"
              f"  {note}")

    for meth in args.methods.split(","):
        rel = run_spec(model, x, meth, y).relevance
        a = pixel_relevance(rel, (h, w)).astype(np.float32)[:, None]  # (N, 1, H, W), as both score it
        common = dict(model=tm, x_batch=x, y_batch=y, a_batch=a, channel_first=True, device="cpu")
        q = quantus.Sparseness(normalise=False, disable_warnings=True)(**{**common, "a_batch": np.abs(a)})
        row("sparseness", meth, M.sparseness(a[:, 0]), q)
        q = quantus.Complexity(normalise=False, disable_warnings=True)(**{**common, "a_batch": np.abs(a)})
        row("complexity", meth, M.complexity(a[:, 0]), q)
        q = quantus.PointingGame(normalise=False, disable_warnings=True)(**common, s_batch=s)
        row("pointing-game (tol 0)", meth, M.pointing_game(a[:, 0], list(s[:, 0] > 0), tolerance=0), q)
        pos = np.maximum(a, 0)
        q = quantus.RelevanceMassAccuracy(normalise=False, disable_warnings=True)(**{**common, "a_batch": pos},
                                                                                   s_batch=s)
        row("energy-pointing", meth, M.energy_pointing(a[:, 0], list(s[:, 0] > 0)), q, "(Quantus: relevance mass "
            "accuracy of the positive part)")
        base = float(x.min())  # Quantus' "black": the image minimum
        np.random.seed(0)
        q = quantus.FaithfulnessCorrelation(nr_runs=args.draws, subset_size=224, normalise=False,
                                            perturb_baseline="black", return_aggregate=False,
                                            disable_warnings=True)(**common, softmax=True)
        ours = [M.faithfulness_correlation(model, x[i:i + 1], a[i:i + 1], y[i:i + 1], 224, args.draws, base)[0]
                for i in range(n)]
        row("faithfulness-correlation", meth, ours, q, "(different random subsets; Quantus per channel value)")
        ev = M.road(model, x, a, "morf", y, fractions)
        try:
            q = quantus.ROAD(percentages=[int(round(100 * f)) for f in fractions], noise=0.01, normalise=False,
                             return_aggregate=False, disable_warnings=True)(**common, softmax=True)
            q = np.asarray(q[0] if isinstance(q, list) and len(q) == 1 else q, float).reshape(n, -1).mean(axis=1)
        except Exception as e:  # noqa: BLE001 (a one-off tool: say what Quantus did and go on)
            q = np.full(n, np.nan)
            print(f"  quantus ROAD failed: {type(e).__name__}: {str(e)[:160]}")
        row("road-morf kept (mean)", meth, ev.extras["kept"].mean(axis=1), q,
            f"(fvgraph probability AUC {np.round(ev.auc, 4).tolist()})")
        # ROAD's core on its own: the same pixels imputed without noise by both
        from quantus.functions.perturb_func import noisy_linear_imputation
        flat = a[0, 0].reshape(-1)
        top = np.argsort(-flat, kind="stable")[:int(0.5 * h * w)]
        mask = np.zeros(h * w, bool)
        mask[top] = True
        theirs = noisy_linear_imputation(arr=x[0].copy(), indices=top, noise=0.0)
        mine = M.impute(x[0], mask.reshape(h, w), noise=0.0)
        row("road imputation max |diff|", meth, [np.abs(mine - x[0]).max()], [np.abs(theirs - x[0]).max()],
            f"(50% MoRF pixels; fvgraph vs Quantus max |diff| {np.abs(mine - theirs).max():.2e})")
    # max-sensitivity: the gradient, both with the same absolute radius (input_range (0, 1) for fvgraph)
    r = 0.02

    def explain(model=None, inputs=None, targets=None, **kw):  # Quantus passes these by name
        return np.asarray(run_spec(fvmodel, np.asarray(inputs, np.float32), "gradient", np.asarray(targets)).relevance)
    fvmodel = model
    a = explain(inputs=x, targets=y)
    np.random.seed(0)
    q = quantus.MaxSensitivity(nr_samples=args.sensitivity_draws, lower_bound=r, normalise=False,
                               disable_warnings=True)(model=tm, x_batch=x, y_batch=y, a_batch=a, channel_first=True,
                                                      explain_func=explain, device="cpu")
    ours = M.max_sensitivity(model, x, "gradient", r, args.sensitivity_draws, target=y, input_range=(0, 1))
    row("max-sensitivity", "gradient", ours, q, f"(uniform in [-{r}, {r}], different draws)")


if __name__ == "__main__":
    main()
