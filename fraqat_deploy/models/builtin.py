"""Adapters whose default model is committed under ``fraqat_deploy/assets/`` (digits-Sana, tiny-Gemma).

``load()`` is the committed model; ``load(source)`` any folder or hub id of the family in its place;
``load(tiny=True, seed=...)`` the same architecture random-initialised (what the build script trains). A run
records the committed model by name and weights hash, not by path, so its spec stays valid when the package is
installed elsewhere, and a rebuilt asset cannot silently become a different teacher on resume.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from fraqat_deploy.errors import InputError
from fraqat_deploy.models.base import LoadedModel, check_spec


class BuiltinModel:
    """Mixin, listed before the family's adapter: ``class DigitsAdapter(BuiltinModel, SanaAdapter)``."""

    name: ClassVar[str]
    asset_dir: ClassVar[Path]
    asset_marker: ClassVar[str]  # a file or folder inside asset_dir whose presence says the asset is there
    builtin: ClassVar[str]  # how specs name the committed model
    build_script: ClassVar[str]

    def weights_sha256(self, folder: Path) -> str:
        raise NotImplementedError

    def _default_model(self) -> LoadedModel:
        return self._load_builtin(expected_sha256=None)

    def load_from_spec(self, spec: dict[str, Any]) -> LoadedModel:
        if check_spec(spec, self.name) == "pretrained" and spec.get("builtin") == self.builtin:
            return self._load_builtin(expected_sha256=spec.get("sha256"))
        return super().load_from_spec(spec)  # type: ignore[misc]

    def _load_builtin(self, expected_sha256: str | None) -> LoadedModel:
        if not (self.asset_dir / self.asset_marker).exists():
            raise InputError(
                f"the built-in {self.builtin} model is missing from '{self.asset_dir}'",
                f"reinstall fraqat-deploy, or rebuild it with: python {self.build_script}",
            )
        sha = self.weights_sha256(self.asset_dir)
        if expected_sha256 is not None and sha != expected_sha256:
            raise InputError(
                f"the built-in {self.builtin} weights changed (sha256 {sha[:12]}..., the run used "
                f"{str(expected_sha256)[:12]}...)",
                "use the fraqat-deploy version the run was made with, or start a new run",
            )
        model = self._load_pretrained(str(self.asset_dir))  # type: ignore[attr-defined]
        model.spec.update(builtin=self.builtin, sha256=sha)
        return model
