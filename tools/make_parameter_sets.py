"""Regenerate the published cell parameter sets shipped in ``twin/parameters/`` (dev tool).

Runs with the PyBaMM virtualenv (PyBaMM is not a b2l dependency; see ``tools/pybamm_reference.py``
for how that venv is made)::

    .venv-pybamm/bin/python tools/make_parameter_sets.py           # write both JSON files (~5 s)
    .venv-pybamm/bin/python tools/make_parameter_sets.py --check   # also re-derive the
                                                                   # DFN-based numbers (~1 min)

What is computed here and what is written down:

* OCV(SoC), capacity and (NMC) dOCV/dT are COMPUTED from the electrode open-circuit-potential
  functions of PyBaMM's parameter sets: the stoichiometries at SoC 0 / 1 come from PyBaMM's
  electrode state-of-health solver at the cell's OCV limits, and in between they are linear in
  SoC, so OCV(soc) = U_p(y(soc)) - U_n(x(soc)) and capacity_ah is the charge between the two
  OCV limits.
* Resistances, RC branches, activation energies, hysteresis, thermal data and limits are
  LITERAL constants below, each with its source. The NMC resistances and both activation
  energies were derived once from PyBaMM DFN simulations; ``--check`` re-runs those
  derivations and prints the fresh numbers next to the literal ones, so they can be updated
  by hand when PyBaMM changes.

Conventions: SoC grid 0..1 in 0.01 steps; current positive when charging (as in
``twin/cell_model.py``); 25 degC reference temperature. The ``source`` field of each file
repeats the provenance, so a file cites its sources by itself.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import warnings
from pathlib import Path

import numpy as np
import pybamm

REPO = Path(__file__).resolve().parents[1]
OUT_DIR = REPO / "twin" / "parameters"
SOC_GRID = np.round(np.linspace(0.0, 1.0, 101), 2)
T_REF_K = 298.15
H_NATURAL_W_PER_M2K = 10.0  # natural convection + radiation, PyBaMM Chen2020/ORegan2022 value
CP_CELL_J_PER_KGK = 1100.0  # assumed: typical specific heat of cylindrical Li-ion cells


def can_area_m2(diameter_m: float, height_m: float) -> float:
    """Outer surface of a cylindrical can (mantle + both ends)."""
    return math.pi * diameter_m * height_m + 2.0 * math.pi * (diameter_m / 2.0) ** 2


# --------------------------------------------------------------------------------------------
# NMC: LG INR21700 M50
# --------------------------------------------------------------------------------------------

# R0 + 2 RC fitted to 1C pulses of PyBaMM's isothermal DFN with the "Chen2020" set at 25 degC
# (Chen et al. 2020; that set has no contact resistance): 10 s rest, 60 s discharge, 600 s rest,
# 60 s charge, 600 s rest from each SoC; time constants shared by all SoCs, resistances per SoC
# (see ``fit_ecm_to_dfn``; the comment is the fit's RMS voltage error). Interpolated linearly on
# the SoC grid, held constant beyond the ends. Re-derive with ``--check``.
NMC_ECM_TABLE = [
    # soc  r0_ohm    r1_ohm    tau1_s r2_ohm    tau2_s
    (0.05, 0.036867, 0.024937, 25.4, 0.012279, 188.9),  # rmse 8.89 mV (steep OCV)
    (0.10, 0.031887, 0.015741, 25.4, 0.010077, 188.9),  # rmse 1.11 mV
    (0.20, 0.026853, 0.009255, 25.4, 0.008214, 188.9),  # rmse 0.88 mV
    (0.30, 0.025721, 0.009804, 25.4, 0.008651, 188.9),  # rmse 1.19 mV
    (0.40, 0.024625, 0.009506, 25.4, 0.009846, 188.9),  # rmse 1.70 mV
    (0.50, 0.024712, 0.010517, 25.4, 0.014700, 188.9),  # rmse 1.71 mV
    (0.60, 0.024406, 0.010290, 25.4, 0.012237, 188.9),  # rmse 1.23 mV
    (0.70, 0.024955, 0.010800, 25.4, 0.012322, 188.9),  # rmse 1.63 mV
    (0.80, 0.025906, 0.010162, 25.4, 0.014904, 188.9),  # rmse 1.39 mV
    (0.90, 0.025750, 0.009238, 25.4, 0.004006, 188.9),  # rmse 2.19 mV
    (0.95, 0.027948, 0.011235, 25.4, 0.012718, 188.9),  # rmse 8.27 mV (steep OCV)
]

# Arrhenius fit of the 10 s, 1C discharge-pulse resistance at 50 % SoC of PyBaMM's DFN with the
# "ORegan2022" set (LG M50T, temperature-dependent kinetics, diffusion and electrolyte; O'Regan
# et al. 2022) at 10 / 25 / 40 degC.
NMC_ACTIVATION_ENERGY_J_PER_MOL = 18963.0

NMC = {
    "key": "nmc_lgm50",
    "pybamm_set": "Chen2020",
    "name": "LG INR21700 M50 (NMC811/graphite-SiOx, 5 Ah)",
    "chemistry": "NMC",
    "hysteresis_v": 0.005,  # assumed: small for NMC; the SiOx in the anode adds a few mV
    "hysteresis_rate": 30.0,  # assumed: ~95 % of the swing within 10 % SoC of throughput
    "mass_kg": 0.069,  # LG INR21700 M50 datasheet (max 69.25 g)
    "area_m2": can_area_m2(0.021, 0.070),  # 21700 can: 5.31e-3 m2, as PyBaMM's Chen2020 set
    "voltage_min_v": 2.5,  # datasheet discharge cut-off
    "voltage_max_v": 4.2,  # datasheet charge voltage
    "current_max_charge_a": 3.395,  # datasheet max charge 0.7C of 4.85 Ah (standard 0.3C)
    "current_max_discharge_a": 7.275,  # datasheet max continuous discharge 1.5C of 4.85 Ah
    "temperature_min_c": -20.0,  # datasheet discharge window -20..60 degC (charge 0..45 degC)
    "temperature_max_c": 60.0,
}

# --------------------------------------------------------------------------------------------
# LFP: A123 ANR26650M1
# --------------------------------------------------------------------------------------------

# PyBaMM's Prada2013 DFN is ~3x more resistive than the real high-power cell (about 30 mOhm at
# 1C, and it delivers only 1.9 of 2.3 Ah at 1C), so its resistances are NOT used. Instead:
LFP_R0_OHM = 0.006  # A123 ANR26650M1 datasheet: 1 kHz AC impedance, typical
# Assumed split (not fitted to any measurement), chosen so that the 10 s DC resistance is about
# 10 mOhm, the order of the cell's published DC resistance: a fast branch (charge transfer,
# seconds) and a slow one (diffusion, minutes). Constant over SoC: no SoC dependence is known
# to us from a citable source.
LFP_RC = [(0.004, 5.0), (0.003, 300.0)]  # (r_ohm, tau_s)

# Arrhenius fit of the 10 s, 1C pulse resistance at 50 % SoC of PyBaMM's DFN with the
# "Prada2013" set at 10 / 25 / 40 degC. Only the exchange currents depend on temperature in
# that set (the electrolyte conductivity does not), so this is a lower bound.
LFP_ACTIVATION_ENERGY_J_PER_MOL = 19305.0

LFP = {
    "key": "lfp_a123",
    "pybamm_set": "Prada2013",
    "name": "A123 ANR26650M1 (LFP/graphite, 2.3 Ah)",
    "chemistry": "LFP",
    # +-15 mV (30 mV gap between charge and discharge OCV): the order reported for LFP, e.g.
    # Roscher & Sauer, J. Power Sources 196 (2011) 331; Dreyer et al., Nat. Mater. 9 (2010) 448.
    "hysteresis_v": 0.015,
    "hysteresis_rate": 30.0,  # assumed: ~95 % of the swing within 10 % SoC of throughput
    "mass_kg": 0.076,  # A123 ANR26650M1 datasheet
    "area_m2": can_area_m2(0.026, 0.065),  # 26650 can (as in tools/pybamm_reference.py)
    "voltage_min_v": 2.0,  # datasheet
    "voltage_max_v": 3.6,  # datasheet
    "current_max_charge_a": 10.0,  # datasheet fast charge 10 A to 3.6 V CC-CV
    "current_max_discharge_a": 70.0,  # datasheet max continuous discharge
    "temperature_min_c": -30.0,  # datasheet operating -30..55 degC
    "temperature_max_c": 55.0,
}

PYBAMM_VERSION = pybamm.__version__

NMC["source"] = (
    "LG INR21700 M50, as characterised by Chen et al., J. Electrochem. Soc. 167 (2020) 080534. "
    f"ocv_v and capacity_ah: computed from Chen 2020's electrode OCP functions via PyBaMM "
    f"{PYBAMM_VERSION} ('Chen2020' set): OCV = U_p(y) - U_n(x), x and y linear in SoC between the "
    "electrode-SOH limits at OCV 2.5 V / 4.2 V; capacity_ah is the charge of that window "
    "(datasheet: 5.0 Ah nominal, 4.85 Ah min at 0.2C). r0_ohm and two RC branches: least-squares "
    "fit of R0+2RC to 1C pulses of PyBaMM's DFN with the Chen2020 set at 25 degC, SoC 0.05-0.95 "
    "(no contact resistance in that set). docv_dt: entropic-change fits of O'Regan et al., "
    "Electrochim. Acta 425 (2022) 140700 (LG M50T) on the same stoichiometries, via PyBaMM. "
    "activation_energy: Arrhenius fit of the 10 s 1C pulse resistance of PyBaMM's DFN with the "
    "ORegan2022 set at 10/25/40 degC. hysteresis 5 mV: assumed. heat capacity: 69 g (LG M50 "
    "datasheet) x 1100 J/kg/K (assumed typical cp of cylindrical Li-ion cells). heat transfer: "
    "h = 10 W/m2/K (natural convection, PyBaMM Chen2020 value) x 5.3e-3 m2 (21700 can). "
    "Limits: LG M50 datasheet (2.5-4.2 V; charge 0.7C max, 0.3C standard; discharge 1.5C max; "
    "discharge -20..60 degC, charge 0..45 degC). Generated by tools/make_parameter_sets.py."
)

LFP["source"] = (
    "A123 ANR26650M1, as modelled by Prada et al., J. Electrochem. Soc. 160 (2013) A616. "
    f"ocv_v and capacity_ah: computed via PyBaMM {PYBAMM_VERSION} ('Prada2013' set, whose OCPs "
    "are stand-ins: LFP from Afshar et al. 2017, arXiv:1709.03970; graphite from Chen et al. "
    "2020): OCV = U_p(y) - U_n(x), x and y linear in SoC between the electrode-SOH limits at "
    "OCV 2.0 V / 3.6 V; capacity_ah is the charge of that window (datasheet: 2.3 Ah). "
    "r0_ohm: 6 mOhm, the datasheet's typical 1 kHz AC impedance. RC branches 4 mOhm/5 s and "
    "3 mOhm/300 s: assumed, not fitted, so that the 10 s DC resistance is ~10 mOhm; constant "
    "over SoC. activation_energy: Arrhenius fit of the 10 s 1C pulse resistance of PyBaMM's "
    "DFN with the Prada2013 set at 10/25/40 degC (kinetics only: a lower bound). hysteresis "
    "+-15 mV: order reported for LFP (Roscher & Sauer, J. Power Sources 196 (2011) 331; "
    "Dreyer et al., Nat. Mater. 9 (2010) 448); its rate is assumed. docv_dt: none. heat "
    "capacity: 76 g (datasheet) x 1100 J/kg/K (assumed typical cp). heat transfer: h = 10 W/m2/K "
    "(natural convection) x 6.4e-3 m2 (26650 can). Limits: A123 datasheet (2.0-3.6 V; 10 A "
    "fast charge; 70 A continuous discharge; -30..55 degC). Generated by "
    "tools/make_parameter_sets.py."
)


# --------------------------------------------------------------------------------------------
# computations with PyBaMM
# --------------------------------------------------------------------------------------------


def stoichiometry_window(pv: pybamm.ParameterValues) -> tuple[float, float, float, float]:
    """(x_0, x_100, y_100, y_0) at the set's OCV limits, from PyBaMM's electrode SOH solver."""
    x0, x100, y100, y0 = pybamm.lithium_ion.get_min_max_stoichiometries(pv)
    return float(x0), float(x100), float(y100), float(y0)


def theoretical_capacity_ah(pv: pybamm.ParameterValues) -> float:
    """Charge between the two OCV limits (PyBaMM electrode SOH 'Q')."""
    param = pybamm.LithiumIonParameters()
    inputs = {
        "Q_Li": pv.evaluate(param.Q_Li_particles_init),
        "Q_n": pv.evaluate(param.n.Q_init),
        "Q_p": pv.evaluate(param.p.Q_init),
    }
    return float(pybamm.lithium_ion.ElectrodeSOHSolver(pv).solve(inputs)["Q"])


def _evaluate(fn, sto: np.ndarray) -> np.ndarray:
    return np.asarray(fn(pybamm.Vector(sto)).evaluate(), dtype=float).ravel()


def ocv_table(pv: pybamm.ParameterValues, soc: np.ndarray) -> np.ndarray:
    """Full-cell OCV at ``soc`` at the reference temperature."""
    x0, x100, y100, y0 = stoichiometry_window(pv)
    x = x0 + soc * (x100 - x0)
    y = y0 + soc * (y100 - y0)
    u_p = _evaluate(pv["Positive electrode OCP [V]"], y)
    u_n = _evaluate(pv["Negative electrode OCP [V]"], x)
    return u_p - u_n


def entropic_table(window_pv: pybamm.ParameterValues, soc: np.ndarray) -> np.ndarray:
    """dOCV/dT of the full cell from O'Regan 2022's electrode entropic changes (V/K)."""
    x0, x100, y100, y0 = stoichiometry_window(window_pv)
    x = x0 + soc * (x100 - x0)
    y = y0 + soc * (y100 - y0)
    oregan = pybamm.ParameterValues("ORegan2022")
    du_p = _evaluate(oregan["Positive electrode OCP entropic change [V.K-1]"], y)
    du_n = _evaluate(oregan["Negative electrode OCP entropic change [V.K-1]"], x)
    return du_p - du_n


def interpolate_table(column: int, table: list[tuple[float, ...]]) -> list[float]:
    """One column of an ECM table on the SoC grid (linear, constant beyond the ends)."""
    xs = [row[0] for row in table]
    ys = [row[column] for row in table]
    return np.interp(SOC_GRID, xs, ys).tolist()


def build(spec: dict, ecm: dict, activation_energy: float) -> dict:
    pv = pybamm.ParameterValues(spec["pybamm_set"])
    ocv = ocv_table(pv, SOC_GRID)
    if np.any(np.diff(ocv) < 0):
        raise RuntimeError(f"{spec['key']}: computed OCV decreases somewhere")
    doc: dict = {
        "name": spec["name"],
        "chemistry": spec["chemistry"],
        "source": spec["source"],
        "capacity_ah": round(theoretical_capacity_ah(pv), 4),
        "soc_grid": SOC_GRID.tolist(),
        "ocv_v": [round(v, 5) for v in ocv],
        "r0_ohm": [round(v, 6) for v in ecm["r0"]],
        "rc": [
            {"r_ohm": [round(v, 6) for v in r], "tau_s": [round(v, 1) for v in tau]}
            for r, tau in ecm["rc"]
        ],
    }
    if spec["chemistry"] == "NMC":
        doc["docv_dt_v_per_k"] = [round(v, 7) for v in entropic_table(pv, SOC_GRID)]
    doc |= {
        "reference_temperature_c": T_REF_K - 273.15,
        "activation_energy_j_per_mol": activation_energy,
        "hysteresis_v": spec["hysteresis_v"],
        "hysteresis_rate": spec["hysteresis_rate"],
        "coulombic_efficiency": 1.0,
        "heat_capacity_j_per_k": round(spec["mass_kg"] * CP_CELL_J_PER_KGK, 1),
        "heat_transfer_w_per_k": round(H_NATURAL_W_PER_M2K * spec["area_m2"], 4),
    }
    for key in (
        "voltage_min_v",
        "voltage_max_v",
        "temperature_min_c",
        "temperature_max_c",
        "current_max_charge_a",
        "current_max_discharge_a",
    ):
        doc[key] = spec[key]
    return doc


def nmc_ecm() -> dict:
    return {
        "r0": interpolate_table(1, NMC_ECM_TABLE),
        "rc": [
            (interpolate_table(2, NMC_ECM_TABLE), interpolate_table(3, NMC_ECM_TABLE)),
            (interpolate_table(4, NMC_ECM_TABLE), interpolate_table(5, NMC_ECM_TABLE)),
        ],
    }


def lfp_ecm() -> dict:
    n = len(SOC_GRID)
    return {
        "r0": [LFP_R0_OHM] * n,
        "rc": [([r] * n, [tau] * n) for r, tau in LFP_RC],
    }


def to_text(doc: dict) -> str:
    """Indented JSON with every number list on one line."""
    text = json.dumps(doc, indent=2, ensure_ascii=False)
    number_list = re.compile(r"\[\s+([-+0-9.eE,\s]+?)\s+\]")
    return number_list.sub(lambda m: "[" + " ".join(m.group(1).split()) + "]", text) + "\n"


# --------------------------------------------------------------------------------------------
# --check: re-derive the DFN-based numbers
# --------------------------------------------------------------------------------------------


def _dfn_solution(pv: pybamm.ParameterValues, steps: list[str], soc0: float, period: str):
    pv = pv.copy()
    pv.update({"Lower voltage cut-off [V]": 1.0, "Upper voltage cut-off [V]": 5.0})
    experiment = pybamm.Experiment(steps, period=period)
    sim = pybamm.Simulation(pybamm.lithium_ion.DFN(), parameter_values=pv, experiment=experiment)
    sol = sim.solve(initial_soc=soc0)
    t = np.asarray(sol["Time [s]"].entries, dtype=float)
    i = -np.asarray(sol["Current [A]"].entries, dtype=float)  # positive when charging
    v = np.asarray(sol["Voltage [V]"].entries, dtype=float)
    keep = np.concatenate([[True], np.diff(t) > 1e-9])  # drop repeated step-boundary samples
    return t[keep], i[keep], v[keep]


def _pulse_data(set_name: str, socs: list[float]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per SoC: the DFN's current (positive charging) and its voltage minus the table OCV."""
    pv = pybamm.ParameterValues(set_name)
    q_ah = theoretical_capacity_ah(pv)
    i1c = float(pv["Nominal cell capacity [A.h]"])
    fine = np.linspace(0.0, 1.0, 2001)
    ocv_fine = ocv_table(pv, fine)
    steps = [
        "Rest for 10 s",
        f"Discharge at {i1c} A for 60 s",
        "Rest for 600 s",
        f"Charge at {i1c} A for 60 s",
        "Rest for 600 s",
    ]
    data = []
    for soc0 in socs:
        t, i, v = _dfn_solution(pv, steps, soc0, "1 s")
        if not np.allclose(np.diff(t), 1.0):
            raise RuntimeError("expected samples every second")
        # the current held over the second that ends at sample k
        i_held = np.concatenate([[0.0], i[:-1]])
        soc = soc0 + np.cumsum(i_held) / (3600.0 * q_ah)
        data.append((i, v - np.interp(soc, fine, ocv_fine)))
    return data


def _regressors(i: np.ndarray, taus: np.ndarray) -> np.ndarray:
    """Columns i, then the unit-resistance RC voltages (exact for currents held 1 s)."""
    from scipy.signal import lfilter

    cols = [i]
    for tau in taus:
        a = math.exp(-1.0 / tau)
        cols.append(lfilter([0.0, 1.0 - a], [1.0, -a], i))
    return np.column_stack(cols)


def fit_ecm_to_dfn(set_name: str, socs: list[float]) -> list[tuple[float, ...]]:
    """Fit R0 + 2 RC to 1C pulses of the DFN: time constants shared by all SoCs, resistances
    per SoC (non-negative least squares for given time constants), so the tables are smooth."""
    from scipy.optimize import minimize, nnls

    data = _pulse_data(set_name, socs)

    def resistances(log_taus: np.ndarray) -> tuple[list[np.ndarray], list[float]]:
        rs, sse = [], []
        for i, dv in data:
            r, res = nnls(_regressors(i, np.exp(log_taus)), dv)
            rs.append(r)
            sse.append(res**2)
        return rs, sse

    best = minimize(
        lambda p: sum(resistances(p)[1]),
        np.log([10.0, 200.0]),
        method="Nelder-Mead",
        options={"xatol": 1e-3, "fatol": 1e-12},
    )
    taus = np.exp(best.x)
    rs, sse = resistances(best.x)
    rows = []
    for soc0, (i, _), r, e in zip(socs, data, rs, sse, strict=True):
        rmse_mv = 1000.0 * math.sqrt(e / len(i))
        rows.append((soc0, r[0], r[1], taus[0], r[2], taus[1]))
        print(
            f"    ({soc0:.2f}, {r[0]:.6f}, {r[1]:.6f}, {taus[0]:.1f}, {r[2]:.6f}, {taus[1]:.1f}),"
            f"  # rmse {rmse_mv:.2f} mV"
        )
    return rows


def pulse_activation_energy(set_name: str, extra: dict | None = None) -> float:
    """Arrhenius fit of the 10 s 1C discharge-pulse resistance at 50 % SoC, 10 / 25 / 40 degC."""
    temps_c = [10.0, 25.0, 40.0]
    resistances = []
    for temp_c in temps_c:
        pv = pybamm.ParameterValues(set_name)
        if extra:
            pv.update(extra)
        t_k = temp_c + 273.15
        pv.update({"Ambient temperature [K]": t_k, "Initial temperature [K]": t_k})
        i1c = float(pv["Nominal cell capacity [A.h]"])
        steps = ["Rest for 1 s", f"Discharge at {i1c} A for 10 s"]
        _, _, v = _dfn_solution(pv, steps, 0.5, "0.1 s")
        resistances.append((v[0] - v[-1]) / i1c)
    inv_t = 1.0 / (np.array(temps_c) + 273.15)
    slope = np.polyfit(inv_t, np.log(resistances), 1)[0]
    return float(slope * 8.314462618)


def check() -> None:
    print("NMC_ECM_TABLE re-fitted to the Chen2020 DFN:")
    fit_ecm_to_dfn("Chen2020", [row[0] for row in NMC_ECM_TABLE])
    # ORegan2022 states its SoC window up to 4.4 V; use the M50's 4.2 V like the rest of the set.
    ea_nmc = pulse_activation_energy("ORegan2022", {"Open-circuit voltage at 100% SOC [V]": 4.2})
    ea_lfp = pulse_activation_energy("Prada2013")
    print(f"NMC activation energy: {ea_nmc:.0f} J/mol (literal {NMC_ACTIVATION_ENERGY_J_PER_MOL})")
    print(f"LFP activation energy: {ea_lfp:.0f} J/mol (literal {LFP_ACTIVATION_ENERGY_J_PER_MOL})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="output folder")
    parser.add_argument(
        "--check", action="store_true", help="also re-derive the DFN-based literal numbers"
    )
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    pybamm.set_logging_level("ERROR")
    sets = [
        (NMC, nmc_ecm(), NMC_ACTIVATION_ENERGY_J_PER_MOL),
        (LFP, lfp_ecm(), LFP_ACTIVATION_ENERGY_J_PER_MOL),
    ]
    for spec, ecm, ea in sets:
        doc = build(spec, ecm, ea)
        path = args.out / f"{spec['key']}.json"
        path.write_text(to_text(doc), encoding="utf-8")
        ocv = doc["ocv_v"]
        print(
            f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}: "
            f"{doc['capacity_ah']} Ah, OCV {ocv[0]:.3f}..{ocv[-1]:.3f} V, "
            f"source {len(doc['source'])} chars"
        )
    if args.check:
        check()


if __name__ == "__main__":
    main()
