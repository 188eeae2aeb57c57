"""Visualization methods, built on the lowered reverse pass (fvgraph.reverse) and the model's engine:
attribution (the presets), cam (the class activation maps), sampling (integrated gradients, SmoothGrad),
occlusion (+ incremental), reconstruction, and faithfulness (deletion, insertion). registry is the table
of them all: names, options, map kinds, what exports."""

DEMO_METHODS = ("gradient", "deconvnet", "guided", "input-x-gradient", "lrp-epsilon", "lrp-zplus", "lrp-alphabeta",
                "lrp-composite", "cam", "gradcam")
