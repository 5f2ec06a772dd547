"""A local double of Qualcomm AI Hub for the tests: the real ``qai_hub`` client talks to it over HTTP.

``HubDouble`` serves the REST endpoints the qai_hub 0.56 client calls, with the client's own protobuf messages
(``qai_hub.public_api_pb2``), plus the presigned-URL blob store the client uploads to and downloads from. Its
jobs do real work: a compile job runs the project's local QNN compiler for the device's SoC (so a download is a
real EPContext model and context binary), profile and inference jobs run that binary on the host HTP simulator.
What it simulates: the timings are the simulator's, the memory figures are derived from the model's size, and
the device farm is one queue on this machine.

    with HubDouble(tmp_path) as hub:
        hub.write_client_ini(tmp_path / "client.ini")   # then QAIHUB_CLIENT_INI=<that file>
"""

from hub_double.server import HubDouble, Job

__all__ = ["HubDouble", "Job"]
