"""Saving and checking ONNX graphs of any size.

Protobuf caps a serialized message at 2 GB, and a real model passes it in float (Sana 600M's transformer is
2.4 GB, its Gemma-2 2B text encoder ~10 GB): such a graph keeps its tensors in one external data file beside
it, ``<name>.onnx.data``, which ONNX Runtime, the QNN compiler and ``onnx.load`` resolve from the model's folder.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.external_data_helper import load_external_data_for_model, uses_external_data

#: graphs whose tensors reach this many bytes are saved with external data (protobuf's 2 GB, less headroom for
#: the graph itself)
EXTERNAL_DATA_BYTES = (2 << 30) - (64 << 20)
#: tensors smaller than this stay inside the .onnx (shapes, scales, zero points)
INLINE_TENSOR_BYTES = 1024
#: modules with this many bytes of parameters and buffers or more are exported streaming: their float weights go
#: from the exporter straight to external data, and the export reads them back one tensor at a time
STREAM_BYTES = 64 << 20


def tensor_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the graph's initializers and node attributes (Constant tensors), as serialized."""
    return sum(t.ByteSize() for t in model.graph.initializer) + sum(n.ByteSize() for n in model.graph.node)


def needs_external_data(model: onnx.ModelProto) -> bool:
    return tensor_bytes(model) >= EXTERNAL_DATA_BYTES


def data_file(path: Path) -> Path:
    return path.with_name(f"{path.name}.data")


def module_bytes(module) -> int:  # type: ignore[no-untyped-def]
    """Bytes of a torch module's parameters and buffers."""
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def tensor_value(tensor: onnx.TensorProto, base_dir: str | Path | None = None) -> np.ndarray:
    """An initializer's values, read from its external data file (relative to ``base_dir``) if it has one:
    one tensor at a time, so a graph loaded without its data never holds all its weights."""
    if uses_external_data(tensor):
        if base_dir is None:
            raise ValueError(f"tensor '{tensor.name}' is in external data: give the model's folder")
        return numpy_helper.to_array(tensor, base_dir=str(base_dir))
    return numpy_helper.to_array(tensor)


def inline(tensor: onnx.TensorProto, base_dir: str | Path | None) -> onnx.TensorProto:
    """``tensor`` with its values inside the proto (a copy, if it was in external data)."""
    if not uses_external_data(tensor):
        return tensor
    return numpy_helper.from_array(tensor_value(tensor, base_dir), tensor.name)


#: glibc's mallopt parameter for the size from which allocations are mapped on their own (and unmapped on free)
_M_MMAP_THRESHOLD = -3


def return_big_blocks(threshold: int = 4 << 20) -> None:
    """Make glibc map allocations of ``threshold`` bytes or more on their own, so freeing one returns it to the
    system at once. By default glibc raises that threshold after each such free (up to 32 MB), and the freed
    layer-sized buffers of a big export then stay resident in its heap."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, threshold)


def release_memory() -> None:
    """Hand freed memory back to the system (glibc keeps large freed blocks in its arenas; after a GB-sized ONNX
    Runtime session that would count towards the next stage's peak)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def save_graph(model: onnx.ModelProto, path: str | Path) -> None:
    """Save the graph of a model whose big tensors already live in external data beside ``path`` (the .onnx only;
    the data file is left as it is)."""
    onnx.save(model, str(path))


def save_model(model: onnx.ModelProto, path: str | Path, *, check: bool = False, keep: bool = True) -> None:
    """Save ``model`` at ``path`` (with ``<name>.onnx.data`` beside it when it is too big for one protobuf).
    ``keep``: ``model`` keeps its tensors in memory (else a big one is left pointing at the data file, which saves
    reading them all back). ``check``: run ``onnx.checker`` first (on the saved files for a big model, which are
    removed again if it fails), so an invalid graph is never left on disk."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = data_file(path)
    if any(uses_external_data(t) for t in model.graph.initializer):
        # written while it was built (its data file is already beside ``path``): only the graph is saved
        onnx.save(model, str(path))
        if check:
            _check_saved(path, data)
        return
    data.unlink(missing_ok=True)  # onnx appends to an existing data file; a stale one would also be misleading
    if not needs_external_data(model):
        if check:
            onnx.checker.check_model(model)
        onnx.save(model, str(path))
        return
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name,
              size_threshold=INLINE_TENSOR_BYTES)
    if keep:
        load_external_data_for_model(model, str(path.parent))  # onnx.save moved the tensors out of ``model``
    if check:
        _check_saved(path, data)


def _check_saved(path: Path, data: Path) -> None:
    """``onnx.checker`` on a model saved with external data; an invalid one is removed (graph and data file)."""
    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError:
        path.unlink(missing_ok=True)
        data.unlink(missing_ok=True)
        raise


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with ``value_info`` filled in; for a big model only the graph comes back (tensors not loaded)."""
    if not needs_external_data(model):
        return onnx.shape_inference.infer_shapes(model)
    with tempfile.TemporaryDirectory(prefix="fraqat-shapes-") as tmp:
        src, out = Path(tmp) / "model.onnx", Path(tmp) / "inferred.onnx"
        save_model(model, src)
        onnx.shape_inference.infer_shapes_path(str(src), str(out))
        return onnx.load(str(out), load_external_data=False)


@contextlib.contextmanager
def session_source(model: onnx.ModelProto) -> Iterator[str | bytes]:
    """What ``onnxruntime.InferenceSession`` takes for ``model``: its bytes, or a temporary file for a big one
    (valid while the context is open)."""
    if not needs_external_data(model):
        yield model.SerializeToString()
        return
    with tempfile.TemporaryDirectory(prefix="fraqat-session-") as tmp:
        path = Path(tmp) / "model.onnx"
        save_model(model, path)
        yield str(path)
