"""The pipeline: its config, wiring (create_pipeline), progress lines, run summary, report and Kubeflow submission."""
import common  # noqa: F401  (sets TF_USE_LEGACY_KERAS before any TensorFlow import)
