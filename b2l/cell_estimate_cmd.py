"""``b2l cell estimate``: SoC of a cell log with the extended Kalman filter of ``twin.estimation``.

The ``cell`` group is registered by ``b2l/cell_cmd.py``, which calls ``add_estimate``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from b2l.arg_types import fraction
from b2l.files import read_text, write_atomically

SETTLE_S = 900.0
"""Errors against ``soc_true`` are scored after the first 15 minutes (time to converge)."""
COLUMNS = ("time_s", "soc", "soc_std", "voltage_pred_v")


def add_estimate(cell_subparsers: Any) -> None:
    """Add ``estimate`` to the sub-parsers of the ``cell`` group."""
    parser = cell_subparsers.add_parser(
        "estimate",
        help="estimate the SoC along a cell log (extended Kalman filter)",
        description=(
            "Run the SoC filter over a log with columns time_s,current_a,voltage_v,temperature_c "
            "(current positive when charging) and write time_s,soc,soc_std,voltage_pred_v. "
            "With a soc_true column, print the RMSE and maximum error after the first 15 min."
        ),
    )
    parser.add_argument("--params", type=Path, required=True, help="cell parameter file (JSON)")
    parser.add_argument("--input", type=Path, required=True, help="cell log (CSV)")
    parser.add_argument(
        "--initial-soc",
        type=fraction,
        default=None,
        metavar="X",
        help="initial SoC guess, 0..1 (default: from the first voltage sample)",
    )
    parser.add_argument("-o", "--output", type=Path, required=True, help="output CSV")
    parser.add_argument("--json-summary", action="store_true", help="print a JSON summary")
    parser.set_defaults(handler=_estimate)


def _estimate(args: argparse.Namespace) -> int:
    import numpy as np
    from pydantic import ValidationError

    from twin.cell_model import CellModel
    from twin.cell_params import CellParameters
    from twin.errors import TwinValidationError
    from twin.estimation import SocEstimator
    from twin.lab_data import cell_log, parse_csv

    try:
        params = CellParameters.model_validate_json(read_text(args.params))
    except ValidationError as exc:
        raise TwinValidationError(f"{args.params}: not a cell parameter file: {exc}") from exc
    log = cell_log(parse_csv(read_text(args.input), source=str(args.input)), str(args.input))

    estimator = SocEstimator(CellModel(params))
    i, v, t = log.current_a, log.voltage_v, log.temperature_c
    if args.initial_soc is None:
        state = estimator.initial_from_voltage(v[0], i[0], t[0])
    else:
        state = estimator.initial(args.initial_soc, t[0], current_a=i[0])
    n = len(log)
    soc, soc_std, v_pred = np.empty(n), np.empty(n), np.empty(n)
    dt = np.diff(log.time_s, prepend=log.time_s[0])
    report_every = max(n // 20, 1) if n >= 20_000 else 0
    for k in range(n):
        state = estimator.update(state, i[k], v[k], t[k], float(dt[k]))
        soc[k], soc_std[k], v_pred[k] = state.soc, state.soc_std, state.voltage_pred_v
        if report_every and (k + 1) % report_every == 0:
            print(f"b2l cell estimate: {k + 1}/{n} rows", file=sys.stderr, flush=True)

    lines = [",".join(COLUMNS)]
    lines += [
        f"{ts:.10g},{s:.6f},{sd:.6f},{vp:.6f}"
        for ts, s, sd, vp in zip(log.time_s.tolist(), soc, soc_std, v_pred, strict=True)
    ]
    write_atomically(args.output, "\n".join(lines) + "\n")

    summary: dict[str, Any] = {
        "output": str(args.output),
        "rows": n,
        "final_soc": float(soc[-1]),
        "final_soc_std": float(soc_std[-1]),
        "current_bias_a": float(state.bias_a),
    }
    if "soc_true" in log.extra:
        scored = log.time_s - log.time_s[0] >= SETTLE_S
        error = soc[scored] - log.extra["soc_true"][scored]
        summary["scored_from_s"] = SETTLE_S
        summary["rmse"] = float(np.sqrt(np.mean(error**2))) if error.size else None
        summary["max_abs_error"] = float(np.max(np.abs(error))) if error.size else None
    if args.json_summary:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"wrote {args.output} ({n} rows); final SoC {soc[-1]:.4f} +- {soc_std[-1]:.4f}")
    if summary.get("rmse") is not None:
        print(
            f"SoC error after the first {SETTLE_S / 60:.0f} min: "
            f"RMSE {summary['rmse'] * 100:.2f} %, max {summary['max_abs_error'] * 100:.2f} %"
        )
    elif "soc_true" in log.extra:
        print(f"the log is shorter than {SETTLE_S / 60:.0f} min: no SoC error to report")
    return 0
