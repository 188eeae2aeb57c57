"""Visualization methods, built on the lowered reverse pass (fvgraph.reverse) and the model's engine:
attribution (the presets), cam (the class activation maps), sampling (integrated gradients, SmoothGrad),
occlusion (+ incremental), reconstruction, and faithfulness (deletion, insertion)."""

# How each method's result is best shown (fvgraph.render kinds)
MAP_KIND = {"gradient": "abs", "smoothgrad": "abs", "input-x-gradient": "signed", "integrated-gradients": "signed",
            "deconvnet": "rgb", "guided": "rgb", "random": "heat", "occlusion": "heat",
            **{m: "heat" for m in ("cam", "gradcam", "gradcam++", "layercam", "xgradcam", "hirescam", "scorecam",
                                   "eigencam", "rollout")}}

DEMO_METHODS = ("gradient", "deconvnet", "guided", "input-x-gradient", "lrp-epsilon", "lrp-zplus", "lrp-alphabeta",
                "lrp-composite", "cam", "gradcam")


def map_kind(method: str) -> str:
    return MAP_KIND.get(method, "signed")
