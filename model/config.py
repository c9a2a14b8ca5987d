"""The typed settings of the project's components (the `trainer:` and `evaluation:` keys of the
pipeline config), and the names a setting may take. Light on purpose: the config loads and is checked
before TensorFlow is imported. A field's `choices` metadata lists the values it accepts.
"""
from __future__ import annotations

from dataclasses import dataclass, field

# The registries' names: model/losses.py and model/towers.py map each to its code, and
# refuse to import if a name has none.
LOSSES = ("pointwise", "inbatch_softmax", "mixed")
OPTIMIZERS = ("adam", "adagrad", "sgd")
CATALOGS = ("vectors", "logs")


MAX_UNIFORM_NEGATIVES = 65_536  # trainer.uniform_negatives: draws per step, each an item-tower row


@dataclass
class TrainerConfig:
    # Defaults: the best configuration found on MovieLens (bench/movielens_quality.py); the original
    # design's pointwise setup is configs/original_design.yaml.
    train_steps: int = 3000          # the most training steps (early stopping may end sooner)
    epochs: int = 0                  # > 0: this many passes over the training split instead of train_steps
    eval_steps: int = 0              # 0 = the whole eval split
    batch_size: int = 128            # rows per training step
    optimizer: str = field(default="adam", metadata={"choices": OPTIMIZERS})
    learning_rate: float = 0.001     # of the optimizer
    loss: str = field(default="mixed", metadata={"choices": LOSSES})  # model/losses.py
    gamma: float = 10.0              # cosine x gamma (the original design's temperature trick)
    pos_weight: float = 1.2          # pointwise: weight of act=1 rows in the binary cross-entropy
    temperature: float = 0.2         # in-batch losses: softmax over cosine / temperature
    logq_correction: bool = True     # in-batch losses: subtract log of the item's click frequency
    uniform_negatives: int = 512     # in-batch losses: items drawn uniformly per step from the training
                                     # split's distinct items, extra negatives for every clicked row
    id_dropout: float = 0.3          # cold start: the share of item ids hidden each step (the same ids in
                                     # targets, candidates and histories: the OOV row), so the content
                                     # path ranks posts the model has no id for (model/towers.py); 0.3
                                     # chosen on MovieLens's freshness protocol (docs/quality.md)
    user_units: list[int] = field(default_factory=lambda: [256, 256, 128])  # the user tower's dense layers
    item_units: list[int] = field(default_factory=lambda: [256, 256, 128])  # the item tower's dense layers
    activation: str = "relu"         # hidden layers
    output_activation: str = "tanh"  # last layer, before L2 normalisation
    dropout: float = 0.0             # after each hidden layer
    batch_norm: bool = False         # after each hidden layer
    embedding_stddev: float = 0.01   # init of the trainable tables (the original's 0.0 froze them at 0;
                                     # near zero, ids start as a small residual on the pretrained vectors)
    normalize: bool = True           # L2-normalise the tower outputs (cosine similarity)
    seed: int = 1024                 # initialisation and the order of the training rows
    # Validation-driven training: the eval split's loss every eval_every_steps steps (every epoch
    # with `epochs`); training stops after `patience` evaluations without a better loss and keeps the
    # best weights. train_steps / epochs are then upper bounds. eval_every_steps 0: every half pass
    # over the training rows (a multiple of steps_per_execution, at most 250 steps), so the first
    # check comes before a small data set is seen twice.
    early_stopping: bool = True      # keep the best eval-loss weights, stop after `patience` worse checks
    eval_every_steps: int = 0        # steps between eval-loss checks (0: every half pass, see above)
    patience: int = 4                # checks without a better eval loss before training stops
    warn_passes: float = 20.0        # warn when training makes more passes over the data than this
                                     # (with early stopping: when it did not stop before)
    # Speed (model/trainer_input.py): a split whose transformed tensors fit in cache_max_mb is
    # read once and held in memory (0 = always stream from the files); steps_per_execution train
    # steps run in one call of the compiled step (fewer Python round trips; callbacks and progress
    # lines see every steps_per_execution-th step).
    cache_max_mb: int = 1024         # MB of transformed tensors a split may hold in memory
    steps_per_execution: int = 10    # training steps per call of the compiled step

    def validate(self) -> None:
        """ValueError naming the key, for a value no run can use."""
        if self.epochs < 0 or self.train_steps <= 0:
            raise ValueError("trainer.train_steps must be > 0 and trainer.epochs >= 0")
        if self.eval_every_steps < 0 or self.patience <= 0:
            raise ValueError("trainer.eval_every_steps must be >= 0 (0: every half pass) and trainer.patience > 0")
        if self.steps_per_execution <= 0 or self.cache_max_mb < 0:
            raise ValueError("trainer.steps_per_execution must be > 0 and trainer.cache_max_mb >= 0")
        uniform = self.uniform_negatives
        if uniform < 0 or (uniform and self.loss == "pointwise"):
            raise ValueError(f"trainer.uniform_negatives must be >= 0, and 0 with the pointwise loss (it has no "
                             f"candidates; set trainer.uniform_negatives: 0), got {uniform} with loss {self.loss}")
        if uniform > MAX_UNIFORM_NEGATIVES:  # each draw runs through the item tower at every step
            raise ValueError(f"trainer.uniform_negatives must be at most {MAX_UNIFORM_NEGATIVES:,} (each one is "
                             f"an item-tower row at every training step), got {uniform:,}")
        dropout = self.id_dropout
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(f"trainer.id_dropout must be a number in [0, 1) (the share of item ids hidden per "
                             f"step), got {dropout!r}")


@dataclass
class EvaluationConfig:
    ks: list[int] = field(default_factory=lambda: [10, 50, 100])  # Recall / HitRate / NDCG at these K
    # the catalog ranked: vectors (the item-vector file's items) | logs (items in the logs)
    catalog: str = field(default="vectors", metadata={"choices": CATALOGS})
    exclude_read: bool = True        # drop the user's read posts from the ranking
    bless_k: int = 50                # blessed only if Recall@bless_k beats popularity ...
    bless_margin: float = 0.0        # ... by more than this
    auc_floor: float = 0.0           # and, when > 0, the eval AUC reaches this
    max_users: int = 10_000          # eval users ranked against the full catalog: a stable sample by
                                     # user-id hash when there are more (cost ~ users x items); 0 = all
    min_eval_users: int = 200        # fewer eval users than this: not blessed (the lift is too uncertain) ...
    allow_few_eval_users: bool = False  # ... unless this is set
    bootstrap_samples: int = 1000    # resamples of the eval users for the confidence interval of the lift

    def validate(self) -> None:
        """ValueError naming the key, for a value no evaluation can use."""
        if self.min_eval_users < 0 or self.bootstrap_samples < 100:
            raise ValueError("evaluation.min_eval_users must be >= 0 and evaluation.bootstrap_samples >= 100")
        if not self.ks or not all(isinstance(k, int) and k > 0 for k in self.ks):
            raise ValueError(f"evaluation.ks must be positive integers, got {self.ks}")
