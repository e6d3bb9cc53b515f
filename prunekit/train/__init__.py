"""Fine-tuning: a small seeded training loop with callbacks, distillation and exact resume.

>>> import prunekit.train as pkt
>>> history = pkt.fit(model, train, epochs=3, lr=0.05, eval_data=test)  # doctest: +SKIP
>>> pkt.evaluate(model, test)["accuracy"]  # doctest: +SKIP
"""

from prunekit.train._checkpoint import load_checkpoint, save_checkpoint
from prunekit.train._eval import cross_entropy, default_forward, evaluate
from prunekit.train._loop import fit
from prunekit.train._seed import get_rng_state, set_rng_state, set_seed
from prunekit.train._state import Callback, History, TrainState
from prunekit.train.regularizers import bn_l1, group_lasso

__all__ = [
    "Callback",
    "History",
    "TrainState",
    "bn_l1",
    "cross_entropy",
    "default_forward",
    "evaluate",
    "fit",
    "get_rng_state",
    "group_lasso",
    "load_checkpoint",
    "save_checkpoint",
    "set_rng_state",
    "set_seed",
]
