"""Session fixtures shared by the test files that need a trained, exported and compiled run."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def compiled_digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short FraQAT W4A8 digits-Sana run, exported and compiled for s25u (about 30 s on 2 cores)."""
    from fraqat_deploy.compile.run import compile_run
    from fraqat_deploy.export import export_run
    from fraqat_deploy.train import TrainConfig, train

    run = tmp_path_factory.mktemp("compiled") / "d1"
    train(TrainConfig(model="digits", out=run, schedule="fractional", steps=18, n_train=48, n_val=16,
                      calib_samples=16), show_progress=False)
    export_run(run, "digits")
    compile_run(run, "s25u")
    return run


@pytest.fixture(scope="session")
def exported_tiny_gemma(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short FraQAT W4A8 tiny-Gemma run, exported (prefill + decode graphs). Tests that compile into a run of
    their own copy it without compile/ and bench/."""
    from fraqat_deploy.export import export_run
    from fraqat_deploy.train import TrainConfig, train

    run = tmp_path_factory.mktemp("gemma") / "g1"
    train(TrainConfig(model="tiny-gemma", out=run, schedule="fractional", steps=9, batch_size=4, n_train=16,
                      n_val=4, calib_samples=8), show_progress=False)
    export_run(run, "tiny-gemma")
    return run


@pytest.fixture(scope="session")
def exported_tiny_gemma_host(exported_tiny_gemma: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same trained tiny-Gemma exported with ``--embedding host`` (a copy of the run without export/ and the later
    stages): the graphs take inputs_embeds and export/embedding.npy holds the table."""
    import shutil

    from fraqat_deploy.export import export_run

    run = tmp_path_factory.mktemp("gemma-host") / "g1"
    shutil.copytree(exported_tiny_gemma, run, ignore=shutil.ignore_patterns("export", "compile", "bench"))
    export_run(run, "tiny-gemma", embedding="host")
    return run
