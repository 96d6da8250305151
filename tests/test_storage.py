"""The one storage module: small files whole or not at all, URIs safe to print, and the one
place that opens storage streams (the rest of the package goes through it)."""

from __future__ import annotations

import ast
import threading
from pathlib import Path

import pytest

from samsnet_search.services import storage
from samsnet_search.services.storage import StorageError

PACKAGE = Path(__file__).resolve().parents[1] / "samsnet_search"


def test_small_files_round_trip_and_leave_no_temporary_files(tmp_path):
    uri = str(tmp_path / "study" / "jobs" / "a.json")
    assert storage.read_json(uri) is None and storage.read_text(uri) is None
    storage.write_json(uri, {"slices": 4})
    assert storage.read_json(uri) == {"slices": 4} and storage.is_file(uri)
    storage.write_text(uri, '{"slices": 8}')
    assert storage.read_json(uri) == {"slices": 8}
    assert [p.name for p in (tmp_path / "study" / "jobs").iterdir()] == ["a.json"]
    storage.delete_file(uri)
    storage.delete_file(uri)  # absent is fine
    assert storage.read_text(uri) is None


def test_concurrent_writers_of_one_file_never_leave_it_half_written(tmp_path):
    uri = str(tmp_path / "driver.lease")
    payloads = [{"writer": i, "pad": "x" * 20000} for i in range(8)]
    threads = [threading.Thread(target=storage.write_json, args=(uri, p)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert storage.read_json(uri) in payloads
    assert [p.name for p in tmp_path.iterdir()] == ["driver.lease"]


def test_files_are_copied_in_and_out_and_a_missing_one_is_named(tmp_path):
    local = tmp_path / "best.pt"
    local.write_bytes(b"weights")
    uri = storage.join(str(tmp_path / "store"), "jobs/k.best.pt")
    storage.put_file(uri, local)
    assert storage.get_file(uri, tmp_path / "back" / "best.pt").read_bytes() == b"weights"
    with pytest.raises(StorageError, match=r"nope\.pt: no such file in the storage"):
        storage.get_file(storage.join(str(tmp_path / "store"), "nope.pt"), tmp_path / "x")


def test_s3_uris_keep_their_endpoint_and_print_without_secrets():
    uri = "s3://bucket/studies?endpoint_override=127.0.0.1:8333&scheme=http&secret_key=SECRET"
    assert (
        storage.join(uri, "quick")
        == "s3://bucket/studies/quick?endpoint_override=127.0.0.1:8333&scheme=http&secret_key=SECRET"
    )
    assert (
        storage.display_uri(storage.join(uri, "quick"))
        == "s3://bucket/studies/quick?endpoint_override=127.0.0.1:8333&scheme=http"
    )
    assert storage.is_s3(uri) and not storage.is_s3("/tmp/runs")
    with pytest.raises(StorageError, match="must look like http://HOST:PORT"):
        storage.storage_uri("bucket", "x", "127.0.0.1:8333")


def test_local_ray_storage_is_created(tmp_path):
    path, fs = storage.ray_storage(str(tmp_path / "runs"))
    assert fs is None and Path(path).is_dir()


# --- who does storage I/O ------------------------------------------------------------------

STREAM_CALLS = {"open_input_stream", "open_output_stream", "open_input_file", "from_uri", "create_dir", "move"}


def _calls(tree: ast.AST) -> set[str]:
    return {n.func.attr for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}


def _imports(tree: ast.AST) -> set[str]:
    out = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.ImportFrom):
            out.add("." * n.level + (n.module or ""))
        elif isinstance(n, ast.Import):
            out.update(a.name for a in n.names)
    return out


def _modules(*folders: str):
    for folder in folders:
        for path in sorted((PACKAGE / folder).glob("*.py")):
            yield path, ast.parse(path.read_text())


def test_only_the_storage_module_opens_storage_streams():
    offenders = {
        p.relative_to(PACKAGE).as_posix(): sorted(_calls(t) & STREAM_CALLS)
        for p, t in _modules("search", "delivery", "services")
        if p.name != "storage.py"
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_search_imports_neither_delivery_nor_another_modules_private_names():
    upward = {p.name: sorted(i for i in _imports(t) if "delivery" in i) for p, t in _modules("search")}
    assert {k: v for k, v in upward.items() if v} == {}
    private = {}
    for path, tree in _modules("search", "services"):
        names = [
            a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names if a.name.startswith("_")
        ]
        if names:
            private[path.name] = names
    assert private == {}


def test_a_trials_status_tag_is_written_by_the_tracking_module_only():
    writers = []
    for path, tree in _modules("search", "delivery", "services", "engine"):
        for n in ast.walk(tree):
            if (
                isinstance(n, ast.Call)
                and isinstance(n.func, ast.Attribute)
                and n.func.attr == "set_tag"
                and any(
                    isinstance(a, (ast.Name, ast.Attribute))
                    and getattr(a, "id", getattr(a, "attr", "")) == "STATUS_TAG"
                    for a in n.args
                )
            ):
                writers.append(path.relative_to(PACKAGE).as_posix())
    assert set(writers) == {"services/tracking.py"}


def test_a_manifest_caught_mid_copy_is_read_again_and_a_broken_one_named(tmp_path):
    """Ray Tune truncates and rewrites the study folder's top-level JSON files when it syncs them."""
    from samsnet_search.errors import ConfigError
    from samsnet_search.search import identity

    m = identity.Manifest(
        name="s",
        storage=str(tmp_path),
        experiment_name="s",
        experiment_id="1",
        parent_run_id="p",
        registered_model="samsnet-s",
        tracking_uri="sqlite:///x",
        artifact_root=None,
        base_dir=str(tmp_path),
        source="s.yaml",
    )
    identity.write_manifest(m)
    whole = (tmp_path / "s" / identity.MANIFEST).read_text()
    (tmp_path / "s" / identity.MANIFEST).write_text("")  # as Tune leaves it between truncate and write
    later = threading.Timer(0.3, lambda: (tmp_path / "s" / identity.MANIFEST).write_text(whole))
    later.start()
    assert identity.read_manifest(m.path).name == "s"
    later.join()
    (tmp_path / "s" / identity.MANIFEST).write_text('{"name": "s"')
    with pytest.raises(ConfigError, match=r"s/study.json: damaged study manifest"):
        identity.read_manifest(m.path)


@pytest.fixture
def no_aws(tmp_path, monkeypatch):
    """A shell without `infra env` and without AWS credentials of any kind, off EC2."""
    import os

    for name in list(os.environ):
        if name.startswith("AWS_") or name == "SAMSNET_STORAGE":
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.aws/credentials
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setattr(storage, "EC2_MARKERS", {})  # whatever machine runs the tests


def test_a_plain_s3_storage_with_no_endpoint_fails_at_once_naming_infra_env(no_aws, monkeypatch, capsys):
    """Without `infra env`, `s3://samsnet/ray` would go to AWS's DNS name and fail after ~14 s with
    `Could not resolve host`; it fails before any network wait, with one line saying what to set."""
    import time

    import samsnet_search.delivery.report  # noqa: F401 - the commands' lazy imports, loaded before the clock starts
    import samsnet_search.delivery.show  # noqa: F401
    from samsnet_search.cli import main
    from samsnet_search.services.infra import check_reachable

    for argv in (["ls", "--storage", "s3://samsnet/ray"], ["report", "s3://samsnet/ray/quick"]):
        began = time.monotonic()
        assert main(argv) == 2
        assert time.monotonic() - began < 2.0, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert 'eval "$(samsnet-search infra env)"' in err and "AWS_ENDPOINT_URL_S3" in err, err
        assert "endpoint_override" in err and "Could not resolve host" not in err
    (problem,) = check_reachable("s3://samsnet/ray", None)  # `validate` says the same, at once
    assert "infra env" in problem

    # An endpoint (in the URI or the environment) or AWS credentials: the URI may be meant, go ahead.
    storage.check_s3_configured("s3://samsnet/ray?endpoint_override=127.0.0.1:8333&scheme=http")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:8333")
    storage.check_s3_configured("s3://samsnet/ray")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    monkeypatch.setenv("AWS_PROFILE", "work")
    storage.check_s3_configured("s3://samsnet/ray")
