"""The HTTP side of the AI Hub double: routes, authentication, protobuf messages, the blob store.

Endpoints (under ``/api/v1/``, each with the trailing slash the client sends), as ``qai_hub/public_rest_api.py``
calls them:

    GET   users/auth/user/                            User (the token check)
    GET   devices/?name&os&attributes&select          DeviceList
    POST  models/                                     Model -> CreateUpdateResponse
    GET   models/?offset&limit                        ModelList, newest first
    GET   models/<id>/                                Model
    GET   models/<id>/multipart_upload/?file_size     FileUploadResponse (presigned part URLs)
    POST  models/<id>/multipart_upload/               FileMultipartUploadComplete -> CreateUpdateResponse
    GET   models/<id>/download/                       FileDownloadResponse (a presigned URL)
    POST  jobs/                                       Job (compile_job | inference_job) -> CreateUpdateResponse
    GET   jobs/<id>/                                  Job
    GET   jobs/<id>/result/                           JobResult (profile detail, output dataset id)
    GET   jobs/<id>/device_runs/latest/artifact_list/<type>/   NamedArtifactDownloadURLList (no logs here)
    POST  datasets/                                   Dataset -> CreateUpdateResponse (expires in 30 days)
    GET   datasets/<id>/                              Dataset
    GET   datasets/<id>/upload_url/                   FileUploadResponse (a presigned form POST)
    PATCH datasets/<id>/                              Dataset(file_upload_complete) -> CreateUpdateResponse
    GET   datasets/<id>/download_data/                FileDownloadResponse

and, unauthenticated like S3's presigned URLs: ``PUT /blob/parts/<upload>/<n>`` (answers an ETag),
``POST /blob/datasets/<id>`` (multipart form) and ``GET /blob/<kind>/<id>``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import qai_hub.public_api_pb2 as pb

PROTOBUF = "application/x-protobuf"
API = "/api/v1/"
PART_SIZE = 1 << 20  # small parts, so a 1.2 MB model already travels in two
S25U = "Samsung Galaxy S25 Ultra"

DEFAULT_DEVICES = (
    (S25U, "15", ("chipset:qualcomm-snapdragon-8-elite-for-galaxy", "os:android", "manufacturer:samsung",
                  "vendor:samsung", "format:phone", "framework:qnn", "framework:onnx", "framework:tflite",
                  "hexagon:v79", "htp-supports-fp16:true")),
    ("Snapdragon 8 Elite QRD", "15", ("chipset:qualcomm-snapdragon-8-elite", "os:android", "manufacturer:qualcomm",
                                      "vendor:qualcomm", "format:phone", "framework:qnn", "framework:onnx",
                                      "framework:tflite", "hexagon:v79")),
    ("Samsung Galaxy S24 Ultra", "14", ("chipset:qualcomm-snapdragon-8gen3", "os:android", "manufacturer:samsung",
                                        "vendor:samsung", "format:phone", "framework:qnn", "framework:onnx",
                                        "framework:tflite", "hexagon:v75")),
    ("Samsung Galaxy S25 (Family)", "15", ("chipset:qualcomm-snapdragon-8-elite-for-galaxy", "os:android",
                                           "manufacturer:samsung", "vendor:samsung", "format:phone",
                                           "framework:qnn", "framework:onnx", "framework:tflite", "hexagon:v79")),
)


class HttpError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass
class Model:
    id: str
    name: str
    model_type: int
    is_directory: bool
    created: float
    blob: Path | None = None  # the file (a .zip for directory models) once uploaded or produced
    filename: str = ""
    producer_id: str = ""
    complete: bool = False
    metadata: dict[int, str] = field(default_factory=dict)
    input_spec: list[tuple[str, tuple[int, ...], int]] = field(default_factory=list)
    output_spec: list[tuple[str, tuple[int, ...], int]] = field(default_factory=list)


@dataclass
class Dataset:
    id: str
    name: str
    created: float
    blob: Path | None = None
    complete: bool = False


@dataclass
class Job:
    id: str
    kind: str  # "compile" | "profile" | "inference"
    name: str
    model_id: str
    device: tuple[str, str, tuple[str, ...]]
    options: str
    created: float
    input_specs: list[tuple[str, tuple[int, ...], int]] = field(default_factory=list)
    dataset_id: str = ""
    target_model_id: str = ""
    state: int = pb.JobState.JOB_STATE_CREATED
    failure: str = ""
    history: list[str] = field(default_factory=list)
    profile: pb.ProfileDetail | None = None
    output_dataset_id: str = ""

    def set_state(self, state: int) -> None:
        self.state = state
        self.history.append(pb.JobState.Name(state).removeprefix("JOB_STATE_"))


class HubDouble:
    """The double's state and its HTTP server. Knobs for the tests:

    ``token``: the one API token it accepts (anything else: HTTP 401); ``devices``: the device list (remove one
    to make it unknown); ``fail``: job-name substring -> failure message (matching jobs end FAILED with it);
    ``stall``: job-name substrings whose jobs stay running until ``release()``. ``counts`` tallies what happened
    (``model_uploads``, ``jobs_<kind>``, ``datasets``), ``requests`` lists (method, path) of every request."""

    def __init__(self, root: Path, token: str = "double-token-7f3a9c") -> None:
        from hub_double.jobs import Worker

        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.token = token
        self.devices: list[tuple[str, str, tuple[str, ...]]] = list(DEFAULT_DEVICES)
        self.fail: dict[str, str] = {}
        self.stall: set[str] = set()
        self.counts: Counter[str] = Counter()
        self.requests: list[tuple[str, str]] = []
        self.models: dict[str, Model] = {}
        self.datasets: dict[str, Dataset] = {}
        self.jobs: dict[str, Job] = {}
        self.uploads: dict[str, dict[str, Any]] = {}
        self.lock = threading.RLock()
        self._ids = itertools.count(1)
        self.worker = Worker(self)
        self._routes = self.routes()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, name="hub-double", daemon=True)

    # -- lifecycle ----------------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubDouble:
        self._thread.start()
        self.worker.start()
        return self

    def stop(self) -> None:
        self.worker.stop()
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> HubDouble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def write_client_ini(self, path: Path, token: str | None = None) -> Path:
        """A client.ini as ``qai-hub configure`` writes it, pointing at this double."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("[api]\n"
                        f"api_token = {self.token if token is None else token}\n"
                        f"api_url = {self.url}\n"
                        f"web_url = {self.url}/web/\n"
                        "verbose = False\n")
        return path

    def release(self) -> None:
        """Let stalled jobs finish."""
        self.stall.clear()
        self.worker.release()

    def new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):05d}dbl"

    # -- protobuf views -----------------------------------------------------------------------------------------

    def device_pb(self, device: tuple[str, str, tuple[str, ...]]) -> pb.Device:
        return pb.Device(name=device[0], os=device[1], attributes=list(device[2]))

    def model_pb(self, model: Model) -> pb.Model:
        msg = pb.Model(model_id=model.id, name=model.name, model_type=model.model_type,
                       is_directory=model.is_directory, file_upload_complete=model.complete,
                       producer_id=model.producer_id)
        msg.creation_time.seconds = int(model.created)
        for key, value in model.metadata.items():
            msg.metadata.entries[key] = value
        msg.input_spec.CopyFrom(tensor_list(model.input_spec))
        msg.output_spec.CopyFrom(tensor_list(model.output_spec))
        return msg

    def dataset_pb(self, dataset: Dataset) -> pb.Dataset:
        msg = pb.Dataset(dataset_id=dataset.id, name=dataset.name, file_upload_complete=dataset.complete)
        msg.creation_time.seconds = int(dataset.created)
        msg.expiration_time.seconds = int(dataset.created + 30 * 86400)
        return msg

    def job_pb(self, job: Job) -> pb.Job:
        model = self.model_pb(self.models[job.model_id])
        if job.kind == "compile":
            inner = pb.CompileJob(compile_job_id=job.id, model=model, job_state=job.state, name=job.name,
                                  options=job.options, failure_reason=job.failure,
                                  device=self.device_pb(job.device),
                                  devices=pb.DeviceList(devices=[self.device_pb(job.device)], total_query_count=1),
                                  tensor_type_list=tensor_list(job.input_specs))
            inner.creation_time.seconds = int(job.created)
            if job.target_model_id:
                target = self.models[job.target_model_id]
                inner.target_model.CopyFrom(self.model_pb(target))
                if job.state == pb.JobState.JOB_STATE_DONE:
                    inner.target_tensor_type_list.CopyFrom(tensor_list(target.input_spec))
            return pb.Job(compile_job=inner, hub_version="aihub-double")
        inner = pb.InferenceJob(inference_job_id=job.id, model=model, job_state=job.state, name=job.name,
                                options=job.options, failure_reason=job.failure, device=self.device_pb(job.device),
                                is_profiling_on=job.kind == "profile")
        inner.creation_time.seconds = int(job.created)
        if job.dataset_id:
            inner.dataset.CopyFrom(self.dataset_pb(self.datasets[job.dataset_id]))
        if job.state == pb.JobState.JOB_STATE_DONE:
            inner.tensor_type_list.CopyFrom(tensor_list(self.models[job.model_id].input_spec))
        return pb.Job(inference_job=inner, hub_version="aihub-double")

    # -- routes -------------------------------------------------------------------------------------------------

    def routes(self) -> list[tuple[str, re.Pattern[str], Callable[..., Any]]]:
        table = [
            ("GET", r"users/auth/user/", self.get_user),
            ("GET", r"devices/", self.get_devices),
            ("POST", r"models/", self.create_model),
            ("GET", r"models/", self.list_models),
            ("GET", r"models/(?P<id>[^/]+)/", self.get_model),
            ("GET", r"models/(?P<id>[^/]+)/multipart_upload/", self.model_upload_urls),
            ("POST", r"models/(?P<id>[^/]+)/multipart_upload/", self.model_upload_complete),
            ("GET", r"models/(?P<id>[^/]+)/download/", self.model_download),
            ("POST", r"jobs/", self.create_job),
            ("GET", r"jobs/(?P<id>[^/]+)/", self.get_job),
            ("GET", r"jobs/(?P<id>[^/]+)/result/", self.get_job_result),
            ("GET", r"jobs/(?P<id>[^/]+)/device_runs/[^/]+/artifact_list/\d+/", self.artifacts),
            ("POST", r"datasets/", self.create_dataset),
            ("GET", r"datasets/(?P<id>[^/]+)/", self.get_dataset),
            ("GET", r"datasets/(?P<id>[^/]+)/upload_url/", self.dataset_upload_url),
            ("PATCH", r"datasets/(?P<id>[^/]+)/", self.dataset_upload_complete),
            ("GET", r"datasets/(?P<id>[^/]+)/download_data/", self.dataset_download),
        ]
        return [(method, re.compile(re.escape(API) + pattern + "$"), fn) for method, pattern, fn in table]

    def get_user(self, request: Request) -> pb.User:
        return pb.User(id=1, first_name="Test", last_name="Double", email="tester@example.com", org_id=1)

    def get_devices(self, request: Request) -> pb.DeviceList:
        name = request.arg("name")
        os_ = request.arg("os")
        wanted = set(request.query.get("attributes", []))
        found = [d for d in self.devices
                 if (not name or d[0] == name) and (not os_ or d[1] == os_) and wanted <= set(d[2])]
        if request.arg("select") == "True":
            found = found[:1]
        return pb.DeviceList(devices=[self.device_pb(d) for d in found], total_query_count=len(found))

    def create_model(self, request: Request) -> pb.CreateUpdateResponse:
        msg = request.message(pb.Model)
        model = Model(self.new_id("m"), msg.name, msg.model_type, msg.is_directory, time.time())
        with self.lock:
            self.models[model.id] = model
        return created(model.id)

    def list_models(self, request: Request) -> pb.ModelList:
        offset, limit = int(request.arg("offset") or 0), int(request.arg("limit") or 50)
        with self.lock:
            newest = sorted(self.models.values(), key=lambda m: m.id, reverse=True)
        page = newest[offset:offset + limit]
        return pb.ModelList(models=[self.model_pb(m) for m in page], total_query_count=len(newest))

    def model(self, model_id: str) -> Model:
        if model_id not in self.models:
            raise HttpError(404, f"Model ID '{model_id}' could not be found.")
        return self.models[model_id]

    def get_model(self, request: Request, id: str) -> pb.Model:
        return self.model_pb(self.model(id))

    def model_upload_urls(self, request: Request, id: str) -> pb.FileUploadResponse:
        self.model(id)
        size = int(request.arg("file_size") or 0)
        upload_id = self.new_id("u")
        parts = max(1, -(-size // PART_SIZE))
        with self.lock:
            self.uploads[upload_id] = {"model": id, "parts": {}}
        urls = [f"{self.url}/blob/parts/{upload_id}/{i}" for i in range(parts)]
        return pb.FileUploadResponse(multipart_url=pb.FileMultipartUploadURL(urls=urls, upload_id=upload_id,
                                                                           max_part_size=PART_SIZE))

    def model_upload_complete(self, request: Request, id: str) -> pb.CreateUpdateResponse:
        model = self.model(id)
        msg = request.message(pb.FileMultipartUploadComplete)
        upload = self.uploads.pop(msg.upload_id, None)
        if upload is None or upload["model"] != id:
            raise HttpError(400, f"unknown upload {msg.upload_id}")
        parts = [upload["parts"][i] for i in range(len(upload["parts"]))]
        if [etag(p) for p in parts] != list(msg.etags):
            raise HttpError(400, "the ETags do not match the uploaded parts")
        suffix = ".zip" if model.is_directory else Path(model.name).suffix or ".onnx"
        blob = self.root / "models" / f"{id}{suffix}"
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(b"".join(parts))
        with self.lock:
            model.blob, model.filename, model.complete = blob, model.name + (".zip" if model.is_directory else ""), True
            self.counts["model_uploads"] += 1
        return created(id)

    def model_download(self, request: Request, id: str) -> pb.FileDownloadResponse:
        model = self.model(id)
        if not model.complete or model.blob is None:
            raise HttpError(404, f"Model '{id}' has no file yet.")
        return pb.FileDownloadResponse(url=pb.FileDownloadURL(url=f"{self.url}/blob/models/{id}",
                                                              filename=model.filename))

    def create_job(self, request: Request) -> pb.CreateUpdateResponse:
        msg = request.message(pb.Job)
        kind = msg.WhichOneof("job")
        if kind == "compile_job":
            inner = msg.compile_job
            devices = list(inner.devices.devices) or [inner.device]
            if len(devices) != 1:
                raise HttpError(400, "this double compiles for one device per job")
            device, specs = devices[0], [(t.name, tuple(t.tensor_type.shape), t.tensor_type.dtype)
                                         for t in inner.tensor_type_list.types]
            job_kind, dataset_id = "compile", ""
        elif kind == "inference_job":
            inner = msg.inference_job
            device, specs = inner.device, []
            job_kind = "profile" if inner.is_profiling_on else "inference"
            dataset_id = inner.dataset.dataset_id
            if dataset_id and dataset_id not in self.datasets:
                raise HttpError(400, f"Dataset '{dataset_id}' does not exist.")
            if not dataset_id and job_kind == "inference":
                raise HttpError(400, "An inference job needs a dataset.")
        else:
            raise HttpError(400, f"this double does not run {kind} jobs")
        model = self.model(inner.model.model_id)
        if not model.complete:
            raise HttpError(400, f"Model '{model.id}' has no uploaded file.")
        match = next((d for d in self.devices if d[0] == device.name and (not device.os or d[1] == device.os)), None)
        if match is None:
            raise HttpError(400, f"Device '{device.name}' is not available.")
        job = Job(self.new_id("j"), job_kind, inner.name, model.id, match, inner.options, time.time(),
                  input_specs=specs, dataset_id=dataset_id)
        job.history.append("CREATED")
        if job_kind == "compile" and request.arg("seed_target_model") == "true":
            target = Model(self.new_id("m"), f"job_{job.id}_optimized_onnx", pb.ModelType.MODEL_TYPE_ONNX, True,
                           time.time(), producer_id=job.id)
            self.models[target.id] = target
            job.target_model_id = target.id
        with self.lock:
            self.jobs[job.id] = job
            self.counts[f"jobs_{job_kind}"] += 1
        self.worker.submit(job.id)
        return created(job.id)

    def job(self, job_id: str) -> Job:
        if job_id not in self.jobs:
            raise HttpError(404, f"Job ID '{job_id}' could not be found.")
        return self.jobs[job_id]

    def get_job(self, request: Request, id: str) -> pb.Job:
        with self.lock:
            return self.job_pb(self.job(id))

    def get_job_result(self, request: Request, id: str) -> pb.JobResult:
        job = self.job(id)
        if job.kind == "compile":
            return pb.JobResult(compile_job_result=pb.CompileJobResult(compile_job_id=id))
        result = pb.InferenceJobResult(inference_job_id=id, output_dataset_id=job.output_dataset_id)
        if job.profile is not None:
            result.detail.CopyFrom(job.profile)
        return pb.JobResult(inference_job_result=result)

    def artifacts(self, request: Request, id: str) -> pb.NamedArtifactDownloadURLList:
        self.job(id)
        return pb.NamedArtifactDownloadURLList()

    def create_dataset(self, request: Request) -> pb.CreateUpdateResponse:
        msg = request.message(pb.Dataset)
        dataset = Dataset(self.new_id("d"), msg.name, time.time())
        with self.lock:
            self.datasets[dataset.id] = dataset
            self.counts["datasets"] += 1
        response = created(dataset.id)
        response.expiration_time.seconds = int(dataset.created + 30 * 86400)
        return response

    def dataset(self, dataset_id: str) -> Dataset:
        if dataset_id not in self.datasets:
            raise HttpError(404, f"Dataset ID '{dataset_id}' could not be found.")
        return self.datasets[dataset_id]

    def get_dataset(self, request: Request, id: str) -> pb.Dataset:
        return self.dataset_pb(self.dataset(id))

    def dataset_upload_url(self, request: Request, id: str) -> pb.FileUploadResponse:
        self.dataset(id)
        url = pb.FileUploadURL(url=f"{self.url}/blob/datasets/{id}", file_field_name="file")
        url.fields["key"] = f"datasets/{id}.h5"
        return pb.FileUploadResponse(url=url)

    def dataset_upload_complete(self, request: Request, id: str) -> pb.CreateUpdateResponse:
        dataset = self.dataset(id)
        if not request.message(pb.Dataset).file_upload_complete or dataset.blob is None:
            raise HttpError(400, "the dataset file was not uploaded")
        dataset.complete = True
        return created(id)

    def dataset_download(self, request: Request, id: str) -> pb.FileDownloadResponse:
        dataset = self.dataset(id)
        if dataset.blob is None:
            raise HttpError(404, f"Dataset '{id}' has no file.")
        return pb.FileDownloadResponse(url=pb.FileDownloadURL(url=f"{self.url}/blob/datasets/{id}",
                                                              filename=f"{dataset.name or id}.h5"))

    # -- blobs (presigned URLs: no token) ----------------------------------------------------------------------

    def blob(self, handler: BaseHTTPRequestHandler, method: str, path: str) -> None:
        parts = path.strip("/").split("/")
        if method == "PUT" and parts[:2] == ["blob", "parts"] and len(parts) == 4:
            upload = self.uploads.get(parts[2])
            if upload is None:
                return _send(handler, 404, b"<Error><Code>NoSuchUpload</Code></Error>", "application/xml")
            data = _read_body(handler)
            upload["parts"][int(parts[3])] = data
            return _send(handler, 200, b"", "text/plain", {"ETag": etag(data)})
        if method == "POST" and parts[:2] == ["blob", "datasets"] and len(parts) == 3:
            dataset = self.datasets.get(parts[2])
            if dataset is None:
                return _send(handler, 404, b"<Error><Code>NoSuchKey</Code></Error>", "application/xml")
            fields = parse_multipart(_read_body(handler), handler.headers.get("Content-Type", ""))
            dataset.blob = self.root / "datasets" / f"{dataset.id}.h5"
            dataset.blob.parent.mkdir(parents=True, exist_ok=True)
            dataset.blob.write_bytes(fields["file"])
            return _send(handler, 204, b"", "text/plain")
        if method == "GET" and len(parts) == 3 and parts[1] in ("models", "datasets"):
            store = self.models if parts[1] == "models" else self.datasets
            item = store.get(parts[2])
            if item is None or item.blob is None:
                return _send(handler, 404, b"<Error><Code>NoSuchKey</Code></Error>", "application/xml")
            return _send(handler, 200, item.blob.read_bytes(), "application/octet-stream")
        _send(handler, 404, b"<Error><Code>NoSuchKey</Code></Error>", "application/xml")

    def dispatch(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        split = urlsplit(handler.path)
        with self.lock:
            self.requests.append((method, split.path))
        if split.path.startswith("/blob/"):
            return self.blob(handler, method, split.path)
        request = Request(handler, parse_qs(split.query, keep_blank_values=True))
        try:
            if handler.headers.get("Authorization") != f"token {self.token}":
                raise HttpError(401, "Invalid token.")
            for route_method, pattern, fn in self._routes:
                match = pattern.match(split.path)
                if match and route_method == method:
                    message = fn(request, **match.groupdict())
                    return _send(handler, 200, message.SerializeToString(), PROTOBUF)
            raise HttpError(404, f"no route for {method} {split.path}")
        except HttpError as e:
            _send(handler, e.status, json.dumps({"detail": e.detail}).encode(), "application/json")


class Request:
    def __init__(self, handler: BaseHTTPRequestHandler, query: dict[str, list[str]]) -> None:
        self.handler = handler
        self.query = query

    def arg(self, name: str) -> str:
        return (self.query.get(name) or [""])[0]

    def message(self, cls: type) -> Any:
        msg = cls()
        msg.ParseFromString(_read_body(self.handler))
        return msg


def tensor_list(specs: list[tuple[str, tuple[int, ...], int]]) -> pb.NamedTensorTypeList:
    return pb.NamedTensorTypeList(types=[pb.NamedTensorType(name=name, tensor_type=pb.TensorType(shape=list(shape),
                                                                                                  dtype=dtype))
                                         for name, shape, dtype in specs])


def created(object_id: str) -> pb.CreateUpdateResponse:
    response = pb.CreateUpdateResponse(id=object_id)
    response.creation_time.seconds = int(time.time())
    return response


def etag(data: bytes) -> str:
    return '"' + hashlib.md5(data).hexdigest() + '"'


def parse_multipart(body: bytes, content_type: str) -> dict[str, bytes]:
    """The fields of a multipart/form-data body (as requests-toolbelt's MultipartEncoder writes it)."""
    boundary = content_type.split("boundary=", 1)[1].strip().strip('"').encode()
    fields = {}
    for part in body.split(b"--" + boundary)[1:]:
        if part.startswith(b"--"):
            break
        head, _, data = part.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        name = re.search(rb'name="([^"]*)"', head)
        if name:
            fields[name.group(1).decode()] = data.removesuffix(b"\r\n")
    return fields


def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int(handler.rfile.readline().strip().split(b";")[0], 16)
            if size == 0:
                handler.rfile.readline()
                return b"".join(chunks)
            chunks.append(handler.rfile.read(size))
            handler.rfile.readline()
    return handler.rfile.read(int(handler.headers.get("Content-Length") or 0))


def _send(handler: BaseHTTPRequestHandler, status: int, body: bytes, content_type: str,
          headers: dict[str, str] | None = None) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    for key, value in (headers or {}).items():
        handler.send_header(key, value)
    handler.end_headers()
    if body and handler.command != "HEAD":
        handler.wfile.write(body)


def _handler_for(hub: HubDouble) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # quiet: the tests read hub.requests instead
            pass

        def do_GET(self) -> None:
            hub.dispatch(self, "GET")

        def do_POST(self) -> None:
            hub.dispatch(self, "POST")

        def do_PUT(self) -> None:
            hub.dispatch(self, "PUT")

        def do_PATCH(self) -> None:
            hub.dispatch(self, "PATCH")

    return Handler
