"""Energy per inference: an ESTIMATE from operation and memory-access counts (DESIGN §5).

Costs are the 45 nm figures of Horowitz, "Computing's energy problem" (ISSCC 2014): an fp32
multiply 3.7 pJ plus an fp32 add 0.9 pJ per MAC, 640 pJ per 32-bit DRAM read, 5 pJ per 32-bit
SRAM access. The model per inference:

    nonzero MACs x 4.6 pJ
  + nonzero weights x 640 pJ        (every weight read once from DRAM)
  + activation elements read and written x 5 pJ   (from on-chip SRAM)

It ranks models and shows where energy goes; it is not a power measurement.
"""

from __future__ import annotations

__all__ = ["MAC_PJ", "DRAM_READ_PJ", "SRAM_ACCESS_PJ", "estimate_energy"]

MAC_PJ = 3.7 + 0.9  # fp32 multiply + fp32 add
DRAM_READ_PJ = 640.0  # 32-bit DRAM read
SRAM_ACCESS_PJ = 5.0  # 32-bit SRAM read (used for writes too)
_PJ_PER_MJ = 1e9


def estimate_energy(
    nonzero_macs: float, nonzero_weights: int, activation_elements: int
) -> dict[str, float]:
    """Millijoules per inference, total and by term: `{"total_mj", "macs_mj", "weights_mj",
    "activations_mj"}`.

    >>> round(estimate_energy(1000, 100, 50)["total_mj"] * 1e9)  # pJ: 4600 + 64000 + 250
    68850
    """
    macs = nonzero_macs * MAC_PJ / _PJ_PER_MJ
    weights = nonzero_weights * DRAM_READ_PJ / _PJ_PER_MJ
    activations = activation_elements * SRAM_ACCESS_PJ / _PJ_PER_MJ
    return {
        "total_mj": macs + weights + activations,
        "macs_mj": macs,
        "weights_mj": weights,
        "activations_mj": activations,
    }
