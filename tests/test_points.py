"""The points table against hook-points.md: every point, its payload kind,
whether a failure aborts the operation, whether the output is used."""
from __future__ import annotations

import re

import pytest

from conftest import REPO, SPEC_DIR
from vmhooks.errors import UnknownPointError, UsageError
from vmhooks.points import POINTS, Payload, Scope, get_point

DOM, DEV, JSON, NONE = Payload.DOMAIN, Payload.DEVICE, Payload.JSON, Payload.NONE

# name: (payload, failure aborts the operation, output used), from hook-points.md
# (with this project's deliberate improvements: the dehibernate and
# migrate-destination edits are honoured).
EXPECTED = {
    "before_vdsm_start": (NONE, False, False),
    "after_vdsm_stop": (NONE, False, False),
    "before_vm_start": (DOM, True, True),
    "after_vm_start": (DOM, False, False),
    "before_device_create": (DEV, True, True),
    "after_device_create": (DEV, False, False),
    "before_vm_cont": (DOM, True, False),
    "after_vm_cont": (DOM, False, False),
    "before_vm_pause": (DOM, True, False),
    "after_vm_pause": (DOM, False, False),
    "before_vm_hibernate": (DOM, True, False),
    "after_vm_hibernate": (DOM, False, False),
    "before_vm_dehibernate": (DOM, True, True),
    "after_vm_dehibernate": (DOM, False, False),
    "before_vm_migrate_source": (DOM, True, False),
    "after_vm_migrate_source": (DOM, False, False),
    "before_vm_migrate_destination": (DOM, True, True),
    "after_vm_migrate_destination": (DOM, False, False),
    "before_device_migrate_source": (DEV, True, False),
    "after_device_migrate_source": (DEV, False, False),
    "before_device_migrate_destination": (DEV, True, False),
    "after_device_migrate_destination": (DEV, False, False),
    "before_vm_destroy": (NONE, False, False),
    "after_vm_destroy": (DOM, False, False),
    "before_device_destroy": (DEV, True, False),
    "after_device_destroy": (DEV, False, False),
    "before_vm_set_ticket": (DOM, False, False),
    "after_vm_set_ticket": (DOM, False, False),
    "before_nic_hotplug": (DEV, True, True),
    "after_nic_hotplug": (DEV, False, False),
    "after_nic_hotplug_fail": (DEV, False, False),
    "before_nic_hotunplug": (DEV, True, False),
    "after_nic_hotunplug": (DEV, False, False),
    "after_nic_hotunplug_fail": (DEV, False, False),
    "before_disk_hotplug": (DEV, True, True),
    "after_disk_hotplug": (DEV, False, False),
    "before_disk_hotunplug": (DEV, True, False),
    "after_disk_hotunplug": (DEV, False, False),
    "before_update_device": (DEV, True, True),
    "after_update_device": (DEV, False, False),
    "after_update_device_fail": (DEV, False, False),
    "before_memory_hotplug": (DEV, True, True),
    "after_memory_hotplug": (DEV, False, False),
    "before_set_num_of_cpus": (NONE, True, False),
    "after_set_num_of_cpus": (NONE, False, False),
    "after_disk_prepare": (JSON, True, True),
    "before_network_setup": (JSON, True, True),
    "after_network_setup": (JSON, False, False),
    "after_network_setup_fail": (JSON, False, False),
    "before_get_caps": (JSON, True, False),
    "after_get_caps": (JSON, False, True),
    "before_get_stats": (JSON, True, False),
    "after_get_stats": (JSON, False, True),
    "before_get_vm_stats": (JSON, True, False),
    "after_get_vm_stats": (JSON, False, True),
    "before_get_all_vm_stats": (JSON, True, False),
    "after_get_all_vm_stats": (JSON, False, True),
    "after_hostdev_list_by_caps": (JSON, False, True),
    # vmhooks extension (not in hook-points.md): the KubeVirt sidecar's cloud-init data.
    "before_cloudinit_iso": (JSON, True, True),
}
EXTENSIONS = {"before_cloudinit_iso"}


def test_table_has_exactly_the_documented_points() -> None:
    assert set(POINTS) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_point_row_matches_the_reference(name: str) -> None:
    point = get_point(name)
    assert point.name == name
    assert (point.payload, point.aborts, point.output_used) == EXPECTED[name]


def _spec_point_names(text: str) -> set[str]:
    """Every point name in the first column of hook-points.md's points table."""
    names: set[str] = set()
    in_table = False
    for line in text.splitlines():
        if line.startswith("| point |"):
            in_table = True
            continue
        if in_table and not line.startswith("|"):
            break
        if in_table:
            first = line.split("|")[1]
            names.update(re.findall(r"\b(?:before|after)_[a-z_]+\b", first))
    return names


def test_table_matches_the_spec_file() -> None:
    spec = SPEC_DIR / "hook-points.md"
    if not spec.exists():
        pytest.skip(f"{spec} not present")
    names = _spec_point_names(spec.read_text())
    assert len(names) > 50  # the parser found the table
    # Every VDSM point, and nothing else but our marked extensions.
    assert names == {name for name, point in POINTS.items() if not point.extension}


def test_extensions_are_marked_and_documented() -> None:
    assert {name for name, point in POINTS.items() if point.extension} == EXTENSIONS
    docs = (REPO / "docs" / "kubevirt.md").read_text()
    for name in EXTENSIONS:
        assert f"`{name}`" in docs, f"{name} is not documented in docs/kubevirt.md"
    assert get_point("before_cloudinit_iso").scope is Scope.VM


def test_point_names_are_unique_and_lower_case() -> None:
    assert all(name == name.lower() for name in POINTS)
    assert len(POINTS) == len(EXPECTED)


def test_only_after_disk_prepare_aborts_among_after_points() -> None:
    aborting_after = {n for n, p in POINTS.items() if n.startswith("after_") and p.aborts}
    assert aborting_after == {"after_disk_prepare"}


def test_scopes() -> None:
    # Device points get the device's custom properties.
    for name, point in POINTS.items():
        if point.payload is DEV:
            assert point.scope is Scope.DEVICE, name
    # Upstream passes no vmId at set_num_of_cpus; we do.
    assert get_point("before_set_num_of_cpus").scope is Scope.VM
    assert get_point("after_set_num_of_cpus").scope is Scope.VM
    for name in ("before_vdsm_start", "after_vdsm_stop", "before_get_caps", "after_get_caps",
                 "before_network_setup", "after_get_all_vm_stats", "after_hostdev_list_by_caps"):
        assert get_point(name).scope is Scope.HOST, name
    for name in ("before_vm_start", "after_vm_destroy", "after_get_vm_stats", "after_disk_prepare"):
        assert get_point(name).scope is Scope.VM, name


def test_extra_params() -> None:
    assert "FROM_SNAPSHOT" in get_point("before_vm_dehibernate").params
    assert "FROM_SNAPSHOT" in get_point("after_vm_dehibernate").params
    assert get_point("before_vm_start").params == ()


def test_payload_kinds_named_by_domxml_or_json() -> None:
    assert Payload.DOMAIN.is_xml and Payload.DEVICE.is_xml and Payload.NONE.is_xml
    assert not Payload.JSON.is_xml


def test_unknown_point_is_a_usage_error() -> None:
    with pytest.raises(UnknownPointError, match="unknown hook point 'before_vm_strat'"):
        get_point("before_vm_strat")
    assert issubclass(UnknownPointError, UsageError)


def test_upper_case_point_gets_a_hint() -> None:
    with pytest.raises(UnknownPointError, match="did you mean 'before_vm_migrate_source'"):
        get_point("before_VM_migrate_source")


@pytest.mark.parametrize(
    "name", ["", "../before_vm_start", "/etc", "before_vm_start/../x", "a/b", "before\0vm"]
)
def test_invalid_point_names_are_refused(name: str) -> None:
    # hook-points.md: a ValueError-class error.
    with pytest.raises(ValueError, match="invalid hook point name"):
        get_point(name)
