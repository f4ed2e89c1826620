"""The core imports, and lists backends, with dask, distributed and pyspark unimportable; the
CLI and config validation (engine sections and flags included) import none of them, nor torch;
a cluster run's driver imports no torch.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

BLOCKER = textwrap.dedent("""
    import sys

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {blocked!r}:
                raise ImportError(f"{{name}} is blocked for this test")
            return None

    sys.meta_path.insert(0, Blocker())
""")
"""Prepended to a script: the packages ``blocked`` cannot be imported."""


def run_script(body: str, blocked: tuple[str, ...] = ()) -> None:
    """Run ``body`` in a fresh interpreter, with ``blocked`` unimportable; it must print
    ``ok``."""
    script = (BLOCKER.format(blocked=blocked) if blocked else "") + textwrap.dedent(body)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok")


def test_core_imports_without_engines() -> None:
    run_script("""
        import warnings
        import resflow, resflow.archive, resflow.ingestion, resflow.chips, resflow.harmonise
        import resflow.samples, resflow.cli
        from resflow.plugins import list_backends
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            names = sorted(list_backends())
        assert "dask" not in names and "spark" not in names, names
        broken = " ".join(str(w.message) for w in caught)
        assert "'dask'" in broken and "'spark'" in broken, broken
        assert not any(m.split(".")[0] in ("dask", "distributed", "pyspark")
                       for m in sys.modules)
        print("ok", names)
    """, blocked=("dask", "distributed", "pyspark"))


def test_engine_settings_and_flags_without_engines_or_torch(tmp_path) -> None:
    """``resflow run --help`` shows the engines' flags, a YAML file's engine sections are
    validated by the engines' own models, and ``resflow train --print-config`` shows the
    training settings, while dask, pyspark and torch cannot be imported."""
    config = tmp_path / "run.yaml"
    config.write_text("backend: spark\ndask: {workers: 3}\nspark: {master: 'local[4]'}\n")
    run_script(f"""
        import typer
        from typer.testing import CliRunner
        from resflow.cli import app
        from resflow.config import RunConfig, load_config
        from resflow.errors import ConfigError
        from resflow.plugins import engine_models

        assert CliRunner().invoke(app, ["run", "--help"]).exit_code == 0
        shown = CliRunner().invoke(app, ["train", "a.zarr", "--labels", "l.geojson", "--out",
                                         "g", "--set", "mono_steps=7", "--print-config"])
        assert shown.exit_code == 0 and "mono_steps: 7" in shown.output, shown.output
        run = typer.main.get_command(app).commands["run"]
        flags = {{flag for param in run.params for flag in param.opts}}
        assert {{"--scheduler-address", "--spark-master", "--workers"}} <= flags, flags
        engines = engine_models()
        settings = load_config({str(config)!r}, RunConfig, engines=engines,
                               **{{"dask.workers": 5}})
        assert settings.engine_settings("dask").workers == 5
        assert settings.engine_settings("spark").master == "local[4]"
        assert RunConfig.model_validate(settings.model_dump(mode="json"),
                                        context={{"engines": engines}}) == settings
        try:
            load_config(None, RunConfig, engines=engines, **{{"spark.master": "sprak://x:7077"}})
        except ConfigError as err:
            assert "field 'spark.master'" in str(err), err
        else:
            raise AssertionError("a bad master URL was accepted")
        assert not any(m.split(".")[0] in ("dask", "distributed", "pyspark", "torch")
                       for m in sys.modules)
        print("ok")
    """, blocked=("dask", "distributed", "pyspark", "torch"))


def test_a_runs_checks_and_catalogue_do_not_import_geopandas() -> None:
    """``resflow run`` checks its export targets and writes its STAC without GeoPandas
    (about 0.6 s a command); only footprint files import it."""
    run_script("""
        import sys
        import resflow.exports, resflow.exports.stac, resflow.preflight, resflow.graph
        assert "geopandas" not in sys.modules, "imported for a run"
        print("ok")
    """)


def test_a_cluster_runs_driver_verifies_its_gallery_without_torch() -> None:
    """Under Dask or Spark the driver plans, verifies the gallery and starts the engine but
    never runs a model, so it does not import torch (about 2 s a command); the workers do."""
    run_script("""
        import resflow.graph, resflow.service, resflow.commands.run, resflow_dask, resflow_spark
        from resflow.inference.caches import load_gallery
        gallery = load_gallery(None)
        assert len(gallery.bucket_codes) > 0 and gallery.gsd_m > 0
        print("ok")
    """, blocked=("torch",))
