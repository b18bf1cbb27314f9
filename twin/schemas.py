"""JSON Schemas of the data model, for partners who integrate without Python."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from twin.commands import Command, CommandAck
from twin.measurements import EisMeasurement, EisSpectrum, Pillar1CellMeasurement, Pillar2CellData
from twin.passport import Passport
from twin.sizing import DiagnosticSizing
from twin.topology import BatteryTopology
from twin.twin_document import DesiredState, TwinDocument
from twin.uplink import UplinkBatch

PUBLIC_MODELS: tuple[type[BaseModel], ...] = (
    BatteryTopology,
    DiagnosticSizing,
    Passport,
    Pillar1CellMeasurement,
    Pillar2CellData,
    EisMeasurement,
    EisSpectrum,
    UplinkBatch,
    Command,
    CommandAck,
    DesiredState,
    TwinDocument,
)


def json_schemas() -> dict[str, dict[str, Any]]:
    """The JSON Schema (draft 2020-12, validation mode) of every public model, by model name."""
    return {model.__name__: model.model_json_schema(mode="validation") for model in PUBLIC_MODELS}
