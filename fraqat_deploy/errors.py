"""Errors a user can cause. The CLI prints them in one line and exits non-zero."""

from __future__ import annotations


class FraqatError(Exception):
    """A user-facing error: ``message`` says what is wrong, ``fix`` what to do about it."""

    exit_code = 2

    def __init__(self, message: str, fix: str | None = None) -> None:
        self.message = message
        self.fix = fix
        super().__init__(self.one_line())

    def one_line(self) -> str:
        text = self.message.rstrip(".")
        return f"{text}. Fix: {self.fix}" if self.fix else text


class ConfigError(FraqatError):
    """A bad option, schedule string, policy or model name."""


class InputError(FraqatError):
    """A missing or unreadable input: path, checkpoint, data file."""


class DeviceError(FraqatError):
    """No phone, the wrong phone, a phone that went away, an app that crashed or ran out of room."""
