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
    merge_patch_stamped,
    patch_desired,
    touched_stamps,
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


# -- merge with stamps in one walk (the ingestion path) ------------------------------------------

_KEYS = st.sampled_from(["a", "b", "c"])
_LEAVES = st.one_of(
    st.integers(0, 2), st.booleans(), st.just(1.0), st.lists(st.integers(0, 1), max_size=2)
)
_DOCS = st.recursive(
    _LEAVES, lambda inner: st.dictionaries(_KEYS, inner, max_size=3), max_leaves=12
).filter(lambda d: isinstance(d, dict))
_PATCHES = st.recursive(
    st.one_of(_LEAVES, st.none()),
    lambda inner: st.dictionaries(_KEYS, inner, max_size=3),
    max_leaves=12,
).filter(lambda d: isinstance(d, dict))


@given(_DOCS, _PATCHES, _PATCHES)
def test_merge_patch_stamped_is_merge_patch_then_touched_stamps(
    target: dict[str, object], first: dict[str, object], second: dict[str, object]
) -> None:
    """Checked against the two-step reference, over two successive patches (stamps 1 then
    2 then 3), from stamps as ``touched_stamps`` leaves them."""
    stamps = touched_stamps({}, target, {}, 1)  # type: ignore[arg-type]
    doc = target
    for now, patch in ((2, first), (3, second)):
        expected_doc = merge_patch(doc, patch)  # type: ignore[arg-type]
        expected_stamps = touched_stamps(doc, expected_doc, stamps, now)  # type: ignore[arg-type]
        doc, stamps = merge_patch_stamped(doc, stamps, patch, now)  # type: ignore[arg-type]
        assert doc == expected_doc
        assert stamps == expected_stamps


def test_merge_patch_stamped_keeps_unchanged_leaves_and_inputs() -> None:
    reported = {"cells": {"0": {"v": 3.6, "t": 25.0}}, "seq": 1, "note": {"x": 1}}
    stamps = {"cells.0.v": T0, "cells.0.t": T0, "seq": T0, "note.x": T0}
    merged, after = merge_patch_stamped(
        reported, stamps, {"cells": {"0": {"v": 3.7, "t": 25.0}}, "seq": 2, "note": 5}, T1
    )
    assert merged == {"cells": {"0": {"v": 3.7, "t": 25.0}}, "seq": 2, "note": 5}
    assert after == {"cells.0.v": T1, "cells.0.t": T0, "seq": T1, "note": T1}
    assert reported["seq"] == 1 and stamps["seq"] == T0  # inputs untouched
