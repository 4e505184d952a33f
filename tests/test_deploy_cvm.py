"""deploy/cvm: the systemd unit starts `attestfl serve` with the standard config, as a
dedicated non-root user, with the hardening the guide promises."""

from __future__ import annotations

from collections import defaultdict

from deploy_checks import DEPLOY

UNIT = DEPLOY / "cvm" / "attestfl-aggregator.service"


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    current = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        sections[current][key].append(value)
    return sections


def test_unit_runs_serve_hardened() -> None:
    service = parse_unit(UNIT.read_text())["Service"]
    assert service["ExecStart"] == ["/opt/attestfl/bin/attestfl serve --config /etc/attestfl/aggregator.toml"]
    assert service["User"] == ["attestfl"] and "root" not in service["Group"]
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "RestrictSUIDSGID": "yes",
        "DevicePolicy": "closed",
    }.items():
        assert service[key] == [value], key
    assert "/var/lib/attestfl" in service["ReadWritePaths"]
    assert service["CapabilityBoundingSet"] == [""]
    assert "attestfl/log" in service["StateDirectory"][0] and "attestfl/state" in service["StateDirectory"][0]


def test_unit_refuses_to_start_outside_a_confidential_guest() -> None:
    unit = parse_unit(UNIT.read_text())["Unit"]
    assert set(unit["AssertPathExistsGlob"]) == {"|/dev/sev-guest", "|/dev/tdx_guest", "|/dev/tdx-guest"}
