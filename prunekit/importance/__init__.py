"""Importance criteria: score the channels of each group (higher = more important, kept).

Every criterion returns, for each group, one float64 score per channel, aggregated over every
parameter slice coupled to the channel (producer rows, biases, norm γ/β, consumer columns).

name             data  score of channel c                                            normalisation
---------------  ----  ------------------------------------------------------------  -------------
l1               no    Σ |w| over c's slices                                         none
l2               no    sqrt(Σ w²) over c's slices                                    none
random           no    uniform in [0, 1), seeded                                     -
bn_scale         no    Σ |γ| of the norm scales on c (l1 if the group has none)      none
fpgm             no    Σ_j ‖v_c − v_j‖₂, v = c's concatenated slices                 none
lamp             no    s_c / Σ_{j: s_j ≥ s_c} s_j, s = Σ w² over c's slices          (0, 1], max 1

"None" means raw values in the criterion's units; ``scope="global"`` divides every group's
scores by their mean before ranking them together.
"""

from prunekit.importance import fpgm as _fpgm  # noqa: F401 - registers fpgm
from prunekit.importance import lamp as _lamp  # noqa: F401 - registers lamp
from prunekit.importance import magnitude as _magnitude  # noqa: F401 - registers l1, l2, random
from prunekit.importance import norm_scale as _norm_scale  # noqa: F401 - registers bn_scale
from prunekit.importance.base import Importance
from prunekit.importance.registry import get, list, register

__all__ = ["Importance", "get", "list", "register"]
