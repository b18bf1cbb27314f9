"""The data model refuses what is physically impossible and keeps what is valid."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta, timezone
from uuid import uuid4

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from twin.commands import (
    Command,
    CommandAck,
    CommandStatus,
    EcmParameters,
    ModelUpdate,
    ReportingPeriod,
    check_command_transition,
)
from twin.errors import TwinValidationError
from twin.measurements import EisMeasurement, EisSpectrum, Pillar1CellMeasurement, Pillar2CellData
from twin.passport import AccessTier, LifecycleStatus, Passport, check_lifecycle_transition
from twin.sizing import DiagnosticSizing
from twin.topology import BatteryTopology
from twin.uplink import TelemetryRecord, UplinkBatch

pytestmark = pytest.mark.unit

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def sizing_input(**changes: object) -> dict[str, object]:
    """Table 1 as CIDETEC's tool writes it (bare names, ids as doubles)."""
    data: dict[str, object] = {
        "timestamp": "2026-11-25T12:00:00Z",
        "soc_max": 0.95,
        "soc_min": 0.1,
        "fec_per_day": 1.2,
        "days_per_year": 365,
        "soh_at_eol": 0.7,
        "e_nom": 10_000.0,
        "i_cha_max": 50.0,
        "i_cha_std": 20.0,
        "i_dch_max": 60.0,
        "i_dch_mean": 15.0,
        "lifespan_years": 10,
        "lifespan_fec": 4000,
        "n_packs": 1,
        "n_modules": 4,
        "n_cells": 64,
        "oem_id": 3.0,
        "project_id": 12.0,
        "system_id": 7.0,
        "t_max": 45.0,
        "t_avg": 25.0,
        "t_min": 0.0,
        "xh0_time": [0.0] * 5,
        "xh0_fec": [0.0] * 5,
        "soh_evolution": [1.0 - 0.0075 * i for i in range(40)],
        "fec_evolution": [100.0 * i for i in range(40)],
        "time_evolution": [0.25 * i for i in range(40)],
    }
    data.update(changes)
    return data


def cell(cell_id: int = 0, **changes: object) -> dict[str, object]:
    data: dict[str, object] = {
        "cell_id": cell_id,
        "voltage_v": 3.7,
        "temperature_c": 25.0,
        "current_a": -2.0,
        "soc": 0.5,
        "sos": 1.0,
    }
    data.update(changes)
    return data


class TestSizing:
    def test_accepts_the_tools_bare_names_and_keeps_units_in_ours(self) -> None:
        sizing = DiagnosticSizing.model_validate(sizing_input())
        assert sizing.e_nom_wh == 10_000.0
        assert sizing.t_max_c == 45.0
        assert sizing.oem_id == "3"
        assert len(sizing.soh_evolution) == 40

    @pytest.mark.parametrize("name", ["soh_evolution", "fec_evolution", "time_evolution"])
    def test_refuses_an_evolution_vector_of_the_wrong_length(self, name: str) -> None:
        with pytest.raises(ValidationError, match=name):
            DiagnosticSizing.model_validate(sizing_input(**{name: [0.5] * 39}))

    def test_refuses_a_short_xh0_vector(self) -> None:
        with pytest.raises(ValidationError, match="xh0_fec"):
            DiagnosticSizing.model_validate(sizing_input(xh0_fec=[1.0] * 4))

    def test_refuses_soc_min_above_soc_max(self) -> None:
        with pytest.raises(ValidationError, match="soc_min"):
            DiagnosticSizing.model_validate(sizing_input(soc_min=0.96))

    def test_refuses_a_decreasing_fec_evolution(self) -> None:
        fec = [100.0 * i for i in range(40)]
        fec[10] = 0.0
        with pytest.raises(ValidationError, match="fec_evolution must be non-decreasing"):
            DiagnosticSizing.model_validate(sizing_input(fec_evolution=fec))

    def test_refuses_nan_anywhere(self) -> None:
        with pytest.raises(ValidationError):
            DiagnosticSizing.model_validate(sizing_input(e_nom=math.nan))
        soh = [0.9] * 40
        soh[3] = math.nan
        with pytest.raises(ValidationError):
            DiagnosticSizing.model_validate(sizing_input(soh_evolution=soh))

    def test_refuses_a_naive_timestamp(self) -> None:
        with pytest.raises(ValidationError, match="timezone"):
            DiagnosticSizing.model_validate(sizing_input(timestamp="2026-11-25T12:00:00"))

    def test_round_trips_through_json(self) -> None:
        sizing = DiagnosticSizing.model_validate(sizing_input())
        again = DiagnosticSizing.model_validate_json(sizing.model_dump_json())
        assert again == sizing


class TestTopology:
    def test_cell_ids_number_cells_pack_by_pack_and_module_by_module(self) -> None:
        topo = BatteryTopology(n_packs=2, modules_per_pack=3, cells_per_module=4)
        assert topo.n_cells == 24
        assert topo.locate(0) == (0, 0, 0)
        assert topo.locate(5) == (0, 1, 1)
        assert topo.locate(12) == (1, 0, 0)
        for cell_id in range(topo.n_cells):
            assert topo.cell_id(*topo.locate(cell_id)) == cell_id

    def test_a_cell_outside_is_an_error(self) -> None:
        topo = BatteryTopology(cells_per_module=16)
        with pytest.raises(TwinValidationError, match="outside"):
            topo.check_cell_id(16)

    def test_refuses_more_cells_than_an_id_can_address(self) -> None:
        with pytest.raises(ValidationError, match="exceed"):
            BatteryTopology(n_packs=64, modules_per_pack=1024, cells_per_module=2)


class TestMeasurements:
    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("soc", 1.01),
            ("soc", -0.01),
            ("sos", 2.0),
            ("voltage_v", math.nan),
            ("voltage_v", -0.1),
            ("temperature_c", math.inf),
            ("temperature_c", -100.0),
            ("current_a", math.nan),
            ("cell_id", -1),
        ],
    )
    def test_refuses_the_impossible(self, field: str, value: float) -> None:
        with pytest.raises(ValidationError, match=field):
            Pillar1CellMeasurement.model_validate(cell(**{field: value}))

    def test_pillar2_soh_is_a_fraction(self) -> None:
        with pytest.raises(ValidationError, match="soh"):
            Pillar2CellData(cell_id=0, soc=0.5, soh=1.5, sos=1.0, equivalent_cycles=10)

    def test_an_eis_spectrum_is_one_event_of_one_cell(self) -> None:
        row = {
            "event_id": "e1",
            "cell_id": 3,
            "frequency_hz": 1000.0,
            "amplitude_ohm": 0.01,
            "phase_deg": -5.0,
            "v_start_v": 3.7,
            "v_end_v": 3.7,
            "temperature_c": 25.0,
        }
        rows = [EisMeasurement.model_validate(row | {"frequency_hz": f}) for f in (1e3, 1e2, 1e1)]
        assert EisSpectrum(rows=rows).frequencies_hz == [1e3, 1e2, 1e1]
        other = EisMeasurement.model_validate(row | {"cell_id": 4, "frequency_hz": 1.0})
        with pytest.raises(ValidationError, match="share one event_id"):
            EisSpectrum(rows=[*rows, other])
        with pytest.raises(ValidationError, match="each frequency once"):
            EisSpectrum(rows=[rows[0], rows[0]])
        with pytest.raises(ValidationError, match="phase_deg"):
            EisMeasurement.model_validate(row | {"phase_deg": 270.0})


class TestUplink:
    def batch(self, *records: dict[str, object]) -> dict[str, object]:
        return {"battery_id": "B-0001", "records": list(records)}

    def telemetry(self, seq: int, *cells: dict[str, object]) -> dict[str, object]:
        return {"kind": "telemetry", "seq": seq, "timestamp": T0.isoformat(), "pillar1": cells}

    def test_a_valid_batch_parses_and_converts_timestamps_to_utc(self) -> None:
        cet = timezone(timedelta(hours=1))
        rec = self.telemetry(1, cell(0)) | {"timestamp": T0.astimezone(cet).isoformat()}
        batch = UplinkBatch.model_validate(self.batch(rec, self.telemetry(2, cell(1))))
        first = batch.records[0]
        assert isinstance(first, TelemetryRecord)
        assert first.timestamp == T0 and first.timestamp.utcoffset() == timedelta(0)
        assert (batch.first_seq, batch.last_seq) == (1, 2)

    def test_sequence_numbers_must_strictly_increase(self) -> None:
        with pytest.raises(ValidationError, match="strictly increasing"):
            UplinkBatch.model_validate(
                self.batch(self.telemetry(2, cell(0)), self.telemetry(2, cell(0)))
            )

    def test_seq_starts_at_one(self) -> None:
        with pytest.raises(ValidationError, match="seq"):
            UplinkBatch.model_validate(self.batch(self.telemetry(0, cell(0))))

    def test_cell_ids_are_checked_against_the_topology_when_given(self) -> None:
        data = self.batch(self.telemetry(1, cell(0), cell(16)))
        UplinkBatch.model_validate(data)  # no topology: no check
        topo = BatteryTopology(cells_per_module=16)
        with pytest.raises(ValidationError, match="cell_id 16 is outside"):
            UplinkBatch.model_validate(data, context={"topology": topo})

    def test_an_empty_record_or_a_cell_twice_is_refused(self) -> None:
        with pytest.raises(ValidationError, match="at least one"):
            UplinkBatch.model_validate(self.batch(self.telemetry(1)))
        with pytest.raises(ValidationError, match="twice"):
            UplinkBatch.model_validate(self.batch(self.telemetry(1, cell(0), cell(0))))

    def test_unknown_fields_and_kinds_are_refused(self) -> None:
        with pytest.raises(ValidationError, match="extra"):
            UplinkBatch.model_validate(self.batch(self.telemetry(1, cell(0, colour="red"))))
        with pytest.raises(ValidationError, match="kind"):
            UplinkBatch.model_validate(self.batch({"kind": "gossip", "seq": 1}))

    def test_battery_id_must_be_topic_safe(self) -> None:
        for bad in ("", "a/b", "a+b", "#", "x" * 65):
            with pytest.raises(ValidationError, match="battery_id"):
                UplinkBatch.model_validate(
                    {"battery_id": bad, "records": [self.telemetry(1, cell(0))]}
                )

    @given(st.lists(st.integers(min_value=1, max_value=10**6), min_size=1, max_size=20))
    def test_any_sorted_distinct_sequence_is_accepted_and_round_trips(
        self, seqs: list[int]
    ) -> None:
        ordered = sorted(set(seqs))
        batch = UplinkBatch.model_validate(
            self.batch(*(self.telemetry(s, cell(0)) for s in ordered))
        )
        assert [r.seq for r in batch.records] == ordered
        assert UplinkBatch.model_validate_json(batch.model_dump_json()) == batch


class TestCommands:
    def test_payload_type_selects_the_model(self) -> None:
        command = Command.model_validate(
            {
                "command_id": str(uuid4()),
                "battery_id": "B-1",
                "created_at": T0.isoformat(),
                "expires_at": (T0 + timedelta(hours=1)).isoformat(),
                "payload": {"type": "reporting_period", "period_s": 10, "duration_s": 600},
            }
        )
        assert isinstance(command.payload, ReportingPeriod)
        assert not command.is_expired(T0) and command.is_expired(T0 + timedelta(hours=1))

    def test_ecm_parameters_need_one_to_three_positive_rc_pairs(self) -> None:
        with pytest.raises(ValidationError, match="rc_pairs"):
            EcmParameters(version=1, r0_ohm=0.01, rc_pairs=[])
        with pytest.raises(ValidationError, match="r_ohm"):
            EcmParameters.model_validate(
                {"version": 1, "r0_ohm": 0.01, "rc_pairs": [{"r_ohm": -1, "c_f": 10}]}
            )

    def test_expiry_must_follow_creation(self) -> None:
        with pytest.raises(ValidationError, match="expires_at"):
            Command.model_validate(
                {
                    "command_id": str(uuid4()),
                    "battery_id": "B-1",
                    "created_at": T0.isoformat(),
                    "expires_at": T0.isoformat(),
                    "payload": {"type": "reporting_period", "period_s": 10},
                }
            )

    def test_a_failure_needs_a_reason(self) -> None:
        with pytest.raises(ValidationError, match="reason"):
            CommandAck(command_id=uuid4(), status=CommandStatus.FAILED, timestamp=T0)
        ack = CommandAck(
            command_id=uuid4(), status=CommandStatus.FAILED, reason="busy", timestamp=T0
        )
        assert ack.final_status_from(CommandStatus.DELIVERED) is CommandStatus.FAILED

    def test_final_states_never_change(self) -> None:
        for final in (CommandStatus.SUCCEEDED, CommandStatus.EXPIRED, CommandStatus.CANCELLED):
            assert final.is_final
            with pytest.raises(TwinValidationError):
                check_command_transition(final, CommandStatus.DELIVERED)
        check_command_transition(CommandStatus.QUEUED, CommandStatus.DELIVERED)
        check_command_transition(CommandStatus.DELIVERED, CommandStatus.DELIVERED)


class TestPassport:
    def passport(self) -> Passport:
        return Passport.model_validate(
            {
                "battery_id": "B-1",
                "attributes": {
                    "manufacturerName": "ACME Cells",
                    "batteryChemistry": "NMC",
                    "ratedCapacity": 100.0,
                    "dismantlingInformation": {"manual": "https://example.invalid/m.pdf"},
                    "resultOfTestReportsProvingCompliance": ["TR-1"],
                    "x-secondLifeGrade": "A",
                },
                "extensions": {"x-secondLifeGrade": {"tier": 1, "description": "grading"}},
            }
        )

    def test_each_tier_sees_its_own_and_lower_attributes(self) -> None:
        passport = self.passport()
        public = passport.view(AccessTier.PUBLIC)
        assert set(public) == {"manufacturerName", "batteryChemistry", "ratedCapacity"}
        legit = passport.view(AccessTier.LEGITIMATE_INTEREST)
        assert set(legit) - set(public) == {"dismantlingInformation", "x-secondLifeGrade"}
        assert len(passport.view(AccessTier.AUTHORITY)) == 6
        assert "resultOfTestReportsProvingCompliance" in passport.restricted_names()

    def test_unknown_or_undeclared_attributes_are_refused(self) -> None:
        with pytest.raises(ValidationError, match="unknown passport attribute 'colour'"):
            Passport.model_validate({"battery_id": "B-1", "attributes": {"colour": "red"}})
        with pytest.raises(ValidationError, match="needs a declaration"):
            Passport.model_validate({"battery_id": "B-1", "attributes": {"x-colour": "red"}})

    def test_tier_labels(self) -> None:
        assert AccessTier.from_label("legitimate_interest") is AccessTier.LEGITIMATE_INTEREST
        with pytest.raises(TwinValidationError, match="unknown access tier"):
            AccessTier.from_label("friends")

    def test_lifecycle_never_returns_to_original_and_waste_is_final(self) -> None:
        check_lifecycle_transition(LifecycleStatus.ORIGINAL, LifecycleStatus.REPURPOSED)
        check_lifecycle_transition(LifecycleStatus.REPURPOSED, LifecycleStatus.WASTE)
        with pytest.raises(TwinValidationError, match="original again"):
            check_lifecycle_transition(LifecycleStatus.REUSED, LifecycleStatus.ORIGINAL)
        with pytest.raises(TwinValidationError, match="waste"):
            check_lifecycle_transition(LifecycleStatus.WASTE, LifecycleStatus.REUSED)
        with pytest.raises(TwinValidationError, match="already"):
            check_lifecycle_transition(LifecycleStatus.REUSED, LifecycleStatus.REUSED)


def test_every_error_is_a_readable_message() -> None:
    """A client gets the field path and the rule, not a stack trace."""
    with pytest.raises(ValidationError) as info:
        Pillar1CellMeasurement.model_validate(cell(soc=1.5))
    detail = json.loads(info.value.json())[0]
    assert detail["loc"] == ["soc"]
    assert "less than or equal to 1" in detail["msg"]


@pytest.mark.parametrize(
    "data",
    [
        '{"x": 1e400}',
        '{"x": [1, {"y": -1e999}]}',
        '{"x": {"y": {"z": NaN}}}',
    ],
)
def test_free_json_refuses_numbers_json_does_not_have(data: str) -> None:
    """``1e400`` parses as infinity: neither JSON nor PostgreSQL's jsonb can carry it back."""
    body = (
        '{"battery_id": "B-1", "records": [{"kind": "event", "seq": 1, '
        '"timestamp": "2025-01-01T00:00:00Z", "event_type": "edge.note", "data": ' + data + "}]}"
    )
    with pytest.raises(ValidationError):
        UplinkBatch.model_validate_json(body)
    fine = body.replace("1e400", "1e300").replace("-1e999", "-1").replace("NaN", "0.5")
    assert UplinkBatch.model_validate_json(fine).records[0].kind == "event"


def test_free_json_of_passports_and_commands_is_finite_too() -> None:
    with pytest.raises(ValidationError):
        Passport.model_validate({"battery_id": "B-1", "attributes": {"x": float("inf")}})
    with pytest.raises(ValidationError):
        ModelUpdate.model_validate(
            {"model": "ecm", "version": "1", "parameters": {"r": [float("nan")]}}
        )
