"""One-off check of fvgraph on Keras models exported by tf2onnx (NHWC inputs), as TensorFlow users export them:
random weights (no download), Keras' own preprocessing as the model expects it. Not part of the suite:

    python -m venv /tmp/tfvenv && /tmp/tfvenv/bin/pip install tensorflow-cpu tf2onnx onnx onnxruntime
    /tmp/tfvenv/bin/python tools/keras_exports.py OUTDIR      # writes OUTDIR/<name>.onnx and OUTDIR/<name>.json
then, with fvgraph installed:  fvgraph explain OUTDIR/mobilenet_v2.onnx photo.jpg --preprocess tf
"""
import json
import os
import sys

import numpy as np

MODELS = {  # name: (keras.applications constructor, preprocessing preset, input size)
    "mobilenet_v2": ("MobileNetV2", "tf", 224),
    "resnet50": ("ResNet50", "caffe", 224),
    "efficientnet_b0": ("EfficientNetB0", "raw", 224),   # rescales 0..255 inside; fvgraph feeds 0..255 with raw,scale=1
    "vgg16": ("VGG16", "caffe", 224),
    "densenet121": ("DenseNet121", "imagenet", 224),
    "convnext_tiny": ("ConvNeXtTiny", "raw", 224),
}


def main(out):
    import tensorflow as tf
    import tf2onnx
    os.makedirs(out, exist_ok=True)
    for name, (ctor, preset, size) in MODELS.items():
        tf.keras.utils.set_random_seed(0)
        net = getattr(tf.keras.applications, ctor)(weights=None, input_shape=(size, size, 3))
        spec = (tf.TensorSpec((None, size, size, 3), tf.float32, name="input"),)
        path = os.path.join(out, f"{name}.onnx")
        tf2onnx.convert.from_keras(net, input_signature=spec, opset=13, output_path=path)
        x = np.random.default_rng(0).random((2, size, size, 3)).astype(np.float32) * 255
        y = net(x, training=False).numpy()
        with tf.GradientTape() as tape:
            xt = tf.constant(x)
            tape.watch(xt)
            score = net(xt, training=False)[:, 3]
        grad = tape.gradient(score, xt).numpy()
        np.savez(os.path.join(out, f"{name}.npz"), x=x, y=y, grad=grad)
        with open(os.path.join(out, f"{name}.json"), "w") as f:
            json.dump({"preset": preset, "size": size}, f)
        print(name, "exported", flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "keras-exports")
