"""The two-tower model: its config, the Transform and Trainer module files (preprocessing.py,
trainer.py: run_fn), towers, losses, the Trainer's input and warm start."""
import common  # noqa: F401  (sets TF_USE_LEGACY_KERAS before any TensorFlow import)
