"""URIs, not paths: local paths, file://, s3:// and gs:// through pyarrow.fs."""
from __future__ import annotations

import hashlib
import os
import uuid
from contextlib import contextmanager
from datetime import timedelta

import pyarrow.fs as pafs

from synth.errors import SynthError

TMP_PREFIX = ".tmp-"  # files being written (local storage); `sweep_tmp` removes those a dead writer left


def timeout_s() -> float:
    """How long an object-store call may retry before it fails (SYNTH_STORAGE_TIMEOUT_S, default 20)."""
    try:
        return float(os.environ.get("SYNTH_STORAGE_TIMEOUT_S", "20"))
    except ValueError:
        raise SynthError("SYNTH_STORAGE_TIMEOUT_S must be a number of seconds") from None


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) for a URI or a local path."""
    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))
    scheme, rest = uri.split("://", 1)
    try:
        if scheme in ("gs", "gcs") and "?" not in rest:  # GCS retries for minutes by default
            return pafs.GcsFileSystem(retry_time_limit=timedelta(seconds=timeout_s())), rest.rstrip("/")
        return pafs.FileSystem.from_uri(uri)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types here
        raise SynthError(f"cannot open {uri!r}: {_one_line(e)}") from None


def _one_line(e: Exception, limit: int = 300) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[:limit] + " ..."


@contextmanager
def _reaching(uri: str):
    """Object-store failures (no network, no credentials, timeouts) as one message naming the URI."""
    try:
        yield
    except FileNotFoundError:
        raise
    except OSError as e:
        if "://" not in uri:
            raise
        raise SynthError(f"cannot reach {uri!r} ({_one_line(e)}); check the network and the credentials "
                         f"(calls give up after SYNTH_STORAGE_TIMEOUT_S={timeout_s():g} s)") from None


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *parts])


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    with _reaching(uri):
        return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_dir(uri: str) -> bool:
    fs, path = resolve(uri)
    with _reaching(uri):
        return fs.get_file_info(path).type == pafs.FileType.Directory


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    with _reaching(uri), fs.open_input_stream(path) as f:
        return f.read()


def write_bytes(uri: str, data: bytes) -> None:
    """Write so that no reader ever sees a half-written file. Locally: a temporary name, fsync, rename,
    fsync of the folder (the file survives a crash once this returns). On object stores a PUT is
    already all-or-nothing and a rename is a copy plus a delete, so the object is written in place."""
    fs, path = resolve(uri)
    parent, name = path.rsplit("/", 1)
    with _reaching(uri):
        fs.create_dir(parent, recursive=True)
        if not isinstance(fs, pafs.LocalFileSystem):
            with fs.open_output_stream(path) as f:
                f.write(data)
            return
        tmp = f"{parent}/{TMP_PREFIX}{uuid.uuid4().hex}-{name}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        fd = os.open(parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def create_exclusive(uri: str, data: bytes) -> bool:
    """Create the file only if it does not exist; False when it did (then nothing is written).
    Locally this is atomic (a complete temporary file hard-linked into place). pyarrow offers object stores no conditional PUT, so
    there two writers racing within one round trip could both create it: there, give each run its
    own folder (the nightly job does)."""
    fs, path = resolve(uri)
    parent = path.rsplit("/", 1)[0]
    with _reaching(uri):
        fs.create_dir(parent, recursive=True)
        if not isinstance(fs, pafs.LocalFileSystem):
            if fs.get_file_info(path).type != pafs.FileType.NotFound:
                return False
            with fs.open_output_stream(path) as f:
                f.write(data)
            return True
        # written whole under a temporary name, then hard-linked into place: the link fails if the
        # file exists, and a reader never sees it half-written (O_EXCL alone would expose it empty)
        tmp = f"{parent}/.tmp-{uuid.uuid4().hex}-{path.rsplit('/', 1)[1]}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        return True


def sweep_tmp(uri: str, older_than_s: float = 3600.0) -> int:
    """Delete `.tmp-*` files older than `older_than_s` left in folder `uri` by writers that died
    mid-write; returns how many. Younger ones may belong to a writer still running."""
    import time

    fs, path = resolve(uri)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    except FileNotFoundError:
        return 0
    now, n = time.time(), 0
    for i in infos:
        if i.type == pafs.FileType.File and i.base_name.startswith(TMP_PREFIX) and \
                (i.mtime is None or now - i.mtime.timestamp() > older_than_s):
            fs.delete_file(i.path)
            n += 1
    return n


def delete_dir(uri: str) -> None:
    fs, path = resolve(uri)
    fs.delete_dir(path)


def makedirs(uri: str) -> None:
    fs, path = resolve(uri)
    fs.create_dir(path, recursive=True)


def check_writable(uri: str) -> None:
    """Fail early, naming the location, when output cannot be written there."""
    fs, path = resolve(uri)
    path = path.rstrip("/")
    probe = f"{path}/.synth-write-probe-{uuid.uuid4().hex}"
    created = None  # the topmost folder the probe creates: removed again, so a run refused later
    try:            # (bad data, bad column) leaves no empty output folder behind
        p = path
        while fs.get_file_info(p).type == pafs.FileType.NotFound:
            created, parent = p, p.rsplit("/", 1)[0]
            if not parent or parent == p:
                break
            p = parent
        fs.create_dir(path, recursive=True)
        with fs.open_output_stream(probe) as f:
            f.write(b"ok")
        fs.delete_file(probe)
    except Exception as e:  # noqa: BLE001
        raise SynthError(f"cannot write to {uri!r} ({e.__class__.__name__}: {e}); "
                         "choose a writable location or fix its permissions") from None
    finally:
        if created is not None:
            try:
                fs.delete_dir(created)
            except OSError:
                pass


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_yaml(uri: str, what: str = "config"):
    """The YAML document at `uri` (local path, s3://, gs://): every config, contract and job file is
    read here. An empty file is {}."""
    import yaml

    from synth.errors import ConfigError

    if not exists(uri):
        raise ConfigError(f"{what} {uri!r} does not exist")
    try:
        raw = yaml.safe_load(read_bytes(uri))
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} {uri!r} is not valid YAML: {e}") from None
    return {} if raw is None else raw
