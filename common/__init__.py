"""What every layer uses: progress lines and the names the model and its clients share.

The project's packages are layered, each importing only from those before it:
common -> schema -> serving -> retrieval -> model -> components -> pipeline -> run_pipeline.py
(datagen, bench and tests sit on top). tests/pipeline/test_layers.py checks it.
"""

import os

# TFX 1.16 and tf.Transform expect tf-keras (Keras 2). Set here, the one place: every project package
# imports common first (its __init__), so it holds before any TensorFlow import of ours.
os.environ["TF_USE_LEGACY_KERAS"] = "1"

LAYERS = ("common", "schema", "serving", "retrieval", "model", "components", "pipeline")  # the packages, lowest first
