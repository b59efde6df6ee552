"""URIs, not paths: local paths, file://, s3:// and gs:// through pyarrow.fs."""
from __future__ import annotations

import hashlib
import os
import uuid

import pyarrow.fs as pafs

from synth.errors import SynthError


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) for a URI or a local path."""
    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))
    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types here
        raise SynthError(f"cannot open {uri!r}: {e}") from None


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *parts])


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_dir(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type == pafs.FileType.Directory


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


def write_bytes(uri: str, data: bytes) -> None:
    """Write then move into place, so no reader ever sees a half-written file."""
    fs, path = resolve(uri)
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    tmp = f"{parent}/.tmp-{uuid.uuid4().hex}-{path.rsplit('/', 1)[1]}"
    with fs.open_output_stream(tmp) as f:
        f.write(data)
    fs.move(tmp, path)


def makedirs(uri: str) -> None:
    fs, path = resolve(uri)
    fs.create_dir(path, recursive=True)


def check_writable(uri: str) -> None:
    """Fail early, naming the location, when output cannot be written there."""
    fs, path = resolve(uri)
    probe = f"{path.rstrip('/')}/.synth-write-probe-{uuid.uuid4().hex}"
    try:
        fs.create_dir(path, recursive=True)
        with fs.open_output_stream(probe) as f:
            f.write(b"ok")
        fs.delete_file(probe)
    except Exception as e:  # noqa: BLE001
        raise SynthError(f"cannot write to {uri!r} ({e.__class__.__name__}: {e}); "
                         "choose a writable location or fix its permissions") from None


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
