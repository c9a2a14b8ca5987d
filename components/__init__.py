"""Custom TFX components and the module files Transform and Trainer load."""
import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # TFX 1.16 and tf.Transform expect tf-keras (Keras 2)
