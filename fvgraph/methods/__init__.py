"""Visualization methods, built on the executor (forward) and the reverse engine."""

# How each method's result is best shown (fvgraph.render kinds)
MAP_KIND = {"gradient": "abs", "input-x-gradient": "signed", "deconvnet": "rgb", "guided": "rgb",
            "cam": "heat", "gradcam": "heat", "occlusion": "heat"}

DEMO_METHODS = ("gradient", "deconvnet", "guided", "input-x-gradient", "lrp-epsilon", "lrp-zplus", "lrp-alphabeta",
                "lrp-composite", "cam", "gradcam")


def map_kind(method: str) -> str:
    return MAP_KIND.get(method, "signed")
