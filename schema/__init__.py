"""The feature spec (single source of truth) and the curated TFDV schema."""
import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # TFX 1.16 and tf.Transform expect tf-keras (Keras 2)
