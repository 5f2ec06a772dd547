"""Compile back end on Qualcomm AI Hub: upload each exported component, compile it for the target's AI Hub device,
download the result into ``compile/<target>/`` beside (or instead of) the local back end's.

Target runtime ``precompiled_qnn_onnx``: AI Hub returns what the local back end writes, an ONNX model whose
EPContext node points at a QNN context binary beside it, with the boundary float <-> quantized conversions left
to ONNX Runtime. So the Android app, ``bench --device sim`` and ``bench --backend hub`` open the same files
whichever back end built them (``qnn_context_binary`` would need a second loader in the app). The QAIRT version
is pinned to the local onnxruntime-qnn's (``--qairt_version 2.51``): a context binary loads only on the QNN
runtime it was built with, and the app and the host simulator ship that one.

Uploads are named ``<component>-<sha256[:16]>.onnx`` (the hash of the ONNX and its external data): an export
already on AI Hub, from this run or any other, is found by that name and not uploaded again.

Credentials are qai_hub's own (``~/.qai_hub/client.ini`` or the file ``QAIHUB_CLIENT_INI`` names). The token is
never printed, logged or written: messages from the service pass through ``HubSession.redact``.
"""

from __future__ import annotations

import contextlib
import difflib
import io
import os
import re
import shutil
import tempfile
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from fraqat_deploy.compile.local import (
    COMPILE_FORMAT,
    EP_CONTEXT_OP,
    boundary_node_names,
    external_data_files,
    load_model,
    model_digest,
    node_attr,
    outputs_intact,
    read_compile_json,
)
from fraqat_deploy.errors import ConfigError, DeviceError, FraqatError, InputError
from fraqat_deploy.runs import RunDir, sha256_file, write_json_atomic
from fraqat_deploy.targets import Target, get_target

TARGET_RUNTIME = "precompiled_qnn_onnx"
DEFAULT_TIMEOUT_S = 3600.0
POLL_S = 10.0  # as often as the qai_hub client itself polls
#: how many of the account's newest models to search for an upload of the same export
REUSE_SEARCH = 200
TOKEN_FIX = ("run `qai-hub configure --api_token <token>` (the token is on your AI Hub account page), or set "
             "QAIHUB_CLIENT_INI to a client.ini whose [api] section has api_token, api_url and web_url")
#: ONNX element type -> the dtype name AI Hub's input specs use
SPEC_DTYPES = {1: "float32", 10: "float16", 7: "int64", 6: "int32", 2: "uint8", 3: "int8", 4: "uint16",
               5: "int16", 9: "bool"}

Event = Callable[[str, dict[str, Any]], None]


@dataclass
class HubSession:
    """A checked connection: the client, its config file, the resolved AI Hub device of the target."""

    client: Any  # qai_hub.Client
    device: Any  # qai_hub.Device
    target: Target
    config_path: Path
    api_url: str
    token: str = field(repr=False)

    def redact(self, text: str) -> str:
        return text.replace(self.token, "***") if self.token else text

    def device_info(self) -> dict[str, Any]:
        chipset = next((a.split(":", 1)[1] for a in self.device.attributes if a.startswith("chipset:")), None)
        return {"name": self.device.name, "os": self.device.os, "chipset": chipset}

    def call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call the client; its errors become one-line FraqatErrors (the auth failure names the token fix)."""
        import qai_hub
        import requests

        try:
            with quiet():
                return fn(*args, **kwargs)
        except (qai_hub.client.Error, requests.RequestException, qai_hub.public_rest_api.APIException,
                ValueError) as e:
            message = self.redact(hub_message(e))
            if "authenticat" in message.lower():
                raise ConfigError(f"Qualcomm AI Hub rejected the API token in {self.config_path}", TOKEN_FIX) \
                    from None
            raise DeviceError(f"Qualcomm AI Hub: {what} failed: {message}",
                              f"check the service at {self.api_url} and re-run the same command") from None


def hub_message(exc: BaseException) -> str:
    """qai_hub's messages come in drawn boxes over several lines: one line of their words."""
    text = re.sub(r"[\u2500-\u257f|]+", " ", str(exc) or type(exc).__name__)
    return re.sub(r"\s+", " ", text).strip()


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    # The client prints progress ("Downloaded model to ...") on stdout even when not verbose; the CLI's own
    # progress goes to stderr.
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def connect(target: Target, *, hub_device: str | None = None) -> HubSession:
    """Read the client config, check the token against the service, find the target's AI Hub device."""
    import qai_hub
    from qai_hub import api_utils
    from qai_hub.public_rest_api import APIException, get_auth_user

    path = Path(api_utils.get_config_path())
    if not path.is_file():
        raise ConfigError(f"no Qualcomm AI Hub credentials: {path} does not exist", TOKEN_FIX)
    try:
        config = api_utils.load_api_config_from_file(str(path))
    except Exception:  # missing [api] keys (APIException), unreadable ini (configparser errors)
        raise ConfigError(f"{path} is not a usable AI Hub client.ini (it needs [api] api_token, api_url and "
                          "web_url)", TOKEN_FIX) from None
    token = config.api_token.strip()
    if not token:
        raise ConfigError(f"no Qualcomm AI Hub token: api_token is empty in {path}", TOKEN_FIX)
    config.verbose = False
    client = qai_hub.Client(config=config)
    session = HubSession(client, None, target, path, config.api_url, token)
    try:
        with quiet():
            get_auth_user(config)
    except APIException as e:
        if e.status_code in (401, 403):
            raise ConfigError(f"Qualcomm AI Hub rejected the API token in {path} (HTTP {e.status_code})",
                              TOKEN_FIX) from None
        raise DeviceError(f"Qualcomm AI Hub answered the token check with HTTP {e.status_code}: "
                          f"{session.redact(hub_message(e))}", f"check the service at {config.api_url}") from None
    except Exception as e:
        raise DeviceError(f"cannot reach Qualcomm AI Hub at {config.api_url}: {session.redact(hub_message(e))}",
                          f"check the network, or api_url in {path}") from None
    session.device = resolve_device(session, hub_device or target.hub_device)
    return session


def resolve_device(session: HubSession, name: str) -> Any:
    """The AI Hub device of that exact name; if the service lists none, a ConfigError with close matches."""
    found = session.call("the device list", session.client.get_devices, name=name)
    if found:
        return found[0]
    devices = session.call("the device list", session.client.get_devices)
    names = sorted({d.name for d in devices})
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
    same_chip = [d.name for d in devices if f"chipset:{session.target.hub_chipset}" in d.attributes]
    suggestions = list(dict.fromkeys(close + same_chip))[:6]
    listing = f"close matches: {', '.join(suggestions)}" if suggestions else f"it lists {len(names)} other devices"
    raise ConfigError(f"Qualcomm AI Hub has no device named '{name}'; {listing}",
                      "pass --hub-device with one of those names (`qai-hub list-devices` lists them all)")


def wait_for_jobs(session: HubSession, jobs: Mapping[str, Any], *, timeout_s: float, poll_s: float,
                  resume_fix: Callable[[list[str]], str], on_event: Event | None = None) -> None:
    """Poll until every job (label -> qai_hub Job) succeeds. A failed job raises DeviceError with its message and
    URL at once; the timeout raises DeviceError naming the unfinished jobs, and ``resume_fix(ids of every job
    awaited)`` as the fix: a resumed call takes over the finished jobs too."""
    event = on_event or (lambda kind, data: None)
    deadline = time.monotonic() + timeout_s
    seen: dict[str, str] = {}
    while True:
        pending = []
        for label, job in jobs.items():
            status = session.call(f"the status of job {job.job_id}", job.get_status)
            if seen.get(label) != status.code:
                seen[label] = status.code
                event("job", {"label": label, "id": job.job_id, "state": status.code, "url": job.url})
            if status.failure:
                reason = session.redact(hub_message(Exception(status.message or "no reason given")))
                raise DeviceError(f"AI Hub {label} job {job.job_id} failed: {reason} ({job.url})",
                                  "read the job's log on that page, fix the model or the options and re-run")
            if not status.success:
                pending.append(label)
        event("wait", {"done": len(jobs) - len(pending), "total": len(jobs)})
        if not pending:
            return
        if time.monotonic() >= deadline:
            listing = ", ".join(f"{jobs[label].job_id} ({label}, {seen[label]})" for label in pending)
            raise DeviceError(f"AI Hub jobs still unfinished after {timeout_s:.0f} s: {listing}",
                              resume_fix([job.job_id for job in jobs.values()]))
        time.sleep(poll_s)


def input_specs(model: onnx.ModelProto) -> dict[str, tuple[tuple[int, ...], str]]:
    """The graph inputs as AI Hub input specs (static shapes only: every export is static)."""
    specs = {}
    for value in model.graph.input:
        tensor = value.type.tensor_type
        shape = tuple(d.dim_value for d in tensor.shape.dim)
        if any(d.dim_value <= 0 for d in tensor.shape.dim) or tensor.elem_type not in SPEC_DTYPES:
            raise ConfigError(f"input '{value.name}' has a dynamic shape or an unsupported type",
                              "export with static shapes (fraqat-deploy export)")
        specs[value.name] = (shape, SPEC_DTYPES[tensor.elem_type])
    return specs


def upload_name(onnx_path: Path, digest: str) -> str:
    return f"{onnx_path.stem}-{digest[:16]}.onnx"


@contextlib.contextmanager
def _upload_source(onnx_path: Path) -> Iterator[Path]:
    """The .onnx itself, or, when its weights live in an external data file, a folder with both (how AI Hub takes
    a model over 2 GB: one .onnx and one .data)."""
    extra = external_data_files(load_model(onnx_path), onnx_path.parent)
    if not extra:
        yield onnx_path
        return
    if len(extra) > 1 or extra[0].suffix != ".data":
        raise InputError(f"{onnx_path.name} keeps its weights in {', '.join(f.name for f in extra)}; AI Hub takes "
                         "one external data file ending in .data", "re-export the component")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / f"{onnx_path.stem}.onnx"
        folder.mkdir()
        for file in (onnx_path, extra[0]):
            os.symlink(file.resolve(), folder / file.name)
        yield folder


def find_or_upload(session: HubSession, onnx_path: Path, digest: str, known_model_id: str | None) -> tuple[Any, bool]:
    """The AI Hub model of this export: the one recorded for this hash, else one of that name on the service,
    else a new upload. Returns (model, uploaded)."""
    import qai_hub

    name = upload_name(onnx_path, digest)
    client = session.client
    if known_model_id:
        try:
            with quiet():
                model = client.get_model(known_model_id)
            if model.name == name:
                return model, False
        except qai_hub.client.Error:  # deleted or expired: look further
            pass
    for model in session.call("the model list", client.get_models, limit=REUSE_SEARCH):
        if model.name == name and model.model_type == qai_hub.SourceModelType.ONNX:
            return model, False
    with _upload_source(onnx_path) as source:
        return session.call(f"the upload of {onnx_path.name}", client.upload_model, str(source), name=name), True


def install_target_model(downloaded: Path, out_dir: Path, stem: str) -> dict[str, Any]:
    """Put AI Hub's precompiled QNN ONNX (a zipped ``<name>.onnx/`` folder: the EPContext model and its
    ``_qairt_context.bin``) into ``out_dir`` under the local back end's names (``<stem>_ctx.onnx`` +
    ``<stem>_ctx_qnn.bin``), the EPContext node rewritten to point at the renamed binary."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=f".hub-{stem}-") as tmp:
        root = Path(tmp) / "unpacked"
        if zipfile.is_zipfile(downloaded):
            with zipfile.ZipFile(downloaded) as archive:
                archive.extractall(root)
        elif downloaded.is_dir():
            root = downloaded
        else:
            root = downloaded.parent
        models = [p for p in root.rglob("*.onnx") if p.is_file()]
        if len(models) != 1:
            raise DeviceError(f"AI Hub's compiled {stem} holds {len(models)} ONNX files, not one",
                              "report it; the job's page has the files")
        source = models[0]
        model = onnx.load(str(source), load_external_data=False)
        ep_nodes = [n for n in model.graph.node if n.op_type == EP_CONTEXT_OP]
        if not ep_nodes:
            raise DeviceError(f"AI Hub's compiled {stem} has no EPContext node (not a precompiled QNN ONNX)",
                              f"compile with --target_runtime {TARGET_RUNTIME}")
        renamed: dict[str, str] = {}
        for node in ep_nodes:
            for attr in node.attribute:
                if attr.name == "ep_cache_context" and node_attr(node, "embed_mode") in (0, None):
                    ref = attr.s.decode()
                    if ref not in renamed:
                        renamed[ref] = f"{stem}_ctx_qnn{'' if not renamed else f'_{len(renamed)}'}.bin"
                        if not (source.parent / ref).is_file():
                            raise DeviceError(f"AI Hub's compiled {stem} lacks its context binary {ref}",
                                              "re-run the compile (--force)")
                    attr.s = renamed[ref].encode()
        staged = Path(tmp) / "staged"
        staged.mkdir()
        ctx_name = f"{stem}_ctx.onnx"
        onnx.save(model, str(staged / ctx_name))
        for ref, new in renamed.items():
            shutil.copyfile(source.parent / ref, staged / new)
        produced = [ctx_name, *renamed.values()]
        for name in produced:
            os.replace(staged / name, out_dir / name)
    cpu = [n for n in model.graph.node if n.op_type != EP_CONTEXT_OP]
    boundary = boundary_node_names(model)
    return {
        "ctx_onnx": ctx_name,
        "context_binaries": list(renamed.values()),
        "files": {name: (out_dir / name).stat().st_size for name in produced},
        "file_sha256": {name: sha256_file(out_dir / name) for name in produced},
        "context_binary_bytes": sum((out_dir / b).stat().st_size for b in renamed.values()),
        "ep_sdk_version": next((v for v in (node_attr(n, "ep_sdk_version") for n in ep_nodes) if v), None),
        "coverage": {
            "nodes": len(model.graph.node),
            "ep_context_partitions": len(ep_nodes),
            "cpu_boundary": sum(n.name in boundary for n in cpu),
            "cpu_fallback": sum(n.name not in boundary for n in cpu),
            "cpu_op_types": dict(sorted(Counter(n.op_type for n in cpu).items())),
            "note": "the HTP's share per operator is in the hub bench's profile_<component>.json",
        },
    }


def qairt_pin(qairt_version: str | None = "auto") -> str | None:
    """The QAIRT version to ask AI Hub for: ``auto`` is the local onnxruntime-qnn's QNN major.minor (the runtime the
    app and the host simulator load context binaries with); None leaves AI Hub's default."""
    if qairt_version != "auto":
        return qairt_version or None
    from fraqat_deploy.compile.htp import qnn_versions

    sdk = qnn_versions().get("qnn_sdk")
    return ".".join(sdk.split(".")[:2]) if sdk else None


def compile_options(pin: str | None, extra: str = "") -> str:
    parts = [f"--target_runtime {TARGET_RUNTIME}"]
    if pin:
        parts.append(f"--qairt_version {pin}")
    if extra.strip():
        parts.append(extra.strip())
    return " ".join(parts)


def _resume_fix(command: str) -> Callable[[list[str]], str]:
    return lambda ids: (f"resume waiting with `{command} " + " ".join(f"--resume-job {i}" for i in ids)
                        + "` (or raise --timeout)")


def resumed_job(session: HubSession, job_id: str, kinds: tuple[str, ...], names: list[str]
                ) -> tuple[str, str, Any, list[str]]:
    """A job given to --resume-job: (kind, component, job, the rest of its name), read from the name this module
    gave it when submitting (``<kind> <component> [...]``)."""
    import qai_hub

    try:
        with quiet():
            job = session.client.get_job(job_id)
    except qai_hub.client.Error as e:
        raise ConfigError(f"--resume-job {job_id}: {session.redact(hub_message(e))}",
                          "pass the id of a job this run submitted (run.json lists them)") from None
    words = (job.name or "").split()
    if len(words) < 2 or words[0] not in kinds or words[1] not in names:
        raise ConfigError(f"--resume-job {job_id} is not a {' or '.join(kinds)} job of this run ('{job.name}')",
                          "pass the id of a job this run submitted (run.json lists them)")
    return words[0], words[1], job, words[2:]


def hub_compile_run(run: Path, device: str, *, resume_job: str | list[str] | None = None,
                    timeout_s: float = DEFAULT_TIMEOUT_S, poll_s: float = POLL_S, components: list[str] | None = None,
                    force: bool = False, hub_device: str | None = None, qairt_version: str | None = "auto",
                    options: str = "", on_event: Event | None = None) -> dict[str, Any]:
    """Compile every exported component of ``run`` on AI Hub for ``device`` (a target alias) and download the
    results into ``run/compile/<alias>/`` (``<component>_ctx.onnx`` + ``_ctx_qnn.bin``, one record per component
    in compile.json with ``backend: hub``, the job ids and URLs; run.json's stage lists the jobs too).

    A component whose record already holds a hub compile of the same export, options and device is kept
    (``cached``) unless ``force``. ``resume_job``: ids of compile jobs submitted by an earlier, timed-out call,
    waited for instead of new ones (the other components are compiled again). Returns target, records, out,
    uploaded / reused / cached component names, jobs.
    """
    from fraqat_deploy.compile.run import read_export

    run = Path(run)
    target = get_target(device)
    exported = read_export(run)
    names = list(exported["components"])
    wanted = [n for n in names if not components or n in components]
    unknown = sorted(set(components or []) - set(names))
    if unknown:
        raise ConfigError(f"unknown component(s) {', '.join(unknown)}", f"use: {', '.join(names)}")
    resume_ids = [resume_job] if isinstance(resume_job, str) else list(resume_job or [])
    event = on_event or (lambda kind, data: None)
    session = connect(target, hub_device=hub_device)
    pin = qairt_pin(qairt_version)
    options_text = compile_options(pin, options)
    rd = RunDir(run)
    stage = f"compile/{target.alias}"
    out = rd.stage_dir(stage)
    export_dir = run / "export"
    data = read_compile_json(out)
    records: dict[str, Any] = {}
    plan: dict[str, dict[str, Any]] = {}
    for name in wanted:
        onnx_path = export_dir / exported["components"][name]["onnx"]
        digest = model_digest(onnx_path)
        previous = data["components"].get(onnx_path.stem) or {}
        hub_info = previous.get("hub") or {}
        same = (previous.get("backend") == "hub" and previous.get("input_sha256") == digest
                and previous.get("options", {}).get("hub_options") == options_text
                and hub_info.get("device") == session.device.name)
        if same and not force and not resume_ids and outputs_intact(out, previous):
            records[name] = dict(previous) | {"cached": True}
            continue
        known = hub_info.get("model_id") if previous.get("input_sha256") == digest else None
        plan[name] = {"onnx": onnx_path, "digest": digest, "known_model_id": known}
    jobs: dict[str, Any] = {}
    for job_id in resume_ids:
        _, name, job, _ = resumed_job(session, job_id, ("compile",), list(plan))
        expected = upload_name(plan[name]["onnx"], plan[name]["digest"])
        if job.model.name != expected:
            raise ConfigError(f"--resume-job {job_id} compiled another export of {name} ({job.model.name})",
                              "drop --resume-job to compile the current export")
        jobs[name] = job
    uploaded, reused = [], []
    command = f"fraqat-deploy compile {exported.get('adapter', '<model>')} --run {run} --backend hub --device " \
              f"{target.alias}"
    rd.update_stage(stage, "running", target=target.alias, backend="hub", hub_device=session.device_info())
    try:
        for name, item in plan.items():
            if name in jobs:
                continue
            event("upload", {"component": name})
            model, fresh = find_or_upload(session, item["onnx"], item["digest"], item["known_model_id"])
            (uploaded if fresh else reused).append(name)
            specs = input_specs(load_model(item["onnx"]))
            event("submit", {"component": name})
            jobs[name] = session.call(f"the compile job of {name}", session.client.submit_compile_job, model,
                                      session.device, name=f"compile {name}", input_specs=specs, options=options_text)
        job_refs = {n: {"compile_job_id": j.job_id, "url": j.url} for n, j in jobs.items()}
        rd.update_stage(stage, "running", jobs=job_refs)
        wait_for_jobs(session, {f"compile {n}": j for n, j in jobs.items()}, timeout_s=timeout_s, poll_s=poll_s,
                      resume_fix=_resume_fix(command), on_event=event)
        for name, job in jobs.items():
            event("download", {"component": name})
            options_record = {"hub_options": options_text, "target_runtime": TARGET_RUNTIME, "qairt_version": pin}
            records[name] = _download(session, job, plan[name], out, options_record, uploaded=name in uploaded)
            data = read_compile_json(out)  # re-read: keep records other runs wrote meanwhile
            data["schema_version"] = COMPILE_FORMAT
            data["components"][plan[name]["onnx"].stem] = records[name]
            write_json_atomic(out / "compile.json", data)
    except FraqatError as e:
        rd.update_stage(stage, "failed", reason=e.one_line(),
                        jobs={n: {"compile_job_id": j.job_id, "url": j.url} for n, j in jobs.items()})
        raise
    job_refs = {n: {"compile_job_id": r["hub"]["compile_job_id"], "url": r["hub"]["compile_job_url"]}
                for n, r in records.items()}
    rd.update_stage(stage, "done", target=target.alias, backend="hub", components=list(records), jobs=job_refs,
                    uploaded=uploaded, reused_uploads=reused,
                    cached=[n for n, r in records.items() if r.get("cached")])
    return {"target": target.alias, "records": records, "out": out, "uploaded": uploaded, "reused": reused,
            "cached": [n for n, r in records.items() if r.get("cached")], "jobs": job_refs,
            "device": session.device_info()}


def _download(session: HubSession, job: Any, item: Mapping[str, Any], out: Path, options: dict[str, Any], *,
              uploaded: bool) -> dict[str, Any]:
    import qai_hub

    target = session.target
    stem = item["onnx"].stem
    target_model = session.call(f"the target model of job {job.job_id}", job.get_target_model)
    with tempfile.TemporaryDirectory() as tmp:
        path = session.call(f"the download of job {job.job_id}'s model", target_model.download, tmp)
        installed = install_target_model(Path(path), out, stem)
    keys = qai_hub.ModelMetadataKey
    metadata = session.call("the target model's metadata", lambda: target_model.metadata)
    qairt = metadata.get(keys.QAIRT_SDK_VERSION) or metadata.get(keys.QNN_SDK_VERSION)
    soc_model = metadata.get(keys.QNN_CONTEXT_BIN_SOC_MODEL)
    return {
        "component": stem,
        "backend": "hub",
        "input": str(item["onnx"]),
        "input_sha256": item["digest"],
        "ctx_onnx": installed["ctx_onnx"],
        "context_binaries": installed["context_binaries"],
        "files": installed["files"],
        "context_binary_bytes": installed["context_binary_bytes"],
        "target": target.alias,
        "device": target.name,
        "soc": target.soc,
        "soc_model": int(soc_model) if soc_model and soc_model.isdigit() else target.soc_model,
        "htp_arch": target.htp_arch,
        "versions": {"qnn_build": qairt, "qairt": qairt, "ep_sdk_version": installed["ep_sdk_version"],
                     "qai_hub": str(qai_hub.__version__), "hub_version": job.hub_version},
        "options": options,
        "coverage": installed["coverage"],
        "hub": {"device": session.device.name, "device_os": session.device.os,
                "chipset": session.device_info()["chipset"], "model_id": job.model.model_id,
                "model_name": job.model.name, "uploaded": uploaded, "compile_job_id": job.job_id,
                "compile_job_url": job.url, "target_model_id": target_model.model_id,
                "target_model_url": target_model.url},
        "cached": False,
    }
