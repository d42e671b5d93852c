"""COS objects on disk: ``<data-dir>/<bucket>/<object key>``, path traversal refused."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,48}-[0-9]{1,12}$")


class BadKey(ValueError):
    """Object key or bucket name that cannot map to a file under the data dir."""


@dataclass(frozen=True)
class StoredObject:
    data: bytes
    etag: str
    mtime: float


@dataclass(frozen=True)
class ListedObject:
    key: str
    size: int
    mtime: float
    etag: str


@dataclass(frozen=True)
class Listing:
    objects: list[ListedObject]
    prefixes: list[str]
    truncated: bool
    next_marker: str


class ObjectStore:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def path_for(self, bucket: str, key: str) -> Path:
        if not BUCKET_RE.match(bucket):
            raise BadKey(f"invalid bucket name {bucket!r}")
        key = key.lstrip("/")
        parts = key.split("/")
        bad_part = any(p in ("", ".", "..") for p in parts)
        if not key or key.endswith("/") or "\x00" in key or bad_part:
            raise BadKey(f"invalid object key {key!r}")
        base = self.root / bucket
        path = (base / key).resolve()
        # Symlinks or odd components must never lead outside the bucket directory.
        if base.resolve() not in path.parents:
            raise BadKey(f"invalid object key {key!r}")
        return path

    def put(self, bucket: str, key: str, data: bytes) -> str:
        path = self.path_for(bucket, key)
        if path.is_dir():
            raise BadKey(f"object key {key!r} is a prefix of other objects")
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename so a reader never sees half an object.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return hashlib.md5(data).hexdigest()  # noqa: S324 - COS ETag is an MD5

    def get(self, bucket: str, key: str) -> StoredObject | None:
        path = self.path_for(bucket, key)
        try:
            data = path.read_bytes()
            mtime = path.stat().st_mtime
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        return StoredObject(data, hashlib.md5(data).hexdigest(), mtime)  # noqa: S324

    def exists(self, bucket: str, key: str) -> bool:
        try:
            return self.path_for(bucket, key).is_file()
        except BadKey:
            return False

    def delete(self, bucket: str, key: str) -> None:
        path = self.path_for(bucket, key)
        if path.is_file():
            path.unlink()

    def list(self, bucket: str, prefix: str, marker: str, delimiter: str, max_keys: int) -> Listing:
        """Keys after ``marker`` that start with ``prefix``, in UTF-8 byte order (as COS sorts);
        with a ``delimiter``, keys sharing the part up to it fold into one common prefix."""
        if not BUCKET_RE.match(bucket):
            raise BadKey(f"invalid bucket name {bucket!r}")
        base = self.root / bucket
        keys = sorted(
            (
                p.relative_to(base).as_posix()
                for p in base.rglob("*")
                if p.is_file() and not p.name.startswith(".tmp-")
            ),
            key=lambda k: k.encode(),
        )
        objects: list[ListedObject] = []
        prefixes: list[str] = []
        last = ""
        for key in keys:
            if not key.startswith(prefix) or key.encode() <= marker.encode():
                continue
            if delimiter and delimiter in key[len(prefix) :]:
                common = key[: key.index(delimiter, len(prefix)) + len(delimiter)]
                if (prefixes and prefixes[-1] == common) or common.encode() <= marker.encode():
                    continue
                if len(objects) + len(prefixes) == max_keys:
                    return Listing(objects, prefixes, True, last)
                prefixes.append(common)
                last = common
                continue
            if len(objects) + len(prefixes) == max_keys:
                return Listing(objects, prefixes, True, last)
            path = base / key
            data = path.read_bytes()
            etag = hashlib.md5(data).hexdigest()  # noqa: S324 - COS ETag is an MD5
            objects.append(ListedObject(key, len(data), path.stat().st_mtime, etag))
            last = key
        return Listing(objects, prefixes, False, "")
