"""The pipeline: its config, wiring (create_pipeline), the inputs' checks, the local and Kubeflow runners,
progress lines, run summary and report."""
import common  # noqa: F401  (sets TF_USE_LEGACY_KERAS before any TensorFlow import)
