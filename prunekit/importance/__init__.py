"""Importance criteria: score the channels of each group (higher = more important, kept).

Every criterion returns, for each group, one float64 score per channel, aggregated over every
parameter slice coupled to the channel (producer rows, biases, norm γ/β, consumer columns).
Data-driven criteria take calibration batches (``data=``, an iterable of ``(inputs, targets)``;
at most ``max_batches=8`` are read) and raise a ValueError naming the fix when they get none.

name             data  score of channel c                                            normalisation
---------------  ----  ------------------------------------------------------------  -------------
l1               no    Σ |w| over c's slices                                         none
l2               no    sqrt(Σ w²) over c's slices                                    none
random           no    uniform in [0, 1), seeded                                     -
bn_scale         no    Σ |γ| of the norm scales on c (l1 if the group has none)      none
fpgm             no    Σ_j ‖v_c − v_j‖₂, v = c's concatenated slices                 none
lamp             no    s_c / Σ_{j: s_j ≥ s_c} s_j, s = Σ w² over c's slices          (0, 1], max 1
taylor           yes   |Σ w · mean_b ∂L_b/∂w| over c's slices (Molchanov 2019)       none
hessian          yes   ½ Σ mean_b (∂L_b/∂w)² · w² over c's slices (OBD, Fisher)      none
activation_mean  yes   mean |a_c| at the group's activation site                     none
apoz             yes   1 − fraction of a_c ≤ 0 (the zeros after a ReLU)              [0, 1]
entropy          yes   entropy of c's per-sample pooled activation (10 bins, nats)   [0, ln 10]
wanda            yes   Σ_consumers Σ |W_{:,c}| · ‖X_c‖₂ over the calibration data    none

"None" means raw values in the criterion's units; ``scope="global"`` divides every group's
scores by their mean before ranking them together. The activation site of a group is the output
of the nonlinearity after its producer (else the producer's output), read from the exported graph;
see `prunekit.importance.activation`. Gradient criteria run the eager model in eval mode with
``loss_fn(model, batch)`` (default: cross-entropy of ``forward_fn(model, inputs)``) and never
leave ``.grad`` set.
`prunekit.importance.testing.calibration_batches` makes stand-in data for tests.

>>> import prunekit as pk
>>> pk.importance.list("act*")
['activation_mean']
"""

from prunekit.importance import activation as _activation  # noqa: F401 - registers the rest
from prunekit.importance import fpgm as _fpgm  # noqa: F401
from prunekit.importance import gradient as _gradient  # noqa: F401
from prunekit.importance import lamp as _lamp  # noqa: F401
from prunekit.importance import magnitude as _magnitude  # noqa: F401 - registers l1, l2, random
from prunekit.importance import norm_scale as _norm_scale  # noqa: F401
from prunekit.importance.base import Importance
from prunekit.importance.registry import get, list, register

__all__ = ["Importance", "get", "list", "register"]
