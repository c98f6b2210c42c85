"""Untrusted input from archives, buckets and servers (docs/security.md), rebuilt by the tests
as an attacker would craft it, on servers at 127.0.0.1: archive members and S3 keys never
leave their folder, extraction and downloads stop at their caps, redirects never downgrade,
two processes fetching one file never corrupt it."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest
import s3server
from dataset_builders import FileServer, fetch_in_two_processes, part_files, zip_bomb
from s3proxy import FaultProxy

from nadir.core.errors import InputError, NadirError
from nadir.fetch.archives import extract
from nadir.fetch.sources import SourceEntry, fetch_s3
from nadir.storage.download import FetchSettings, download
from nadir.storage.urls import redirect_refusal

SENTINEL = b"the user's own file"


def settings(tmp_path: Path, **changes) -> FetchSettings:
    return FetchSettings(tmp_path / "cache", **{"retries": 0, "timeout_s": 5.0, **changes})


def files_under(root: Path, skip: tuple[Path, ...] = ()) -> dict[str, tuple]:
    """Every path under `root` (not under `skip`) with what identifies its state: type, link
    target or content digest, inode and modification time. Two equal snapshots mean nothing
    was created, changed, replaced or removed."""
    state = {}
    for path in sorted(root.rglob("*")):
        if any(path == s or path.is_relative_to(s) for s in skip):
            continue
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            what = ("link", os.readlink(path))
        elif stat.S_ISDIR(info.st_mode):
            what = ("dir",)
        else:
            what = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
        state[str(path.relative_to(root))] = (*what, info.st_ino, info.st_mtime_ns)
    return state


@pytest.fixture
def outside(tmp_path) -> Path:
    """A folder beside the destination holding a file an attack would overwrite or remove."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "sentinel.txt").write_bytes(SENTINEL)
    return folder


def assert_untouched(tmp_path: Path, before: dict, *results: Path) -> None:
    assert files_under(tmp_path, results) == before
    assert (tmp_path / "outside" / "sentinel.txt").read_bytes() == SENTINEL


# --- archive members ---------------------------------------------------------------------------

def zip_with(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members:
            zf.writestr(zipfile.ZipInfo(name), data)
    return path


def tar_member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"x",
               link: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data


def tar_with(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(path, "w") as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if info.size else None)
    return path


# Names that resolve outside the folder, each spelt differently: the check is on the resolved
# path, so every spelling is one case of the same rule.
ESCAPING_NAMES = [
    "../outside/sentinel.txt",                 # overwrite a neighbour
    "../evil.txt",
    "a/b/../../../evil.txt",                   # `..` after real folders
    "..\\evil.txt",                            # Windows separators
    "a\\..\\..\\outside\\sentinel.txt",
    ".",                                       # the folder itself, as a file
    "a/..",
]


def absolute_name(tmp_path: Path) -> str:
    return str(tmp_path / "outside" / "sentinel.txt")


@pytest.mark.parametrize("name", [*ESCAPING_NAMES, "ABSOLUTE"])
@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_an_archive_member_that_would_land_outside_is_refused_and_nothing_outside_changes(
        tmp_path, outside, kind, name):
    name = absolute_name(tmp_path) if name == "ABSOLUTE" else name
    members = [("ok.txt", b"fine"), (name, b"attacker's bytes")]
    archive = zip_with(tmp_path / "a.zip", members) if kind == "zip" else tar_with(
        tmp_path / "a.tar", [tar_member(n, data=d) for n, d in members])
    before = files_under(tmp_path)
    with pytest.raises(InputError) as error:
        extract(archive, tmp_path / "out", settings(tmp_path))
    assert str(archive) in str(error.value) and repr(name) in str(error.value)
    assert_untouched(tmp_path, before)  # nor is the destination left half-made


@pytest.mark.parametrize("members", [
    # a link that points out, then a file written through it
    [tar_member("link", tarfile.SYMTYPE, link="../outside"),
     tar_member("link/sentinel.txt", data=b"attacker's bytes")],
    [tar_member("link", tarfile.SYMTYPE, link="/")],
    # a link to the folder itself, then `..` walked through it
    [tar_member("here", tarfile.SYMTYPE, link="."),
     tar_member("here/here/../../evil.txt")],
    # hard links to a file outside, relative and absolute
    [tar_member("hard", tarfile.LNKTYPE, link="../outside/sentinel.txt")],
    [tar_member("hard", tarfile.LNKTYPE, link="ABSOLUTE")],
    [tar_member("dev", tarfile.CHRTYPE)],
    [tar_member("fifo", tarfile.FIFOTYPE)],
], ids=["symlink-out-then-through", "symlink-to-root", "symlink-to-itself-then-dotdot",
        "hardlink-out", "hardlink-absolute", "device", "fifo"])
def test_tar_links_and_special_files_cannot_reach_outside(tmp_path, outside, members):
    for info, _ in members:
        if info.linkname == "ABSOLUTE":
            info.linkname = absolute_name(tmp_path)
    archive = tar_with(tmp_path / "links.tar", members)
    before = files_under(tmp_path)
    with pytest.raises(InputError, match=r"links\.tar: member '[a-z/.]+'"):
        extract(archive, tmp_path / "out", settings(tmp_path))
    assert_untouched(tmp_path, before)


def test_links_and_odd_names_that_stay_inside_are_extracted(tmp_path, outside):
    """The rule refuses only what leaves the folder: links within it, unicode, spaces, a
    `./` prefix and a zip entry marked as a link (written as a plain file) all land inside."""
    tar = tar_with(tmp_path / "ok.tar", [
        tar_member("images/a.png", data=b"png"),
        tar_member("latest.png", tarfile.SYMTYPE, link="images/a.png"),
        tar_member("copy.png", tarfile.LNKTYPE, link="images/a.png"),
        tar_member("./données/été 1.png", data=b"unicode")])
    extract(tar, tmp_path / "t", settings(tmp_path))
    assert (tmp_path / "t" / "latest.png").read_bytes() == b"png"
    assert (tmp_path / "t" / "copy.png").read_bytes() == b"png"
    assert (tmp_path / "t" / "données" / "été 1.png").read_bytes() == b"unicode"
    link = zipfile.ZipInfo("link")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(tmp_path / "ok.zip", "w") as zf:
        zf.writestr(link, str(outside / "sentinel.txt"))
        zf.writestr("dir\\file.txt", b"windows")
    extract(tmp_path / "ok.zip", tmp_path / "z", settings(tmp_path))
    assert not (tmp_path / "z" / "link").is_symlink()
    assert (tmp_path / "z" / "dir" / "file.txt").read_bytes() == b"windows"
    assert (outside / "sentinel.txt").read_bytes() == SENTINEL


def test_a_link_to_a_folder_above_it_is_extracted_as_a_link_into_an_existing_folder(tmp_path):
    """`a/loop` -> `..` stays inside; extracted into a folder that already exists, it is
    copied as a link, not followed (which would copy the tree into itself, level after
    level, until the path is too long)."""
    tar = tar_with(tmp_path / "loop.tar", [tar_member("a/x.png", data=b"png"),
                                           tar_member("a/loop", tarfile.SYMTYPE, link="..")])
    (tmp_path / "out").mkdir()
    extract(tar, tmp_path / "out", settings(tmp_path))
    assert os.readlink(tmp_path / "out" / "a" / "loop") == ".."
    assert (tmp_path / "out" / "a" / "loop" / "a" / "x.png").read_bytes() == b"png"
    assert sum(1 for _ in (tmp_path / "out").rglob("*")) == 3


def test_a_name_too_long_for_the_file_system_is_an_error_naming_it(tmp_path):
    archive = zip_with(tmp_path / "long.zip", [("x" * 300 + ".png", b"png")])
    with pytest.raises(InputError, match=r"long\.zip: member 'x{300}\.png' has a name longer "
                                         r"than the 255 bytes"):
        extract(archive, tmp_path / "out", settings(tmp_path))
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_an_inner_archive_may_not_leave_its_own_folder(tmp_path, outside):
    inner = zip_with(tmp_path / "inner.zip", [("../../outside/sentinel.txt", b"attack")])
    outer = zip_with(tmp_path / "outer.zip", [("parts/inner.zip", inner.read_bytes())])
    inner.unlink()
    before = files_under(tmp_path)
    with pytest.raises(InputError, match=r"inner\.zip: member '\.\./\.\./outside/sentinel\.txt' "
                                         r"leads outside"):
        extract(outer, tmp_path / "out", settings(tmp_path))
    assert_untouched(tmp_path, before)


# --- expansion caps ----------------------------------------------------------------------------

def test_nested_archives_share_one_budget(tmp_path):
    """An archive of archives (42.zip's trick) counts every level against one budget: four
    inner archives of 8 MiB each pass a 20 MiB cap one by one, not together."""
    inner = zip_bomb(tmp_path / "inner.zip", 8 << 20)
    outer = zip_with(tmp_path / "outer.zip", [(f"p{i}.zip", inner.read_bytes()) for i in range(4)])
    with pytest.raises(InputError, match=r"p2\.zip: member 'bomb\.bin' would take the extracted "
                                         r"bytes past fetch\.max_extracted_bytes"):
        extract(outer, tmp_path / "out", settings(tmp_path, max_extracted_bytes=20 << 20,
                                                  max_expansion_ratio=10 ** 6))
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


# --- S3 keys ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hostile_s3(tmp_path_factory):
    """SeaweedFS with a public bucket, behind a proxy that lists keys as an S3 server that
    keeps `//`, `..` and backslashes in keys (AWS does) would list them."""
    server = s3server.start(tmp_path_factory.mktemp("weed-hostile"),
                            anonymous_actions=["Read:pub", "List:pub"])
    server.client().create_bucket(Bucket="pub")
    proxy = FaultProxy(server.endpoint)
    yield server, proxy
    proxy.stop()
    server.stop()


@pytest.mark.parametrize("prefix, shown", [
    ("data/", "data//ABSOLUTE"),                   # `//`: the rest of the key is absolute
    ("data/", "data/../../outside/sentinel.txt"),
    ("data/", "data/a\\..\\..\\..\\outside\\sentinel.txt"),
    ("", "/ABSOLUTE"),                             # empty prefix: the key itself
    ("", "../../../../../../../../../../../../ABSOLUTE"),  # the cache path too
], ids=["double-slash", "dotdot", "backslashes", "empty-prefix-absolute", "empty-prefix-dotdot"])
def test_an_s3_key_that_would_land_outside_is_refused_before_anything_is_written(
        tmp_path, outside, hostile_s3, prefix, shown):
    server, proxy = hostile_s3
    shown = shown.replace("ABSOLUTE", absolute_name(tmp_path).lstrip("/"))
    stored = f"{prefix}{tmp_path.name}/x.tif"  # listed (under the prefix) as `shown`
    server.client().put_object(Bucket="pub", Key=stored, Body=b"attacker's bytes")
    server.client().put_object(Bucket="pub", Key=f"{prefix}ok.tif", Body=b"fine")
    proxy.listed_as = {stored: shown}
    entry = SourceEntry(f"s3://pub/{prefix}", endpoint_url=proxy.endpoint)
    before = files_under(tmp_path)
    seen = len(proxy.seen)
    try:
        with pytest.raises(InputError) as error:
            fetch_s3(entry, tmp_path / "dest", lambda rel: "image", settings(tmp_path))
    finally:
        proxy.listed_as = {}
    assert "s3://pub" in str(error.value) and repr(shown) in str(error.value)
    assert_untouched(tmp_path, before, tmp_path / "cache")
    assert not (tmp_path / "dest").exists()
    assert [m for m, p in proxy.seen[seen:] if "list-type" not in p] == []  # nothing fetched


def test_an_s3_key_too_long_for_the_file_system_is_refused_before_any_download(tmp_path,
                                                                               hostile_s3):
    server, proxy = hostile_s3
    server.client().put_object(Bucket="pub", Key="long/x.tif", Body=b"x")
    shown = "long/" + "x" * 300 + ".tif"
    proxy.listed_as = {"long/x.tif": shown}
    try:
        with pytest.raises(InputError, match=rf"s3://pub: key '{shown}' has a name longer "
                                             r"than the 255 bytes"):
            fetch_s3(SourceEntry("s3://pub/long/", endpoint_url=proxy.endpoint), tmp_path / "d",
                     lambda rel: "image", settings(tmp_path))
    finally:
        proxy.listed_as = {}
    assert not (tmp_path / "d").exists()


# --- downloads -------------------------------------------------------------------------------

PAYLOAD = bytes(range(256)) * 1_200  # 307,200 bytes


def served(tmp_path: Path, **options) -> FileServer:
    root = tmp_path / "www"
    root.mkdir(exist_ok=True)
    (root / "data.bin").write_bytes(PAYLOAD)
    return FileServer(root, **options)


@pytest.mark.parametrize("old, new, refused", [
    ("https://8.8.8.8/a.zip", "http://8.8.8.8/a.zip", "leaves https for http"),
    ("https://8.8.8.8/a.zip", "https://1.1.1.1/b.zip", None),        # another public host
    ("http://8.8.8.8/a.zip", "http://169.254.169.254/latest/meta-data/", "non-public address"),
    ("http://8.8.8.8/a.zip", "http://10.0.0.5/a.zip", "non-public address"),
    ("http://8.8.8.8/a.zip", "http://[::1]/a.zip", "non-public address"),
    ("http://8.8.8.8/a.zip", "http://localhost/a.zip", "non-public address"),
    ("http://10.0.0.4/a.zip", "http://10.0.0.5/a.zip", None),         # an internal mirror
    ("http://8.8.8.8/a.zip", "ftp://8.8.8.8/a.zip", "only http"),
    ("http://8.8.8.8/a.zip", "file:///etc/passwd", "only http"),
])
def test_redirect_decisions(old, new, refused):
    reason = redirect_refusal(old, new)
    assert reason is None if refused is None else refused in reason


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/a.zip",
                                 "data:text/plain,hello"])
def test_only_http_urls_are_downloaded(tmp_path, url):
    with pytest.raises(NadirError, match="only http\\(s\\) URLs are downloaded"):
        download(url, tmp_path / "cache" / "x", None, settings(tmp_path))
    assert not (tmp_path / "cache" / "x").exists()


# --- two processes, one cache entry ----------------------------------------------------------

def test_two_jobs_fetching_one_weights_file_get_it_once(tmp_path):
    """As two datasets' fetches of one URL (docs/faults.md, http-same-url-two-processes):
    two training jobs asking for the same pretrained weights download them once, and both
    find the file and its record."""
    digests, requests, left = fetch_in_two_processes(tmp_path, "weights")
    assert len(set(digests)) == 1 and requests == 1 and left == ["f.bin", "f.bin.json"]


def test_a_part_left_by_a_killed_process_is_resumed_by_the_next(tmp_path):
    """Part files are per process; the next download of the entry continues the newest one
    (its version recorded beside it) rather than starting over."""
    server = served(tmp_path, drop_after=100_000)
    dest = tmp_path / "cache" / "data.bin"
    try:
        with pytest.raises(NadirError, match="connection closed after 100000"):
            download(f"{server.url}/data.bin", dest, None, settings(tmp_path))
        [part] = part_files(dest)
        assert f".part-{os.getpid()}-" in part.name
        stale = part.with_name("data.bin.part-1-stale")  # an older one, its version unknown
        shutil.copy(part, stale)
        os.utime(stale, ns=(0, 0))
        download(f"{server.url}/data.bin", dest, None, settings(tmp_path))
        assert dest.read_bytes() == PAYLOAD and not part_files(dest)
        assert server.requests[-1] == ("/data.bin", "bytes=100000-")
    finally:
        server.stop()
