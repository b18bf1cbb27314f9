"""Benchmark the SoC filter: cell-steps per second, vectorised against a loop over cells.

Run on demand (not in the test suite):
    .venv/bin/python bench/twin_estimator.py [--packs 1000] [--cells 16] [--seconds 2] [--json]

The vectorised filter updates every cell of ``packs x cells`` in one call per time step (target
SPEC section 8: >= 1M cell-steps/s). The baseline, measured in the same run, is the same filter
called once per cell with 0-d arrays (numpy scalars) in a plain Python loop, over a subset of
``--loop-cells`` cells; the ratio is what the vectorisation buys on this machine.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from twin.cell_model import CellModel, FloatArray
from twin.cell_params import CellParameters, RcBranch
from twin.estimation import EkfState, SocEstimator


def bench_params() -> CellParameters:
    """An NMC-like 5 Ah cell with two RC branches and SoC-dependent tables."""
    soc = [0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    ocv = [3.0, 3.35, 3.45, 3.55, 3.62, 3.68, 3.74, 3.82, 3.91, 4.0, 4.08, 4.18]
    n = len(soc)
    r0 = [0.03 - 0.005 * s for s in soc]
    return CellParameters(
        name="bench-nmc",
        chemistry="NMC",
        source="synthetic benchmark cell",
        capacity_ah=5.0,
        soc_grid=soc,
        ocv_v=ocv,
        r0_ohm=r0,
        rc=[
            RcBranch(r_ohm=[0.01] * n, tau_s=[10.0 + 5 * s for s in soc]),
            RcBranch(r_ohm=[0.015] * n, tau_s=[200.0] * n),
        ],
        activation_energy_j_per_mol=20_000.0,
        voltage_min_v=2.5,
        voltage_max_v=4.2,
        current_max_charge_a=5.0,
        current_max_discharge_a=10.0,
    )


def measure(
    estimator: SocEstimator, state: EkfState, shape: tuple[int, ...], seconds: float
) -> tuple[float, EkfState]:
    """Cell-steps per second of ``update`` on arrays of ``shape`` for about ``seconds``."""
    rng = np.random.default_rng(0)
    current: FloatArray = rng.uniform(-5.0, 5.0, shape)
    voltage: FloatArray = 3.7 + 0.01 * rng.standard_normal(shape)
    temperature: FloatArray = np.full(shape, 25.0)
    for _ in range(3):  # warm-up
        state = estimator.update(state, current, voltage, temperature, 1.0)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        state = estimator.update(state, current, voltage, temperature, 1.0)
        steps += 1
    elapsed = time.perf_counter() - start
    return steps * int(np.prod(shape)) / elapsed, state


def measure_loop(estimator: SocEstimator, n_cells: int, seconds: float) -> float:
    """Cell-steps per second of the same filter called once per cell (0-d arrays)."""
    rng = np.random.default_rng(0)
    states = [estimator.initial(np.float64(0.5)) for _ in range(n_cells)]
    current = [np.float64(x) for x in rng.uniform(-5.0, 5.0, n_cells)]
    voltage = [np.float64(3.7 + 0.01 * x) for x in rng.standard_normal(n_cells)]
    temperature = np.float64(25.0)
    cell_steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for k in range(n_cells):
            states[k] = estimator.update(states[k], current[k], voltage[k], temperature, 1.0)
        cell_steps += n_cells
    return cell_steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--packs", type=int, default=1000)
    parser.add_argument("--cells", type=int, default=16, help="cells per pack")
    parser.add_argument("--loop-cells", type=int, default=200, help="cells in the loop baseline")
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args()

    estimator = SocEstimator(CellModel(bench_params()))
    shape = (args.packs, args.cells)
    vectorised, state = measure(
        estimator, estimator.initial(np.full(shape, 0.5)), shape, args.seconds
    )
    loop = measure_loop(estimator, args.loop_cells, args.seconds)
    results = {
        "packs": args.packs,
        "cells_per_pack": args.cells,
        "states": list(estimator.states),
        "vectorised_cell_steps_per_s": vectorised,
        "loop_cells": args.loop_cells,
        "loop_cell_steps_per_s": loop,
        "speedup": vectorised / loop,
        "target_cell_steps_per_s": 1_000_000,
        "meets_target": vectorised >= 1_000_000,
        "finite": bool(np.all(np.isfinite(state.p))),
    }
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"SoC EKF, states {', '.join(estimator.states)}")
    print(f"vectorised {args.packs} x {args.cells} cells: {vectorised / 1e6:8.2f} M cell-steps/s")
    print(f"loop over {args.loop_cells} cells (0-d arrays): {loop / 1e6:8.4f} M cell-steps/s")
    print(
        f"speed-up: {vectorised / loop:.0f}x; target >= 1 M cell-steps/s: "
        f"{'met' if results['meets_target'] else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
