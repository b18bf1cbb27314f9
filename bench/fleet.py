"""Benchmark fleet mode: cell-steps per second of ``simulators.fleet.Fleet``, 1 s steps.

Run on demand (not in the test suite):
    .venv/bin/python bench/fleet.py [--packs 1000] [--cells 16] [--hours 1]
                                    [--chemistry nmc_lgm50|lfp_a123] [--json]

Target (SPEC section 8): >= 10M cell-steps/s for 1,000 packs x 16 cells at 1 s steps, everything
of a fleet step included (profile, voltage guard, plant step, ageing every virtual hour). Two
baselines are measured in the same run, because the machine is shared and noisy:

* ``loop``: the same ``Fleet`` code with one pack per fleet, called pack after pack in a plain
  Python loop over ``--loop-packs`` packs (numpy over the 16 cells of a pack): the speed-up is
  what vectorising over packs buys;
* ``plant_only``: the bare ``PackPlant.step`` plus one ``terminal_voltage`` per step on the same
  fleet (the twin model's floor): the ratio shows what the fleet adds to the physics.

The three are measured in interleaved slices of 100 steps, so that all see the same machine load;
rates are totals over the run (wall clock), with the fleet's best slice and its rate per CPU
second alongside, and the load average, since other processes on a 2-core machine take time from
the benchmark. One virtual hour (the default) includes one ageing update.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable

import numpy as np

from simulators.fleet import AgeSpread, Fleet
from simulators.plant import PackPlant
from simulators.profiles import domestic_pv_self_consumption
from twin.cell_params import load_builtin
from twin.pack_model import PackModel

TARGET = 10_000_000


def make_fleet(name: str, packs: int, cells: int, seed: int = 1) -> Fleet:
    """A mixed-age fleet on the domestic PV profile."""
    params = load_builtin(name)
    profile = domestic_pv_self_consumption(3, 60.0, seed, params.capacity_ah)
    spread = AgeSpread(max_years=4.0, replaced_fraction=0.1)
    return Fleet(params, packs, cells, profile, age_spread=spread, seed=seed)


class Loop:
    """The same fleet code with one pack per fleet, the packs in a plain Python loop."""

    def __init__(self, name: str, packs: int, cells: int) -> None:
        self.fleets = [make_fleet(name, 1, cells, seed=k + 1) for k in range(packs)]
        self.cell_steps_per_step = packs * cells
        for f in self.fleets:
            f.advance(5, 1.0)

    def step(self, steps: int) -> None:
        """``steps`` steps of every one-pack fleet, one after the other."""
        for f in self.fleets:
            f.advance(steps, 1.0)


class PlantOnly:
    """The bare plant step plus one terminal-voltage evaluation per step: the model's floor."""

    def __init__(self, name: str, packs: int, cells: int) -> None:
        params = load_builtin(name)
        model = PackModel.build(params, n_packs=packs, cells_in_series=cells, seed=1)
        self.plant = PackPlant(model, 0.5)
        self.current = make_fleet(name, packs, cells).requested_current_a(np.arange(3600.0))
        self.cell_steps_per_step = packs * cells
        self.k = 0
        self.step(1)

    def step(self, steps: int) -> None:
        """``steps`` steps."""
        plant, cell, current = self.plant, self.plant.model.cell, self.current
        for _ in range(steps):
            i = current[self.k % len(current)]
            cell.terminal_voltage(plant.state, i[:, None])
            plant.step(i, 1.0)
            self.k += 1


def timed(fn: Callable[[int], object], steps: int) -> float:
    start = time.perf_counter()
    fn(steps)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--packs", type=int, default=1000)
    parser.add_argument("--cells", type=int, default=16, help="series cells per pack")
    parser.add_argument("--hours", type=float, default=1.0, help="virtual hours (1 s steps)")
    parser.add_argument("--slice", type=int, default=100, help="steps per interleaved slice")
    parser.add_argument("--chemistry", default="nmc_lgm50", help="nmc_lgm50 or lfp_a123")
    parser.add_argument("--loop-packs", type=int, default=20, help="packs in the loop baseline")
    parser.add_argument("--loop-steps", type=int, default=25, help="loop steps per slice")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args()

    fleet = make_fleet(args.chemistry, args.packs, args.cells)
    fleet.advance(20, 1.0)  # warm-up: tables for dt = 1 s, caches
    loop = Loop(args.chemistry, args.loop_packs, args.cells)
    floor = PlantOnly(args.chemistry, args.packs, args.cells)
    cells_total = args.packs * args.cells
    steps = max(args.slice, round(args.hours * 3600))
    times: dict[str, list[float]] = {"fleet": [], "loop": [], "plant_only": []}
    updates = 0
    done = 0
    cpu = 0.0
    while done < steps:  # interleaved slices: all three see the same machine load
        k = min(args.slice, steps - done)
        before = fleet.ageing_state.time_s[0, 0]
        cpu_start = time.process_time()
        times["fleet"].append(timed(lambda n: fleet.advance(n, 1.0), k) / k)
        cpu += time.process_time() - cpu_start
        updates += int(fleet.ageing_state.time_s[0, 0] != before)
        times["plant_only"].append(timed(floor.step, k) / k)
        times["loop"].append(timed(loop.step, args.loop_steps) / args.loop_steps)
        done += k
    per_step = {name: float(np.sum(t) / len(t)) for name, t in times.items()}
    best = {name: float(np.min(t)) for name, t in times.items()}
    rate = cells_total / per_step["fleet"]
    loop_rate = loop.cell_steps_per_step / per_step["loop"]
    floor_rate = cells_total / per_step["plant_only"]
    results = {
        "chemistry": args.chemistry,
        "packs": args.packs,
        "cells_per_pack": args.cells,
        "dt_s": 1.0,
        "steps": steps,
        "ageing_updates": updates,
        "fleet_cell_steps_per_s": rate,
        "fleet_cell_steps_per_s_best_slice": cells_total / best["fleet"],
        "fleet_cell_steps_per_cpu_s": steps * cells_total / cpu,
        "loop_packs": args.loop_packs,
        "loop_cell_steps_per_s": loop_rate,
        "speedup_vs_loop": rate / loop_rate,
        "plant_only_cell_steps_per_s": floor_rate,
        "fleet_vs_plant_only": rate / floor_rate,
        "target_cell_steps_per_s": TARGET,
        "meets_target": rate >= TARGET,
        "load_average_1min": os.getloadavg()[0],
        "cpus": os.cpu_count(),
    }
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(
        f"fleet {args.packs} x {args.cells} cells ({args.chemistry}), 1 s steps, {steps} steps, "
        f"guard + ageing ({updates} ageing updates):"
    )
    print(
        f"  {rate / 1e6:8.2f} M cell-steps/s wall (best slice "
        f"{results['fleet_cell_steps_per_s_best_slice'] / 1e6:.2f}; "
        f"{results['fleet_cell_steps_per_cpu_s'] / 1e6:.2f} M per CPU second)"
    )
    print(
        f"  loop over {args.loop_packs} one-pack fleets: {loop_rate / 1e6:8.4f} M cell-steps/s"
        f" -> speed-up {rate / loop_rate:.0f}x"
    )
    print(
        f"  bare plant step + voltage:      {floor_rate / 1e6:8.2f} M cell-steps/s"
        f" -> fleet at {100 * rate / floor_rate:.0f} % of it"
    )
    verdict = "met" if results["meets_target"] else "NOT met"
    print(
        f"  target >= 10 M cell-steps/s: {verdict} (load average "
        f"{results['load_average_1min']:.2f} on {results['cpus']} CPUs)"
    )


if __name__ == "__main__":
    main()
