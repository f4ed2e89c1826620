"""Untrusted inputs stay harmless (issue 20): paths confined, secrets redacted.

A hostile publisher controls a gallery's object keys and manifest, and anyone can edit an
output store's attributes: every name from there that becomes a path stays inside its folder
or is refused with one clear line, and nothing is written outside the test folder. A run
given secrets (Spark settings naming a key, URLs with ``user:secret@``) keeps them out of
every report, store attribute, log line and message it writes.
"""

from __future__ import annotations

import http.server
import json
import logging
import os
import shutil
import stat
import tempfile
import threading
import uuid
from functools import partial
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import resflow
from resflow.catalogues import HrefPolicy, checked_href, stac_sources
from resflow.cli import app
from resflow.config import IngestConfig, RunConfig
from resflow.errors import GalleryError, InputError, ResflowError
from resflow.evaluation import evaluate
from resflow.exports import export_run
from resflow.gallery import Gallery
from resflow.ingestion import ingest
from resflow.interrupts import progress_line, stop_message
from resflow.paths import confined
from resflow.preflight import check_run
from resflow.redaction import MASK, redact, redact_text
from resflow.report import ClusterShape, RunReport
from resflow.samples import sample_path
from resflow.store.writer import OutputStore
from tests.fixtures_data import ATLANTA_LABELS, SHORT_HALO
from tests.objectstore import FaultyS3

PLANTED = "planted-s3cr3t-9f2c"
"""A secret planted in every setting and URL a run accepts; it must appear nowhere."""

SECRET_CONF = {
    "spark.hadoop.fs.s3a.secret.key": PLANTED,
    "spark.hadoop.fs.s3a.access.key": f"AKIA-{PLANTED}",
    "spark.hadoop.fs.s3a.session.token": PLANTED,
    "spark.ssl.keyStorePassword": PLANTED,
    "spark.authenticate.secret": PLANTED,
    "spark.hadoop.fs.gs.auth.service.account.json.keyfile": "/keys/sa.json",
    "spark.executor.memoryOverhead": "512m",
}
"""Spark settings a user might give under ``spark.conf``: all but the last two hold a
secret by their key's name."""


def no_secret(*texts: str) -> None:
    for text in texts:
        assert PLANTED not in text, text


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*")}


# --- confinement: the helper ---------------------------------------------------------------

@pytest.mark.parametrize("name", ["../x", "a/../../x", "/etc/hostname", "", "a\\..\\x",
                                  "a/\x00"])
def test_names_that_would_leave_their_folder_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(InputError, match="would lead outside"):
        confined(tmp_path, name, what="a name")


def test_a_link_inside_the_folder_pointing_out_is_refused(tmp_path: Path) -> None:
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "out").symlink_to(tmp_path)
    with pytest.raises(InputError, match="through a link"):
        confined(tmp_path / "base", "out/x.txt")
    assert confined(tmp_path / "base", "sub/x.txt") == tmp_path / "base" / "sub" / "x.txt"


# --- galleries ----------------------------------------------------------------------------

@pytest.fixture
def gallery_copy(engine_gallery: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "gallery"
    shutil.copytree(engine_gallery, copy)
    return copy


def edit_manifest(gallery: Path, edit) -> None:
    manifest = json.loads((gallery / "manifest.json").read_text())
    edit(manifest)
    (gallery / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("name", ["../../etc/hostname", "/etc/hostname"])
def test_manifest_file_names_outside_the_gallery_are_refused(gallery_copy: Path,
                                                             name: str) -> None:
    import hashlib

    digest = hashlib.sha256(Path("/etc/hostname").read_bytes()).hexdigest() \
        if Path("/etc/hostname").is_file() else "0" * 64

    def point_mono_at(manifest: dict) -> None:
        manifest["files"][name] = digest
        manifest["models"]["mono"]["file"] = name

    edit_manifest(gallery_copy, point_mono_at)
    with pytest.raises(GalleryError, match=r"manifest\.json: a file name in the manifest "
                       r"\('.*etc/hostname'\) would lead outside"):
        Gallery.load(gallery_copy)


def test_a_weight_file_linked_outside_the_gallery_is_refused(gallery_copy: Path,
                                                            tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.safetensors"
    (gallery_copy / "mono.safetensors").rename(outside)
    (gallery_copy / "mono.safetensors").symlink_to(outside)
    with pytest.raises(GalleryError, match="through a link"):
        Gallery.load(gallery_copy)


def test_a_malformed_files_table_is_refused_by_name(gallery_copy: Path) -> None:
    edit_manifest(gallery_copy, lambda m: m.update(files=["mono.safetensors"]))
    with pytest.raises(GalleryError, match="'files' is not a mapping"):
        Gallery.load(gallery_copy)


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The system temporary folder (where the gallery cache goes) inside the test folder."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@pytest.fixture
def gallery_bucket(s3: FaultyS3, engine_gallery: Path) -> str:
    """A bucket holding ``engine_gallery`` under ``gal/``."""
    import fsspec

    name = f"resflow-sec-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(name)
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.put(str(engine_gallery), f"{name}/gal", recursive=True)
    return name


def test_a_bucket_gallery_with_escaping_keys_writes_nothing_outside_and_fails_the_run(
        s3: FaultyS3, gallery_bucket: str, private_tmp: Path, tmp_path: Path,
        sample_archive: Path) -> None:
    import boto3

    # From the copy's staging folder <tmp>/resflow-cache-<uid>/.partial-*/, three levels up
    # is the test folder itself.
    key = "gal/../../../PWNED.txt"
    boto3.client("s3", endpoint_url=s3.url).put_object(Bucket=gallery_bucket, Key=key,
                                                       Body=b"echo pwned\n")
    before = files_under(tmp_path)
    from resflow.inference.caches import gallery_folder

    with pytest.raises(InputError, match=r"PWNED\.txt: the object key .* would lead "
                       r"outside .*'\.\.' component.*Fix: remove or rename the object"):
        gallery_folder(f"s3://{gallery_bucket}/gal")
    done = CliRunner().invoke(app, ["run", str(sample_archive), "--out",
                                    str(tmp_path / "maps.zarr"), "--backend", "local",
                                    "--gallery", f"s3://{gallery_bucket}/gal"])
    assert done.exit_code == 2, done.output
    assert "PWNED.txt: the object key" in done.output and "Traceback" not in done.output
    after = files_under(tmp_path)
    assert not [p for p in after if p.name == "PWNED.txt"]
    assert not (after - before) - files_under(private_tmp), after - before
    assert not (tmp_path / "maps.zarr").exists()
    cache = private_tmp / f"resflow-cache-{os.getuid()}"
    assert [p.name for p in cache.iterdir()] == []  # no half copy left behind


def test_a_clean_bucket_gallery_is_copied_into_a_private_cache(
        gallery_bucket: str, private_tmp: Path, engine_gallery: Path) -> None:
    from resflow.inference.caches import gallery_folder

    copy = gallery_folder(f"s3://{gallery_bucket}/gal")
    cache = private_tmp / f"resflow-cache-{os.getuid()}"
    assert copy.parent == cache and stat.S_IMODE(cache.stat().st_mode) == 0o700
    assert sorted(p.name for p in copy.iterdir()) == \
        sorted(p.name for p in engine_gallery.iterdir())


@pytest.mark.parametrize("planted", ["link", "shared"])
def test_a_planted_or_shared_cache_folder_is_refused(gallery_bucket: str, private_tmp: Path,
                                                     tmp_path: Path, planted: str) -> None:
    from resflow.inference.caches import gallery_folder

    cache = private_tmp / f"resflow-cache-{os.getuid()}"
    if planted == "link":
        (tmp_path / "world").mkdir()
        (tmp_path / "world").chmod(0o777)
        cache.symlink_to(tmp_path / "world")
        expected = "the gallery cache folder is not a directory"
    else:
        cache.mkdir()
        cache.chmod(0o777)
        expected = "the gallery cache folder is writable by other users"
    with pytest.raises(ResflowError, match=f"resflow-cache-{os.getuid()}: {expected}.*Fix: "):
        gallery_folder(f"s3://{gallery_bucket}/gal")
    assert list((tmp_path / "world").iterdir() if planted == "link" else cache.iterdir()) == []


# --- a real small run with planted secrets --------------------------------------------------

@pytest.fixture(scope="module")
def secret_run(cropped_archive: Path, engine_gallery: Path,
               tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``resflow run`` on the local engine, its config planting a secret in every setting
    that takes one: the Spark section's ``conf`` (kept in the run config whatever the
    engine) and master URL, the Dask scheduler URL. Returns the output and what it printed."""
    folder = tmp_path_factory.mktemp("secret-run")
    config = folder / "run.yaml"
    config.write_text(yaml.safe_dump({
        "spark": {"master": f"k8s://https://admin:{PLANTED}@k8s.example:6443",
                  "conf": SECRET_CONF},
        "dask": {"scheduler_address": f"tls://user:{PLANTED}@scheduler.example:8786"},
        "halo": SHORT_HALO,
    }))
    out = folder / "maps.zarr"
    done = CliRunner().invoke(app, ["run", str(cropped_archive), "--out", str(out),
                                    "--backend", "local", "--gallery", str(engine_gallery),
                                    "--config", str(config), "--device", "cpu"])
    assert done.exit_code == 0, done.output
    return {"out": out, "output": done.output, "config": config}


@pytest.mark.slow
def test_secrets_reach_no_report_attribute_or_message_of_a_real_run(secret_run: dict) -> None:
    out: Path = secret_run["out"]
    no_secret(secret_run["output"])
    written = [p for p in out.rglob("*") if p.is_file() and p.suffix in {".json", ""}]
    assert out / "run_report.json" in written and out / "zarr.json" in written
    for file in written:
        no_secret(file.read_bytes().decode("utf-8", "replace"))
    report = json.loads((out / "run_report.json").read_text())
    stored = json.loads((out / "zarr.json").read_text())["attributes"]["run_config"]
    for config in (report["config"], stored):
        conf = config["spark"]["conf"]
        assert {k for k, v in conf.items() if v == MASK} == set(SECRET_CONF) - {
            "spark.executor.memoryOverhead", "spark.hadoop.fs.gs.auth.service.account.json."
            "keyfile"}
        assert conf["spark.executor.memoryOverhead"] == "512m"
        assert config["spark"]["master"] == "k8s://https://***@k8s.example:6443"
        assert config["dask"]["scheduler_address"] == "tls://***@scheduler.example:8786"
    # the report stays a valid report, and its summary line carries no secret either
    no_secret(RunReport.read(out).summary_line())


@pytest.mark.slow
def test_a_resumed_run_with_the_same_secrets_is_accepted(secret_run: dict,
                                                         cropped_archive: Path,
                                                         engine_gallery: Path) -> None:
    """The store keeps settings masked, and resuming compares them masked: the same
    settings, secrets included, resume the same output."""
    config = RunConfig(archive=cropped_archive, out=secret_run["out"], gallery=engine_gallery,
                       backend="local", resume=True,
                       **yaml.safe_load(secret_run["config"].read_text()))
    from resflow.store.targets import OutputComplete

    with pytest.raises(OutputComplete):
        check_run(config)


@pytest.mark.slow
def test_the_library_logs_no_secret(cropped_archive: Path, engine_gallery: Path,
                                    tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import resflow

    caplog.set_level(logging.DEBUG)
    out = tmp_path / "maps.zarr"
    report = resflow.run(cropped_archive, out, backend="local", gallery=engine_gallery,
                         device="cpu", progress=False, halo=SHORT_HALO,
                         spark={"conf": SECRET_CONF,
                                "master": f"k8s://https://admin:{PLANTED}@k8s.example:6443"})
    no_secret(caplog.text, json.dumps(report.to_dict()), report.summary_line(),
              json.dumps(report.config))
    report.write(tmp_path)
    no_secret((tmp_path / "run_report.json").read_text())


def test_reports_mask_secrets_however_they_are_built(tmp_path: Path) -> None:
    report = RunReport(out=f"s3://k:{PLANTED}@bucket/maps.zarr", chips=1, km2=1, wall_s=1,
                       backend="spark",
                       cluster=ClusterShape(workers=1, threads_per_worker=1, details={
                           "master": f"spark://u:{PLANTED}@host:7077"}),
                       config={"spark": {"conf": SECRET_CONF}},
                       errors=[{"where": f"https://h/x.tif?token={PLANTED}", "problem": "p",
                                "fix": "f"}])
    no_secret(report.summary_line(), json.dumps(report.to_dict()),
              report.write(tmp_path).read_text())


# --- messages -------------------------------------------------------------------------------

def test_errors_never_carry_url_credentials() -> None:
    err = InputError(f"s3://AKIA:{PLANTED}@bucket/a.zarr", f"no object at "
                     f"gs://x:{PLANTED}@b/c", "check https://h/x?X-Amz-Signature=" + PLANTED)
    no_secret(str(err), json.dumps(err.as_record()))
    assert str(err).startswith("s3://***@bucket/a.zarr: no object at gs://***@b/c")


def test_preflight_names_an_archive_url_without_its_credentials(s3: FaultyS3,
                                                                tmp_path: Path) -> None:
    bucket = f"resflow-sec-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(bucket)
    config = RunConfig(archive=f"s3://resflow-test:{PLANTED}@{bucket}/a.zarr",
                       out=tmp_path / "o.zarr", backend="local")
    with pytest.raises(ResflowError) as refused:
        check_run(config)
    no_secret(str(refused.value))
    assert str(refused.value).startswith(f"s3://{bucket}/a.zarr: the URL holds credentials")


def test_the_stop_message_names_an_output_url_without_its_credentials(s3: FaultyS3) -> None:
    bucket = f"resflow-sec-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(bucket)
    url = f"s3://resflow-test:{PLANTED}@{bucket}/maps.zarr"
    for line in (stop_message(url), progress_line(url, "resuming")):
        no_secret(line)
        assert f"s3://***@{bucket}/maps.zarr" in line


def test_redaction_masks_secret_keys_and_url_credentials_anywhere() -> None:
    settings = {"a": [{"password": PLANTED}, f"see ftp://me:{PLANTED}@h/f"],
                "Spark.Hadoop.FS.S3A.SECRET.KEY": PLANTED, "credentials": {"k": PLANTED},
                "nested": ({"api_key": PLANTED},), "token_enabled": True, "halo": 128}
    masked = redact(settings)
    no_secret(json.dumps(masked))
    assert masked["token_enabled"] is True and masked["halo"] == 128
    assert redact_text("local[2] and /data/a=b.tif") == "local[2] and /data/a=b.tif"
    assert settings["Spark.Hadoop.FS.S3A.SECRET.KEY"] == PLANTED  # the original is untouched


# --- a crafted output store -----------------------------------------------------------------

@pytest.fixture
def crafted(secret_run: dict, tmp_path: Path) -> Path:
    """A copy of a real run's output whose scene groups were edited to escape."""
    out = tmp_path / "work" / "maps.zarr"
    shutil.copytree(secret_run["out"], out)
    return out


def craft(store: Path, group: str) -> None:
    root = json.loads((store / "zarr.json").read_text())
    scenes = root["attributes"]["scenes"]
    scene = next(iter(scenes))
    os.rename(store / scenes[scene], store / "renamed")
    scenes[scene] = group
    (store / "zarr.json").write_text(json.dumps(root))


@pytest.mark.slow
@pytest.mark.parametrize("group", ["../../../evil", "/tmp/evil", "a/b", "zarr.json", ".hidden"])
def test_a_store_with_crafted_group_names_is_refused_and_nothing_is_written(
        crafted: Path, tmp_path: Path, group: str) -> None:
    craft(crafted, group)
    before = files_under(tmp_path)
    with pytest.raises(ResflowError, match=r"maps\.zarr: scenes: scene '.*' has the group "
                       r".* not a plain folder name.*Fix: recompute the output"):
        OutputStore.open(crafted)
    exports = tmp_path / "work" / "exports"
    with pytest.raises(ResflowError, match="not a plain folder name"):
        export_run(crafted, cog_dir=exports / "cogs", stac_dir=exports / "stac")
    with pytest.raises(ResflowError, match="not a plain folder name"):
        evaluate(crafted, [ATLANTA_LABELS], report_dir=exports / "eval")
    done = CliRunner().invoke(app, ["export", str(crafted), "--cog-dir", str(exports / "c")])
    assert done.exit_code != 0 and "not a plain folder name" in done.output
    assert "Traceback" not in done.output
    assert files_under(tmp_path) == before


@pytest.mark.slow
def test_an_untouched_store_still_exports_inside_its_folders(secret_run: dict,
                                                             tmp_path: Path) -> None:
    written = export_run(secret_run["out"], cog_dir=tmp_path / "cogs",
                         stac_dir=tmp_path / "stac")
    assert written and all(tmp_path in p.absolute().parents for p in written)
    no_secret(*(p.read_text() for p in written if p.suffix == ".json"))


# --- ingest: raw VRT bands ------------------------------------------------------------------

RAW_VRT = """<VRTDataset rasterXSize="64" rasterYSize="64">
  <SRS>EPSG:32633</SRS>
  <GeoTransform>500000, 0.3, 0, 4000000, 0, -0.3</GeoTransform>
  <VRTRasterBand dataType="Byte" band="1" subClass="VRTRawRasterBand">
    <SourceFilename relativeToVRT="0">{target}</SourceFilename>
    <ImageOffset>0</ImageOffset><PixelOffset>1</PixelOffset><LineOffset>64</LineOffset>
  </VRTRasterBand>
</VRTDataset>
"""


NESTED_VRT = """<VRTDataset rasterXSize="64" rasterYSize="64">
  <SRS>EPSG:32633</SRS>
  <GeoTransform>500000, 0.3, 0, 4000000, 0, -0.3</GeoTransform>
  <VRTRasterBand dataType="Byte" band="1">
    <SimpleSource><SourceFilename relativeToVRT="0">{target}</SourceFilename>
      <SourceBand>1</SourceBand></SimpleSource>
  </VRTRasterBand>
</VRTDataset>
"""


@pytest.mark.parametrize("form", [".tif", ".vrt", "nested"])
def test_a_vrt_with_a_raw_band_is_refused_and_reads_nothing(tmp_path: Path,
                                                            form: str) -> None:
    """A VRT (even one named .tif, or one naming such a VRT) whose raw band points at a
    local file would store that file's bytes as pixels: ingest refuses it, naming the file
    and why."""
    from resflow.ingestion import ingest

    private = tmp_path / "private.key"
    private.write_bytes(PLANTED.encode() * 200)
    vrt = tmp_path / f"innocent{'.tif' if form == 'nested' else form}"
    if form == "nested":
        (tmp_path / "inner.vrt").write_text(RAW_VRT.format(target=private))
        vrt.write_text(NESTED_VRT.format(target=tmp_path / "inner.vrt"))
    else:
        vrt.write_text(RAW_VRT.format(target=private))
    result = ingest([vrt], tmp_path / "a.zarr")
    (refusal,) = result.refused
    assert refusal["source"] == str(vrt) and not result.ingested
    assert "VRTRawRasterBand" in refusal["problem"] and "gdal_translate" in refusal["fix"]
    archive = tmp_path / "a.zarr"
    if archive.exists():
        for file in archive.rglob("*"):
            assert not file.is_file() or PLANTED.encode() not in file.read_bytes()


# --- catalogues: what a STAC file may make ingest fetch --------------------------------------

class _Publisher(http.server.SimpleHTTPRequestHandler):
    """Answers 403 for any path holding ``private``, 404 for what it lacks."""

    def do_GET(self) -> None:
        if "private" in self.path:
            self.send_error(403)
            return
        super().do_GET()

    do_HEAD = do_GET

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def publisher(tmp_path: Path):
    """An HTTP server on 127.0.0.1 serving an empty folder."""
    (tmp_path / "served").mkdir()
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), partial(_Publisher, directory=str(tmp_path / "served")))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _catalogue(path: Path, hrefs: list[str]) -> Path:
    features = [{"type": "Feature", "stac_version": "1.0.0", "id": f"item-{i}",
                 "geometry": None, "properties": {"datetime": "2020-01-01T00:00:00Z"},
                 "links": [], "assets": {"image": {"href": href, "type": "image/tiff",
                                                   "roles": ["data"]}}}
                for i, href in enumerate(hrefs)]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def test_a_catalogue_names_only_reachable_allowed_sources_and_the_rest_ingest(
        tmp_path: Path, publisher: str) -> None:
    good = shutil.copy(sample_path("rotterdam-ms1"), tmp_path / "good.tif")
    bad = {f"{publisher}/private/scene.tif": "HTTP 403",
           f"{publisher}/absent.tif": "HTTP 404",
           "/vsizip//tmp/x.zip/a.tif": "GDAL virtual file system",
           "ftp://example.com/a.tif": "scheme 'ftp'"}
    search = _catalogue(tmp_path / "search.json", [str(good), *bad])
    result = ingest([search], tmp_path / "a.zarr", IngestConfig(stac_web=True))
    assert result.ingested == ["good"]
    assert len(result.refused) == len(bad)
    for href, problem in bad.items():
        (record,) = [r for r in result.refused if href in r["where"]]
        assert problem in record["problem"] and record["fix"], record


def test_web_addresses_are_fetched_only_when_asked_and_never_metadata_ones(
        tmp_path: Path, publisher: str) -> None:
    """A catalogue's web hrefs need --stac-web; link-local and cloud metadata addresses are
    refused even then, and nothing is fetched from them."""
    web = f"{publisher}/scene.tif"
    search = _catalogue(tmp_path / "search.json", [web])
    refused: list[InputError] = []
    assert stac_sources(search, refused=refused) == []
    assert "names a web address" in refused[0].problem and "--stac-web" in refused[0].fix
    allowed = HrefPolicy(web=True)
    assert stac_sources(search, policy=allowed) == [web]  # this machine, a local catalogue
    for href, problem in {"http://169.254.169.254/latest/meta-data/x.tif": "link-local",
                          "http://metadata.google.internal/x.tif": "cloud metadata",
                          "http://[fe80::1]/x.tif": "link-local"}.items():
        with pytest.raises(InputError, match=problem):
            checked_href(href, str(search), "item", allowed)


def test_a_remote_catalogue_may_not_name_this_machine_or_its_network(
        publisher: str, tmp_path: Path) -> None:
    _catalogue(tmp_path / "served" / "search.json", [f"{publisher}/scene.tif",
                                                     "http://10.0.0.8/scene.tif"])
    refused: list[InputError] = []
    assert stac_sources(f"{publisher}/search.json", policy=HrefPolicy(web=True),
                        refused=refused) == []
    assert ["this machine or its private network" in e.problem for e in refused] == \
        [True, True]


def test_a_local_catalogue_stays_inside_its_folder(tmp_path: Path) -> None:
    folder = tmp_path / "catalogue"
    folder.mkdir()
    inside = shutil.copy(sample_path("rotterdam-ms1"), folder / "inside.tif")
    outside = shutil.copy(sample_path("rotterdam-ms1"), tmp_path / "outside.tif")
    (folder / "link.tif").symlink_to(outside)
    search = _catalogue(folder / "search.json", ["inside.tif", "../outside.tif", "link.tif",
                                                 f"file://{outside}"])
    refused: list[InputError] = []
    assert stac_sources(search, refused=refused) == [str(inside)]
    assert len(refused) == 3
    assert all("leads outside the catalogue's folder" in e.problem and "--stac-outside"
               in e.fix for e in refused)
    assert len(stac_sources(search, policy=HrefPolicy(outside=True))) == 4


def test_a_remote_catalogue_may_not_name_local_files(publisher: str, tmp_path: Path) -> None:
    served = tmp_path / "served"
    _catalogue(served / "search.json", [str(sample_path("rotterdam-ms1")),
                                        "file:///etc/hostname"])
    refused: list[InputError] = []
    assert stac_sources(f"{publisher}/search.json", refused=refused) == []
    assert [("remote catalogue names a local file" in e.problem) for e in refused] == \
        [True, True]
    with pytest.raises(InputError, match="remote catalogue names a local file"):
        stac_sources(f"{publisher}/search.json")


# --- size caps ------------------------------------------------------------------------------

def test_a_scene_declaring_a_huge_size_is_refused_before_its_pixels_are_read(
        tmp_path: Path) -> None:
    """A VRT of a few hundred bytes declaring 10^6 x 10^6 pixels (what a crafted TIFF can
    declare too) is refused at once; the good file beside it ingests."""
    srs = "EPSG:32631"
    huge = tmp_path / "huge.vrt"
    huge.write_text(f"""<VRTDataset rasterXSize="1000000" rasterYSize="1000000">
  <SRS>{srs}</SRS><GeoTransform>500000, 0.3, 0, 5700000, 0, -0.3</GeoTransform>
  <VRTRasterBand dataType="Byte" band="1"/>
</VRTDataset>""")
    result = ingest([huge, sample_path("rotterdam-ms1")], tmp_path / "a.zarr")
    assert result.ingested == ["ms1"]
    (record,) = result.refused
    assert record["where"] == str(huge)
    assert "1000000 x 1000000 pixels, more than the 10,000,000,000" in record["problem"]
    assert "max_pixels" in record["fix"]


@pytest.mark.parametrize(("edit", "problem"), [
    pytest.param(lambda m: m["models"]["hashing_head"]["config"].update(hidden=10**9),
                 "hidden=1000000000 is outside 1..4096", id="hidden-1e9"),
    pytest.param(lambda m: m["models"]["hashing_head"]["config"].update(hidden=1e9),
                 "is not integer in_features, hidden and bits", id="hidden-float"),
    pytest.param(lambda m: m["models"]["mono"].update(config={"channels": 10**6}),
                 "decoders take none", id="decoder-config"),
    pytest.param(lambda m: m["buckets"][0].update(code="1" * 10**5),
                 "is not 16 characters of 0 and 1", id="long-code"),
])
def test_a_gallery_asking_for_huge_models_is_refused_before_the_output_exists(
        edit, problem: str, tmp_path: Path) -> None:
    gallery = Path(shutil.copytree(Gallery.load().path, tmp_path / "gallery"))
    edit_manifest(gallery, edit)
    source = tmp_path / "scene.tif"
    shutil.copy(sample_path("rotterdam-ms1"), source)
    assert ingest([source], tmp_path / "a.zarr").ok
    out = tmp_path / "maps.zarr"
    with pytest.raises(GalleryError, match=problem) as refused:
        resflow.run(tmp_path / "a.zarr", out, backend="local", device="cpu", gallery=gallery)
    assert refused.value.where == str(gallery / "manifest.json")
    assert not out.exists()
