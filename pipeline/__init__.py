"""Pipeline configuration and wiring (create_pipeline), free of I/O."""
import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # TFX 1.16 and tf.Transform expect tf-keras (Keras 2)
