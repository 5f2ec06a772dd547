"""The devices we compile for: alias -> phone -> SoC -> QNN ``soc_model`` id and Qualcomm AI Hub device.

Every fact carries its source. Only SoC ids that two independent sources agree on are listed, and each was
also checked against the QNN HTP library shipped in the onnxruntime-qnn wheel: given ``soc_model=N`` the
library logs the SoC name it maps N to (``Performance Estimates unsupported on soc SM8650``), and an unknown
id fails with ``Unknown config socModel``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from fraqat_deploy.errors import ConfigError

# Where the QNN SoC ids come from (the same for every target; quoted in each target's ``source``).
_SOC_ID_SOURCES = (
    "QNN soc_model ids: Qualcomm's SoC table in LiteRT's QNN vendor code "
    "(tensorflow/tensorflow .../vendors/qualcomm/core/schema/soc_table.{h,cc}: SM8550=43 v73, SM8650=57 v75, "
    "SM8750=69 v79, 8 MB VTCM each) and ExecuTorch's QNN backend (pytorch/executorch "
    "backends/qualcomm/serialization/qc_compiler_spec.fbs: SM8550=43, SM8650=57, SM8750=69); confirmed with the "
    "QNN 2.51 HTP library in onnxruntime-qnn 2.7.0, which names the SoC for each id"
)
_HUB_SOURCE = "AI Hub device and chipset: quic/ai-hub-models qai_hub_models/scorecard/website/devices_and_chipsets.yaml"


@dataclass(frozen=True)
class Target:
    """One phone (and its SoC) that we compile for and benchmark on."""

    alias: str  # what users type: --device s25u
    name: str  # marketing name of the phone
    soc: str  # Qualcomm part number, what ``getprop ro.soc.model`` reads
    soc_name: str  # marketing name of the SoC
    soc_model: int  # QNN SoC id, the QNN EP's ``soc_model`` provider option
    htp_arch: str  # Hexagon HTP architecture (informational: the QNN EP derives it from soc_model)
    vtcm_mb: int  # VTCM size of the HTP in MB
    hub_device: str  # Qualcomm AI Hub device name
    hub_chipset: str  # Qualcomm AI Hub ``chipset:`` attribute of that device
    model_prefixes: tuple[str, ...]  # ``getprop ro.product.model`` prefixes of the phone's variants
    source: str  # where each fact above comes from

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["model_prefixes"] = list(self.model_prefixes)
        return data


TARGETS: tuple[Target, ...] = (
    Target(
        alias="s25u",
        name="Samsung Galaxy S25 Ultra",
        soc="SM8750",
        soc_name="Snapdragon 8 Elite for Galaxy",
        soc_model=69,
        htp_arch="v79",
        vtcm_mb=8,
        hub_device="Samsung Galaxy S25 Ultra",
        hub_chipset="qualcomm-snapdragon-8-elite-for-galaxy",
        model_prefixes=("SM-S938",),
        source=(
            "FraQAT paper (arXiv 2510.14823) for the phone and SM8750-AB; docs/htp-notes.md (Target) for "
            "soc_model 69, v79, 8 MB VTCM, the AI Hub name and chipset attribute and the SM-S938 model codes; "
            + _SOC_ID_SOURCES
        ),
    ),
    Target(
        alias="s24u",
        name="Samsung Galaxy S24 Ultra",
        soc="SM8650",
        soc_name="Snapdragon 8 Gen 3 for Galaxy",
        soc_model=57,
        htp_arch="v75",
        vtcm_mb=8,
        hub_device="Samsung Galaxy S24 Ultra",
        hub_chipset="qualcomm-snapdragon-8gen3",
        model_prefixes=("SM-S928",),
        source=(
            _SOC_ID_SOURCES
            + "; "
            + _HUB_SOURCE
            + "; model codes SM-S928B/U/N from published Geekbench and certification listings (press reports), "
            "not from a Samsung document"
        ),
    ),
    Target(
        alias="s23u",
        name="Samsung Galaxy S23 Ultra",
        soc="SM8550",
        soc_name="Snapdragon 8 Gen 2 for Galaxy",
        soc_model=43,
        htp_arch="v73",
        vtcm_mb=8,
        hub_device="Samsung Galaxy S23 Ultra",
        hub_chipset="qualcomm-snapdragon-8gen2",
        model_prefixes=("SM-S918",),
        source=(
            _SOC_ID_SOURCES
            + "; "
            + _HUB_SOURCE
            + "; model codes SM-S918B/U/U1/W from leaked-firmware and IMEI-database reports (press), "
            "not from a Samsung document"
        ),
    ),
)


def _keys(target: Target) -> tuple[str, ...]:
    # Users type the alias, but a phone or SoC name pasted from elsewhere should work too; the SoC is
    # unambiguous because the catalogue holds one phone per SoC.
    return tuple(k.casefold() for k in (target.alias, target.name, target.hub_device, target.soc))


def known_aliases() -> list[str]:
    return [t.alias for t in TARGETS]


def get_target(alias_or_name: str) -> Target:
    """The target for an alias (``s25u``), phone name, AI Hub device name or SoC (``SM8750``)."""
    key = alias_or_name.strip().casefold()
    for target in TARGETS:
        if key in _keys(target):
            return target
    listing = ", ".join(f"{t.alias} ({t.name}, {t.soc})" for t in TARGETS)
    raise ConfigError(
        f"unknown target '{alias_or_name}'; known targets: {listing}",
        fix=f"pass --device with one of: {', '.join(known_aliases())}",
    )


def match_phone_model(model_code: str) -> Target | None:
    """The target whose phone has this ``ro.product.model`` (``SM-S938B`` -> s25u), or None."""
    code = model_code.strip().upper()
    for target in TARGETS:
        if any(code.startswith(prefix) for prefix in target.model_prefixes):
            return target
    return None
