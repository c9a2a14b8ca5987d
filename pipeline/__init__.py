"""The pipeline: its config, wiring (create_pipeline), progress lines, run summary, report and Kubeflow submission."""
import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # TFX 1.16 and tf.Transform expect tf-keras (Keras 2)
