"""The load on one simulated pack: a profile behind an inverter that keeps within the cell limits.

``ProfileLoad`` is the ``current_a`` of a ``PlantDriver``: the value of a
``simulators.profiles.Profile`` (current or power, positive charging) at ``offset_s + t``, times
``scale`` (a power profile divided by the pack's present voltage), clipped to the cells' current
limits and, with ``voltage_guard``, stopped (0 A) while it would charge with a cell above
``voltage_max_v`` or discharge with one below ``voltage_min_v``: an inverter that obeys the
BMS's charge and discharge enable, so that a full or empty pack rests instead of tripping the
BMS's over- and under-voltage faults. The guard reads the plant (the true cell voltages under the
requested current), as the fleet's does; it never looks at the BMS, so a lying sensor does not
change the load.
"""

from __future__ import annotations

import numpy as np

from simulators.plant import PackPlant
from simulators.profiles import Profile
from twin.errors import ConfigError

__all__ = ["ProfileLoad"]


class ProfileLoad:
    """Load current of pack ``pack_index`` of ``plant`` following ``profile`` (see the module)."""

    def __init__(
        self,
        plant: PackPlant,
        profile: Profile,
        *,
        pack_index: int = 0,
        scale: float = 1.0,
        offset_s: float = 0.0,
        cells_in_parallel: int = 1,
        voltage_guard: bool = True,
    ) -> None:
        if not 0 <= pack_index < plant.model.n_packs:
            raise ConfigError(f"pack_index {pack_index} not in 0..{plant.model.n_packs - 1}")
        if not (np.isfinite(scale) and np.isfinite(offset_s)) or cells_in_parallel < 1:
            raise ConfigError("scale and offset_s must be finite, cells_in_parallel >= 1")
        self.plant = plant
        self.profile = profile
        self.pack_index = pack_index
        self.scale = scale
        self.offset_s = offset_s
        self.voltage_guard = voltage_guard
        params = plant.model.cell.params
        self.current_limits_a = (
            -params.current_max_discharge_a * cells_in_parallel,
            params.current_max_charge_a * cells_in_parallel,
        )
        self.voltage_limits_v = (params.voltage_min_v, params.voltage_max_v)
        self.requests = 0
        self.blocked = 0
        """Requests the voltage guard stopped."""

    def requested_a(self, time_s: float) -> float:
        """The profile's current at ``time_s`` within the current limits, before the guard."""
        t = self.offset_s + time_s
        if self.profile.kind == "current":
            value = float(self.profile.current_at(t)) * self.scale
        else:
            pack_v = float(self.plant.pack_voltages_v()[self.pack_index])
            value = float(self.profile.current_at(t, max(pack_v, 1e-3))) * self.scale
        low, high = self.current_limits_a
        return min(max(value, low), high)

    def __call__(self, time_s: float) -> float:
        """Current to apply from ``time_s`` (A, positive charging)."""
        current = self.requested_a(time_s)
        self.requests += 1
        if not self.voltage_guard or current == 0.0:
            return current
        plant, p = self.plant, self.pack_index
        cell_current = np.zeros(plant.model.n_packs)
        cell_current[p] = current
        voltage = plant.model.cell.terminal_voltage(
            plant.state, cell_current[:, None] - plant.leak_a
        )[p]
        v_min, v_max = self.voltage_limits_v
        if (current > 0.0 and voltage.max() > v_max) or (current < 0.0 and voltage.min() < v_min):
            self.blocked += 1
            return 0.0
        return current
