"""pytest fixtures: ``adb_server`` (session: the private adb server) and ``virtual_phone`` (a phone factory).

    def test_x(virtual_phone):
        phone = virtual_phone(apps={"com.example": "1.2"}, free_bytes=10_000_000)
        device = adbutils.AdbClient(host="127.0.0.1", port=int(os.environ["ANDROID_ADB_SERVER_PORT"])).device(
            phone.serial)

Every phone the factory made is disconnected from adb and switched off when the test ends.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import pytest

from .adb_server import AdbServer
from .phone import VirtualPhone

_names = itertools.count()


@pytest.fixture(scope="session")
def adb_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AdbServer]:
    server = AdbServer(tmp_path_factory.mktemp("adb-server")).start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def virtual_phone(adb_server: AdbServer, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[Callable[..., VirtualPhone]]:
    """``virtual_phone(**knobs)`` starts a VirtualPhone, ``adb connect``s it and waits until adb lists it."""
    phones: list[VirtualPhone] = []

    def make(connect: bool = True, **knobs) -> VirtualPhone:
        phone = VirtualPhone(tmp_path_factory.mktemp(f"phone{next(_names)}"), **knobs).start()
        phone.adb = adb_server
        phones.append(phone)
        if connect:
            adb_server.connect(phone.serial, state="device" if phone.authorized else "unauthorized")
        return phone

    try:
        yield make
    finally:
        for phone in phones:
            try:
                adb_server.disconnect(phone.serial)
            finally:
                phone.stop()
