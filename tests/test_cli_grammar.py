"""One grammar for every command: the input positional and the output ``--out``/``-o``;
``--config``, ``--set KEY=VALUE`` and ``--print-config`` where a command has settings;
locations typed ``str``; choices listed and checked by the command line; one spelling per
concept, band numbers from 1 and errors that name the flag or key.

``--print-config`` returns before any work, so no engine starts and nothing is written.
"""

from __future__ import annotations

import re
import typing
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from resflow.cli import app
from resflow.commands.options import PlanChoice
from resflow.commands.run import DeviceChoice
from resflow.config import RunConfig
from resflow.plugins import declared_backends
from resflow.samples import sample_path

runner = CliRunner()

#: Commands whose settings are a model, and so take --config, --set and --print-config.
WITH_SETTINGS = {"run", "demo", "ingest", "train", "predict", "eval", "export"}

#: Commands that write no one output: ``export`` writes each kind of file where its own flag
#: says (--cog-dir, --footprints, --stac-dir); ``info`` and ``doctor`` only print.
WITHOUT_OUT = {"info", "doctor", "export"}

#: A word of a concept's flags -> the one flag every command spells it with.
CONCEPT_FLAGS = {"backend": "--backend", "plan": "--plan", "cog": "--cog-dir",
                 "stac": "--stac-dir", "footprints": "--footprints", "gallery": "--gallery",
                 "threshold": "--threshold", "min-building": "--min-building-m2"}

#: Flags holding a concept's word that name another concept: whether a run writes a STAC
#: Collection at all, the footprints' file format, and what a STAC catalogue given to
#: ingest may reach.
OTHER_CONCEPTS = {"--stac", "--no-stac", "--footprints-format", "--stac-web",
                  "--stac-outside"}


def commands() -> Iterator[tuple[str, typer.core.TyperCommand]]:
    """Every command of the CLI as ``("gallery show", command)``, groups walked."""
    def walk(group: typing.Any, prefix: str) -> Iterator[tuple[str, typing.Any]]:
        for name, command in group.commands.items():
            if hasattr(command, "commands"):
                yield from walk(command, f"{prefix}{name} ")
            else:
                yield f"{prefix}{name}", command

    yield from walk(typer.main.get_command(app), "")


def flat(text: str) -> str:
    """``text`` without the error box typer draws, on one line: messages wrap in the box."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def printed(args: list[str]) -> dict:
    """The settings ``resflow ARGS --print-config`` prints, checking it exits 0."""
    result = runner.invoke(app, [*args, "--print-config"])
    assert result.exit_code == 0, result.output
    return yaml.safe_load(result.stdout)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_run_settings_come_from_the_file_then_set_then_flags(tmp_path: Path) -> None:
    config = write(tmp_path / "run.yaml", "threshold: 0.4\nbatch_size: 4\nplan: regrouped\n"
                   "halo: 16\ndask:\n  workers: 3\n  dashboard_address: 127.0.0.1:0\n")
    out = tmp_path / "maps.zarr"
    settings = printed(["run", "archive.zarr", "--out", str(out), "--config", str(config),
                        "--set", "threshold=0.6", "--set", "batch_size=2",
                        "--set", "dask.workers=5", "--set", "stac=false",
                        "--set", "gallery=null", "--set", "halo=8", "--set", "halo=12",
                        "--batch-size", "16"])
    assert settings["threshold"] == 0.6  # --set beats the file
    assert settings["batch_size"] == 16  # a flag beats --set
    assert settings["plan"] == "regrouped"  # the file beats the default
    assert settings["halo"] == 12  # the last --set of a key wins
    assert settings["stac"] is False and settings["gallery"] is None  # YAML scalars
    assert settings["dask"] == {**settings["dask"], "workers": 5,
                                "dashboard_address": "127.0.0.1:0"}
    assert settings["archive"] == "archive.zarr" and settings["out"] == str(out)
    assert RunConfig.model_validate(settings).threshold == 0.6  # a config file again
    assert not out.exists()
    # an engine's own flag beats a --set of the field it fills
    settings = printed(["run", "a.zarr", "--out", str(out), "--set", "dask.workers=5",
                        "--workers", "7"])
    assert settings["dask"]["workers"] == 7


def test_ingest_settings_come_from_the_file_then_set_then_flags(tmp_path: Path) -> None:
    config = write(tmp_path / "ingest.yaml", "chip: 512\ngsd: 0.5\nworkers: 4\n")
    args = ["ingest", "x.tif", "--out", str(tmp_path / "a.zarr"), "--config", str(config)]
    settings = printed([*args, "--set", "chip=128", "--set", "gsd=null", "--workers", "3"])
    assert settings == {**settings, "chip": 128, "gsd": None, "workers": 3}
    assert printed([*args, "--set", "gsd=0.6", "--gsd", "native"])["gsd"] is None
    assert printed([*args, "--set", "chip=128", "--chip", "64"])["chip"] == 64
    assert printed(args)["chip"] == 512
    assert not (tmp_path / "a.zarr").exists()


@pytest.mark.parametrize(("args", "key"), [
    (["run", "a.zarr", "--out", "o.zarr", "--set", "bogus=1"], "--set bogus"),
    (["run", "a.zarr", "--out", "o.zarr", "--set", "dask.wrokers=2"], "--set dask.wrokers"),
    (["run", "a.zarr", "--out", "o.zarr", "--set", "threshold=2"], "--set threshold"),
    (["run", "a.zarr", "--out", "o.zarr", "--set", "threshold"], "--set threshold"),
    (["ingest", "x.tif", "--out", "a.zarr", "--set", "chipp=3"], "--set chipp"),
])
def test_a_bad_set_is_refused_naming_its_key(args: list[str], key: str,
                                             tmp_path: Path) -> None:
    result = runner.invoke(app, [*args, "--print-config"])
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.startswith(f"error: {key}"), result.stderr


def test_an_unknown_key_lists_the_settings_there() -> None:
    result = runner.invoke(app, ["run", "a.zarr", "--out", "o.zarr",
                                 "--set", "dask.wrokers=2"])
    assert result.exit_code == 2
    assert "use one of the settings of 'dask': scheduler_address, workers" in result.stderr


def test_an_unknown_backend_is_refused_listing_the_installed_ones() -> None:
    names = declared_backends()
    assert {"local", "dask", "spark"} <= set(names)
    result = runner.invoke(app, ["run", "a.zarr", "--out", "o.zarr", "--backend", "bogus"])
    assert result.exit_code == 2
    text = flat(result.output)
    assert "Invalid value for '--backend': unknown backend 'bogus'" in text, text
    assert f"installed backends: {', '.join(names)}" in text, text
    repeated = runner.invoke(app, ["bench", "--backend", "local", "--backend", "bogus"])
    assert repeated.exit_code == 2
    assert "Invalid value for '--backend': unknown backend 'bogus'" in flat(repeated.output)
    for command in ("run", "demo", "bench"):
        help_text = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"}).output
        assert f"<{'|'.join(names)}>" in help_text, help_text


@pytest.mark.parametrize(("flag", "value", "choices"), [
    ("--plan", "fast", ("fused", "regrouped")),
    ("--device", "gpu", ("auto", "cpu", "cuda")),
])
def test_choices_are_listed_and_checked(flag: str, value: str,
                                        choices: tuple[str, ...]) -> None:
    result = runner.invoke(app, ["run", "a.zarr", "--out", "o.zarr", flag, value])
    assert result.exit_code == 2
    text = flat(result.output)
    assert f"Invalid value for '{flag}'" in text and f"'{value}'" in text, text
    assert all(f"'{choice}'" in text for choice in choices), text
    help_text = runner.invoke(app, ["run", "--help"], env={"COLUMNS": "200"}).output
    assert f"<{'|'.join(choices)}>" in help_text


def test_the_flags_choices_are_the_run_configs() -> None:
    fields = RunConfig.model_fields
    assert typing.get_args(PlanChoice) == typing.get_args(fields["plan"].annotation)
    assert tuple(DeviceChoice) == typing.get_args(fields["device"].annotation)


def test_footprints_format_is_a_listed_choice() -> None:
    result = runner.invoke(app, ["export", "maps.zarr", "--footprints", "b.gpkg",
                                 "--footprints-format", "shp"])
    assert result.exit_code == 2
    text = flat(result.output)
    assert "'--footprints-format'" in text and "'parquet', 'geojson'" in text, text


def test_rgb_errors_count_bands_from_1(tmp_path: Path) -> None:
    out = tmp_path / "a.zarr"
    result = runner.invoke(app, ["ingest", str(sample_path("rotterdam-ms1")), "--out",
                                 str(out), "--rgb", "5,3,2"])
    assert result.exit_code == 2, result.output  # the only input was refused
    assert "(5,3,2, counted from 1)" in result.stderr, result.stderr
    assert "numbered 1 to 4" in result.stderr and "0-based" not in result.stderr
    assert "from 1 to 4" in result.stderr
    for given in ("0,1,2", "1,2", "red"):
        bad = runner.invoke(app, ["ingest", str(sample_path("rotterdam-ms1")), "--out",
                                  str(out), "--rgb", given])
        assert bad.exit_code == 2 and bad.stderr.startswith("error: --rgb:"), bad.stderr
        assert "counted from 1" in bad.stderr


def test_every_command_with_settings_takes_the_same_grammar() -> None:
    flags = {name: {flag for param in command.params for flag in param.opts}
             for name, command in commands()}
    assert {name for name, given in flags.items() if "--config" in given} == WITH_SETTINGS
    for name in WITH_SETTINGS:
        assert {"--config", "--set", "--print-config"} <= flags[name], name


def test_every_command_writes_to_out_and_reads_a_positional_input() -> None:
    walked = dict(commands())
    assert {"ingest", "run", "train", "gallery show", "eval", "export"} <= set(walked)
    for name, command in walked.items():
        outs = [param for param in command.params if param.name == "out"]
        if name in WITHOUT_OUT:
            assert not outs, name
            continue
        assert len(outs) == 1 and outs[0].param_type_name == "option", name
        assert set(outs[0].opts) == {"--out", "-o"}, (name, outs[0].opts)


def test_no_location_is_typed_path() -> None:
    for name, command in commands():
        for param in command.params:
            assert "Path" not in param.bare_type(), (name, param.opts, param.bare_type())


def test_each_concept_has_one_flag_across_commands() -> None:
    spelled: dict[str, set[str]] = defaultdict(set)
    used_by: dict[str, set[str]] = defaultdict(set)
    for name, command in commands():
        for param in command.params:
            for flag in [*param.opts, *param.secondary_opts]:
                for word in CONCEPT_FLAGS:
                    if flag.startswith("--") and word in flag and flag not in OTHER_CONCEPTS:
                        spelled[word].add(flag)
                        used_by[word].add(name)
    assert spelled == {word: {flag} for word, flag in CONCEPT_FLAGS.items()}
    assert all(len(names) >= 2 for names in used_by.values()), used_by


@pytest.mark.parametrize(("args", "text", "key", "value"), [
    (["run", "a.zarr", "--out", "o.zarr"], "threshold: 0.7\n", "threshold", 0.7),
    (["ingest", "x.tif", "--out", "a.zarr"], "chip: 128\n", "chip", 128),
    (["demo"], "partition_chips: 4\n", "partition_chips", 4),
    (["train", "a.zarr", "--labels", "b.geojson", "--out", "g"], "mono_steps: 20\n",
     "mono_steps", 20),
    (["eval", "maps.zarr", "--labels", "b.geojson"], "threshold: 0.4\n", "threshold", 0.4),
    (["export", "maps.zarr", "--cog-dir", "cog"], "simplify_m: 0.5\n", "simplify_m", 0.5),
])
def test_every_command_with_settings_accepts_a_config_file(args: list[str], text: str,
                                                           key: str, value: object,
                                                           tmp_path: Path) -> None:
    config = write(tmp_path / "settings.yaml", text)
    assert printed([*args, "--config", str(config)])[key] == value
    refused = runner.invoke(app, [*args, "--config", str(write(tmp_path / "bad.yaml",
                                                               "nonsense: 1\n"))])
    assert refused.exit_code == 2 and "bad.yaml: field 'nonsense'" in refused.stderr


def test_train_flags_beat_set_and_the_file(tmp_path: Path) -> None:
    config = write(tmp_path / "train.yaml", "buckets: 4\nseed: 3\nlr: 0.01\n")
    args = ["train", "a.zarr", "--labels", "b.geojson", "--out", "g", "--config", str(config)]
    settings = printed([*args, "--set", "lr=0.005", "--set", "fractions=[0.6, 0.3, 0.1]"])
    assert (settings["buckets"], settings["seed"], settings["lr"]) == (4, 3, 0.005)
    assert settings["fractions"] == [0.6, 0.3, 0.1]
    settings = printed([*args, "--buckets", "auto", "--seed", "9"])
    assert settings["buckets"] is None and settings["seed"] == 9


def test_demo_writes_into_out(tmp_path: Path) -> None:
    settings = printed(["demo", "--out", str(tmp_path / "w"), "--backend", "local"])
    assert settings["archive"] == str(tmp_path / "w" / "samples.zarr")
    assert settings["out"] == str(tmp_path / "w" / "buildings.zarr")
    assert settings["backend"] == "local" and settings["overwrite"] is True
    assert printed(["demo", "-o", str(tmp_path / "v")])["cog_dir"] == str(tmp_path / "v" / "cog")
    for old in ("--work-dir", "--workdir"):
        refused = runner.invoke(app, ["demo", old, str(tmp_path / "old"), "--print-config"])
        assert refused.exit_code == 2 and "No such option" in flat(refused.output)
    assert not any(tmp_path.iterdir())


def test_export_settings_resolve_and_print(tmp_path: Path) -> None:
    config = write(tmp_path / "export.yaml", "threshold: 0.7\nsimplify_m: 0.2\n")
    args = ["export", "maps.zarr", "--cog-dir", str(tmp_path / "cog"), "--config", str(config)]
    settings = printed([*args, "--set", "threshold=0.6", "--min-building-m2", "20",
                        "--footprints-format", "fgb", "--overwrite"])
    assert settings == {"threshold": 0.6, "min_building_m2": 20.0, "simplify_m": 0.2,
                        "footprints_format": "fgb", "overwrite": True}
    refused = runner.invoke(app, [*args, "--set", "simplify_m=-1"])
    assert refused.exit_code == 2 and refused.stderr.startswith("error: --set simplify_m:")
    assert not (tmp_path / "cog").exists()


def test_eval_settings_resolve_and_print(tmp_path: Path) -> None:
    args = ["eval", "maps.zarr", "--labels", "b.geojson", "--out", str(tmp_path / "report")]
    settings = printed([*args, "--set", "covered=[ms1]", "--threshold", "0.3"])
    assert settings == {"threshold": 0.3, "covered": ["ms1"]}
    assert printed([*args, "--covered", "a", "--covered", "b"])["covered"] == ["a", "b"]
    refused = runner.invoke(app, [*args, "--threshold", "1.5"])
    assert refused.exit_code == 2
    assert refused.stderr.startswith("error: command line: field 'threshold'"), refused.stderr
    assert not (tmp_path / "report").exists()


@pytest.mark.parametrize(("args", "flag"), [
    (["export", "maps.zarr", "--cog-dir", "s3://bucket/cog"], "--cog-dir"),
    (["export", "maps.zarr", "--footprints", "s3://bucket/b.gpkg"], "--footprints"),
    (["eval", "s3://bucket/maps.zarr", "--labels", "b.geojson"], "STORE"),
    (["eval", "maps.zarr", "--labels", "b.geojson", "--out", "s3://bucket/r"], "--out"),
    (["train", "a.zarr", "--labels", "b.geojson", "--out", "s3://bucket/g"], "--out"),
    (["demo", "--out", "s3://bucket/demo"], "--out"),
    (["gallery", "show", "--out", "s3://bucket/m.png"], "--out"),
])
def test_a_url_where_only_local_disk_works_is_refused_naming_the_flag(args: list[str],
                                                                      flag: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    url = next(arg for arg in args if arg.startswith("s3://"))
    assert result.stderr.startswith(f"error: {flag}: '{url}' is a URL"), result.stderr


@pytest.mark.parametrize(("flag", "field"), [("--cog-dir", "cog_dir"),
                                             ("--footprints", "footprints"),
                                             ("--stac-dir", "stac_dir")])
def test_run_refuses_a_url_for_its_local_exports(flag: str, field: str,
                                                 tmp_path: Path) -> None:
    """The run config's local-only settings refuse a URL by name rather than writing to
    ``s3:/bucket/...`` on local disk."""
    out = tmp_path / "maps.zarr"
    result = runner.invoke(app, ["run", "a.zarr", "--out", str(out), flag, "s3://bucket/x"])
    assert result.exit_code == 2, result.output
    assert f"field '{field}'" in result.stderr and "'s3://bucket/x' is a URL" in result.stderr
    assert not out.exists()


def test_version_prints_the_package_version() -> None:
    from resflow import __version__

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout == f"resflow {__version__}\n"
    assert "--version" in runner.invoke(app, ["--help"]).stdout


def test_predict_takes_every_run_flag_but_those_placing_files() -> None:
    commands = typer.main.get_command(app).commands
    run_flags = {f for p in commands["run"].params for f in p.opts}
    predict_flags = {f for p in commands["predict"].params for f in p.opts}
    placing = {"archive", "--out", "-o", "--cog-dir", "--footprints", "--stac", "--stac-dir"}
    assert run_flags - placing <= predict_flags
    assert {"--cog-dir", "--footprints", "--stac", "--stac-dir"}.isdisjoint(predict_flags)
    assert {"--keep-archive", "--rgb", "--gsd", "--chip", "--asset"} <= predict_flags
