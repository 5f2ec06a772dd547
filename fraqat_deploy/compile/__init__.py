"""Compile back ends: a Q/DQ ONNX component -> a QNN context binary for a target's Hexagon HTP.

``local``: onnxruntime-qnn on this machine (EPContext model + .bin, cached in compile.json), HTP parity on the
host simulator; ``debug``: the first tensor where the simulated HTP departs from the CPU; ``htp``: sessions.
"""

from __future__ import annotations

from fraqat_deploy.compile.debug import first_divergence, format_divergence
from fraqat_deploy.compile.htp import cpu_session, htp_session, qnn_versions, register_qnn
from fraqat_deploy.compile.local import (
    COMPILE_JSON,
    compile_cached,
    compile_onnx,
    htp_parity,
    parity_verdict,
    read_compile_json,
)

__all__ = [
    "COMPILE_JSON",
    "compile_cached",
    "compile_onnx",
    "cpu_session",
    "first_divergence",
    "format_divergence",
    "htp_parity",
    "htp_session",
    "parity_verdict",
    "qnn_versions",
    "read_compile_json",
    "register_qnn",
]
