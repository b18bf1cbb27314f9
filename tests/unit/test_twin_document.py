"""Desired/reported state, delta, merge patches, metadata and optimistic concurrency."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from twin.errors import TwinValidationError, VersionConflictError
from twin.twin_document import (
    TwinDocument,
    compute_delta,
    merge_patch,
    patch_desired,
    update_reported,
)

pytestmark = pytest.mark.unit

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)
ECM = {"version": 2, "r0_ohm": 0.012, "rc_pairs": [{"r_ohm": 0.01, "c_f": 2000.0}]}


def test_rfc7396_examples() -> None:
    target = {"title": "Goodbye!", "author": {"givenName": "John", "familyName": "Doe"}}
    patch = {"title": "Hello!", "author": {"familyName": None}, "tags": ["example"]}
    assert merge_patch(target, patch) == {
        "title": "Hello!",
        "author": {"givenName": "John"},
        "tags": ["example"],
    }
    assert target["title"] == "Goodbye!"  # inputs untouched


def test_delta_lists_only_what_reported_does_not_show() -> None:
    desired = {"reporting_period_s": 5.0, "ecm_parameters": {"version": 2, "r0_ohm": 0.01}}
    reported = {"reporting_period_s": 5.0, "ecm_parameters": {"version": 1, "r0_ohm": 0.01}}
    assert compute_delta(desired, reported) == {"ecm_parameters": {"version": 2}}
    assert compute_delta(desired, desired) == {}


def test_a_desired_patch_bumps_the_version_and_stamps_changed_leaves() -> None:
    twin = TwinDocument(battery_id="B-1")
    twin = patch_desired(twin, {"reporting_period_s": 10.0}, T0, if_match=0)
    assert twin.version == 1
    assert twin.delta == {"reporting_period_s": 10.0}
    twin = patch_desired(twin, {"ecm_parameters": ECM}, T1, if_match=1)
    assert twin.version == 2
    assert twin.metadata.desired["reporting_period_s"] == T0  # unchanged leaf keeps its time
    assert twin.metadata.desired["ecm_parameters.r0_ohm"] == T1


def test_a_stale_version_changes_nothing() -> None:
    twin = patch_desired(TwinDocument(battery_id="B-1"), {"reporting_period_s": 10.0}, T0)
    with pytest.raises(VersionConflictError) as info:
        patch_desired(twin, {"reporting_period_s": 20.0}, T1, if_match=0)
    assert (info.value.expected, info.value.actual) == (0, 1)
    assert twin.desired == {"reporting_period_s": 10.0}


def test_an_invalid_desired_state_is_refused_with_the_field_named() -> None:
    twin = TwinDocument(battery_id="B-1")
    with pytest.raises(TwinValidationError, match="reporting_period_s"):
        patch_desired(twin, {"reporting_period_s": 0.0}, T0)
    with pytest.raises(TwinValidationError, match="colour"):
        patch_desired(twin, {"colour": "red"}, T0)


def test_null_removes_a_desired_key_and_its_metadata() -> None:
    twin = patch_desired(TwinDocument(battery_id="B-1"), {"ecm_parameters": ECM}, T0)
    twin = patch_desired(twin, {"ecm_parameters": None}, T1)
    assert twin.desired == {}
    assert twin.metadata.desired == {}


def test_reported_updates_close_the_delta_without_bumping_the_version() -> None:
    twin = patch_desired(TwinDocument(battery_id="B-1"), {"reporting_period_s": 10.0}, T0)
    twin = update_reported(twin, {"reporting_period_s": 10.0, "soc": {"0": 0.5}}, T1)
    assert twin.version == 1
    assert twin.delta == {}
    assert twin.metadata.reported["soc.0"] == T1


def test_document_round_trips_through_json_exactly() -> None:
    twin = patch_desired(TwinDocument(battery_id="B-1"), {"ecm_parameters": ECM}, T0)
    twin = update_reported(twin, {"soc": {"0": 0.123456789012345}}, T1)
    assert TwinDocument.model_validate_json(twin.model_dump_json()) == twin


json_leaf = st.one_of(st.integers(-100, 100), st.text(max_size=5), st.booleans())
json_obj = st.recursive(
    st.dictionaries(st.text(min_size=1, max_size=4), json_leaf, max_size=4),
    lambda children: st.dictionaries(
        st.text(min_size=1, max_size=4), st.one_of(json_leaf, children), max_size=4
    ),
    max_leaves=12,
)


@given(json_obj, json_obj)
def test_merging_the_delta_makes_reported_match_desired(desired: dict, reported: dict) -> None:  # type: ignore[type-arg]
    """The delta is exactly what the edge must apply for ``desired`` to hold."""
    patched = merge_patch(reported, compute_delta(desired, reported))
    assert compute_delta(desired, patched) == {}
