"""A virtual Galaxy S25 Ultra for tests: a device-side adb daemon in Python that the real adb server connects to.

Design, in one place:

* ``transport.py`` speaks adb's device protocol (CNXN/AUTH/OPEN/OKAY/WRTE/CLSE) on a TCP port; the test's
  private adb server reaches it with ``adb connect 127.0.0.1:PORT`` (``adb_server.py``, ``fixtures.py``).
* ``services.py`` serves ``shell,v2:`` (exit codes, separate stderr), legacy ``shell:``, ``exec:`` and
  ``sync:`` (``sync.py``: STAT/STA2/LST2/LIST/LIS2/SEND/RECV with 64 KiB chunks and a storage quota).
* Shell commands are never run by a host shell. ``shlang.py`` parses the POSIX subset a host sends and
  ``interp.py`` runs it with Python doubles of the device's commands (``coreutils*.py``, ``android.py``,
  ``dumpsys.py``). Every path goes through ``fs.Sandbox``, which maps device paths under one host folder and
  refuses anything that would resolve outside it, so even ``rm -rf /`` only meets the sandbox (and is refused
  there, as on a phone, because ``/`` is read-only to the shell user).
* ``apps.py`` runs app doubles: ``am start -n pkg/.Activity --es k v`` calls the test's
  ``app(proc, extras)`` in a thread (see ``AppProcess``). ``kotlin_app.py`` is the benchmark app's: it runs the
  app's real Kotlin engine in a JVM on the host HTP simulator.
"""

from .adb_server import AdbServer
from .apps import AppKilled, AppProcess, Package
from .phone import VirtualPhone

__all__ = ["AdbServer", "AppKilled", "AppProcess", "Package", "VirtualPhone"]
