"""Benchmark the vectorised cell/pack model: cell-steps per second for a fleet.

Run on demand:  .venv/bin/python bench/twin_model.py [--packs 1000] [--cells 16] [--steps 200]

Target (SPEC section 8): >= 10M cell-steps/s for 1,000 packs x 16 cells at 1 s steps. The
baseline, measured in the same run, is the same arithmetic in a plain Python loop over cells
(one CellModel call per cell, numpy scalars), on a subset of cells.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from twin.cell_model import CellModel
from twin.cell_params import CellParameters
from twin.pack_model import PackModel

PARAMS = CellParameters(
    name="bench NMC",
    chemistry="NMC",
    source="benchmark: 101-point tables varying with SoC, two RC branches",
    capacity_ah=5.0,
    soc_grid=list(np.linspace(0.0, 1.0, 101)),
    ocv_v=list(3.0 + 1.2 * np.linspace(0.0, 1.0, 101) ** 0.8),
    r0_ohm=[0.02] * 101,
    rc=[
        {"r_ohm": [0.01] * 101, "tau_s": [20.0] * 101},
        {"r_ohm": [0.01] * 101, "tau_s": [600.0] * 101},
    ],
    docv_dt_v_per_k=[1e-4] * 101,
    activation_energy_j_per_mol=25_000.0,
    hysteresis_v=0.005,
    hysteresis_rate=20.0,
    voltage_min_v=2.5,
    voltage_max_v=4.2,
    current_max_charge_a=5.0,
    current_max_discharge_a=10.0,
)


def vectorised(packs: int, cells: int, steps: int) -> float:
    """Cell-steps/s of PackModel over all packs at once."""
    model = PackModel.build(PARAMS, n_packs=packs, cells_in_series=cells, seed=1)
    state = model.initial_state(np.linspace(0.2, 0.9, packs))
    current = np.sin(np.linspace(0, 3, packs)) * 5.0
    state = model.step(state, current, 25.0, 1.0)  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        state = model.step(state, current, 25.0, 1.0)
        model.cell_voltages(state, current)
    return packs * cells * steps / (time.perf_counter() - start)


def python_loop(n_cells: int, steps: int) -> float:
    """Cell-steps/s of the same model called cell by cell in a Python loop."""
    models = [CellModel(PARAMS, 1.0 + 0.01 * k, 1.0) for k in range(n_cells)]
    states = [m.initial_state(0.5) for m in models]
    start = time.perf_counter()
    for _ in range(steps):
        for k, m in enumerate(models):
            states[k] = m.step(states[k], -2.5, 25.0, 1.0)
            m.terminal_voltage(states[k], -2.5)
    return n_cells * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packs", type=int, default=1000)
    parser.add_argument("--cells", type=int, default=16)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    fast = vectorised(args.packs, args.cells, args.steps)
    slow = python_loop(64, 20)
    result = {
        "packs": args.packs,
        "cells_per_pack": args.cells,
        "vectorised_cell_steps_per_s": fast,
        "python_loop_cell_steps_per_s": slow,
        "speedup": fast / slow,
        "target_cell_steps_per_s": 10_000_000,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(f"{key:<30} {value:>16,.1f}")


if __name__ == "__main__":
    main()
