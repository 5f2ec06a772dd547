"""The target catalogue: SoC ids with sources, lookup by alias or name, errors that list the targets."""

from __future__ import annotations

import pytest

from fraqat_deploy.errors import ConfigError
from fraqat_deploy.targets import TARGETS, get_target, known_aliases, match_phone_model


def test_s25_ultra_facts() -> None:
    t = get_target("s25u")
    assert (t.soc, t.soc_model, t.htp_arch, t.vtcm_mb) == ("SM8750", 69, "v79", 8)
    assert t.hub_device == "Samsung Galaxy S25 Ultra"
    assert t.hub_chipset == "qualcomm-snapdragon-8-elite-for-galaxy"
    assert t.model_prefixes == ("SM-S938",)


@pytest.mark.parametrize("alias, soc, soc_model, arch", [("s24u", "SM8650", 57, "v75"), ("s23u", "SM8550", 43, "v73")])
def test_older_flagships(alias: str, soc: str, soc_model: int, arch: str) -> None:
    t = get_target(alias)
    assert (t.soc, t.soc_model, t.htp_arch) == (soc, soc_model, arch)


def test_catalogue_is_consistent_and_sourced() -> None:
    aliases = [t.alias for t in TARGETS]
    assert len(aliases) == len(set(aliases)) == len({t.soc_model for t in TARGETS})
    for t in TARGETS:
        assert "soc_model" in t.source
        assert t.as_dict()["soc_model"] == t.soc_model


@pytest.mark.parametrize("key", ["s25u", "S25U", " s25u ", "Samsung Galaxy S25 Ultra", "sm8750"])
def test_lookup_by_alias_name_or_soc(key: str) -> None:
    assert get_target(key).alias == "s25u"


def test_unknown_target_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError) as info:
        get_target("pixel9")
    line = info.value.one_line()
    assert "pixel9" in line
    for alias in known_aliases():
        assert alias in line
    assert "\n" not in line


@pytest.mark.parametrize(
    "code, alias",
    [
        ("SM-S938B", "s25u"),
        ("sm-s938u1", "s25u"),
        ("SM-S9380", "s25u"),
        ("SM-S928B", "s24u"),
        ("SM-S918U", "s23u"),
        ("SM-S931B", None),  # the plain S25
        ("Pixel 9", None),
        ("", None),
    ],
)
def test_match_phone_model(code: str, alias: str | None) -> None:
    target = match_phone_model(code)
    assert (target.alias if target else None) == alias


def test_every_soc_id_is_accepted_by_the_shipped_qnn() -> None:
    """The QNN HTP library itself must accept each catalogue id (an unknown id fails to create the device)."""
    pytest.importorskip("onnxruntime_qnn")
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    from fraqat_deploy.compile.htp import htp_session

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    data = model.SerializeToString()
    onnx.checker.check_model(model)
    for target in TARGETS:
        session = htp_session(data, target)
        assert session.run(None, {"x": np.ones((1, 4), np.float32)})[0].shape == (1, 4)
