"""The zip container reader (``safeload.formats.zip``).

Well-formed archives are written by the stdlib ``zipfile`` (ZIP_STORED, like
torch) or, for zip64 and junk-prefix layouts it cannot produce, by the small
writer ``_write_zip`` below; malformed ones are those bytes patched with
``struct``. ``zipfile`` is the oracle for what a valid archive contains: every
archive safeload accepts must read the same through it. Real ``torch.save``
output and the shared corpus are checked when available. Nothing here ever
unpickles a record.
"""

from __future__ import annotations

import io
import re
import struct
import warnings
import zipfile
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from safeload.errors import FormatError, LimitError
from safeload.formats.source import Source
from safeload.formats.zip import (
    TorchScriptArchive,
    TorchZip,
    ZipRecord,
    is_zip,
    open_torch_zip,
)
from safeload.limits import Limits

# A protocol-2 pickle of {} : the bytes only have to be there, nobody loads them.
PICKLE = b"\x80\x02}q\x00."

RECORDS = {
    "data.pkl": PICKLE,
    "byteorder": b"little",
    "data/0": bytes(range(16)),
    "data/1": b"\x00\x00\x80?",
    "version": b"3\n",
    ".data/serialization_id": b"0123456789",
}


# --- building archives ---------------------------------------------------------------


class _Unseekable(io.RawIOBase):
    """A write-only stream: zipfile then writes data descriptors, as torch does."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.buffer += data
        return len(data)


def torch_like(
    records: dict[str, bytes | None] | None = None,
    *,
    prefix: str = "archive",
    descriptors: bool = False,
    compress: tuple[str, ...] = (),
) -> bytes:
    """A zip laid out like torch.save's: ``RECORDS`` (with ``records`` merged in,
    None removing one) under ``prefix/``, stored unless named in ``compress``."""
    merged = {**RECORDS, **(records or {})}
    stream = _Unseekable() if descriptors else io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # duplicate names, on purpose
        with zipfile.ZipFile(stream, "w", zipfile.ZIP_STORED) as archive:
            for name, data in merged.items():
                if data is None:
                    continue
                full = f"{prefix}/{name}" if prefix else name
                method = zipfile.ZIP_DEFLATED if name in compress else zipfile.ZIP_STORED
                archive.writestr(full, data, compress_type=method)
    return bytes(stream.buffer if descriptors else stream.getvalue())


def _write_zip(
    entries: list[tuple[str, bytes]], *, zip64: bool = False, junk: bytes = b""
) -> bytes:
    """A stored zip written field by field: every size and offset in zip64
    extras with ``zip64``, and ``junk`` before the first record with offsets
    that account for it (what ``zip -A`` makes of a self-extracting file)."""
    out = bytearray(junk)
    central = bytearray()
    saturated = 0xFFFFFFFF
    for name, data in entries:
        raw, crc, header = name.encode(), zlib.crc32(data), len(out)
        size = saturated if zip64 else len(data)
        local_extra = struct.pack("<HHQQ", 1, 16, len(data), len(data)) if zip64 else b""
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 45, 0x800, 0, 0, 0x21, crc, size, size,
                           len(raw), len(local_extra)) + raw + local_extra + data
        central_extra = (
            struct.pack("<HHQQQ", 1, 24, len(data), len(data), header) if zip64 else b""
        )
        central += struct.pack(
            "<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0x800, 0, 0, 0x21, crc, size, size,
            len(raw), len(central_extra), 0, 0, 0, 0, saturated if zip64 else header,
        ) + raw + central_extra
    central_offset, count = len(out), len(entries)
    out += central
    if zip64:
        end64 = len(out)
        out += struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, count, count,
                           len(central), central_offset)
        out += struct.pack("<IIQI", 0x07064B50, 0, end64, 1)
        out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, saturated,
                           saturated, 0)
    else:
        out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count, count, len(central),
                           central_offset, 0)
    return bytes(out)


def _entries(prefix: str = "archive") -> list[tuple[str, bytes]]:
    return [(f"{prefix}/{name}", data) for name, data in RECORDS.items()]


def central(data: bytes, name: str | bytes) -> int:
    """Offset of the central directory entry named ``name``."""
    raw = name if isinstance(name, bytes) else name.encode()
    at = data.find(b"PK\x01\x02")
    while at >= 0:
        length = struct.unpack_from("<H", data, at + 28)[0]
        if data[at + 46 : at + 46 + length] == raw:
            return at
        at = data.find(b"PK\x01\x02", at + 1)
    raise AssertionError(f"no central entry {name!r}")


def local(data: bytes, name: str) -> int:
    return struct.unpack_from("<I", data, central(data, name) + 42)[0]


def end_record(data: bytes) -> int:
    return data.rfind(b"PK\x05\x06")


def patch(data: bytes, *edits: tuple[int, str, int]) -> bytes:
    """``data`` with struct ``fmt`` values written at the given offsets."""
    out = bytearray(data)
    for offset, fmt, value in edits:
        struct.pack_into("<" + fmt, out, offset, value)
    return bytes(out)


def rename(data: bytes, old: str, new: bytes) -> bytes:
    """Same-length rename in both the local and the central header."""
    assert len(old.encode()) == len(new) and data.count(old.encode()) == 2
    return data.replace(old.encode(), new)


def open_bytes(data: bytes, **kwargs) -> TorchZip:
    return open_torch_zip(Source(data, "t.pt"), **kwargs)


def refused(data: bytes, pattern: str, *, error: type = FormatError, **kwargs):
    """The error opening ``data`` raises; its message must match ``pattern``."""
    with pytest.raises(error) as caught:
        open_bytes(data, **kwargs)
    assert re.search(pattern, str(caught.value)), str(caught.value)
    assert caught.value.location.file == "t.pt"
    return caught.value


# --- well-formed archives ------------------------------------------------------------


def test_torch_like_archive_opens_with_every_record():
    data = torch_like()
    archive = open_bytes(data)
    assert archive.prefix == "archive"
    assert archive.byteorder == "little"
    assert archive.storage_alignment is None
    assert archive.unknown == []
    assert set(archive.records) == set(RECORDS)
    with zipfile.ZipFile(io.BytesIO(data)) as oracle:
        for short, expected in RECORDS.items():
            record = archive.records[short]
            assert isinstance(record, ZipRecord)
            assert record.name == f"archive/{short}"
            assert record.size == len(expected)
            assert record.crc32 == zlib.crc32(expected)
            assert record.header_offset == oracle.getinfo(record.name).header_offset
            assert data[record.offset : record.offset + record.size] == expected
            assert bytes(archive.read(short)) == expected == oracle.read(record.name)
    assert bytes(archive.pickle()) == PICKLE
    assert bytes(archive.storage("0")) == RECORDS["data/0"]


def test_data_descriptors_between_records_are_accepted():
    data = torch_like(descriptors=True)
    with zipfile.ZipFile(io.BytesIO(data)) as oracle:
        assert all(info.flag_bits & 0x08 for info in oracle.infolist())
    archive = open_bytes(data)
    assert bytes(archive.storage("1")) == RECORDS["data/1"]


def test_zip64_end_records_and_extra_fields_are_followed():
    data = _write_zip(_entries(), zip64=True)
    with zipfile.ZipFile(io.BytesIO(data)) as oracle:  # the writer is right
        assert oracle.read("archive/data/0") == RECORDS["data/0"]
    archive = open_bytes(data)
    assert set(archive.records) == set(RECORDS)
    assert bytes(archive.storage("0")) == RECORDS["data/0"]
    assert bytes(archive.pickle()) == PICKLE


def test_zip64_local_headers_from_zipfile_are_accepted():
    stream = io.BytesIO()
    with zipfile.ZipFile(stream, "w") as writer:
        for name, data in _entries():
            with writer.open(name, "w", force_zip64=True) as member:
                member.write(data)
    archive = open_bytes(stream.getvalue())
    assert bytes(archive.read("data/0")) == RECORDS["data/0"]


def test_byteorder_big_and_absent():
    assert open_bytes(torch_like({"byteorder": b"big"})).byteorder == "big"
    assert open_bytes(torch_like({"byteorder": None})).byteorder == "little"


def test_storage_alignment_is_read():
    assert open_bytes(torch_like({".storage_alignment": b"64"})).storage_alignment == 64


def test_unknown_records_are_listed_not_refused():
    archive = open_bytes(torch_like({"extra/notes.txt": b"hi", "data/a b": b"x"}))
    assert archive.unknown == ["data/a b", "extra/notes.txt"]
    with pytest.raises(FormatError, match="missing"):
        archive.storage("a b")


def test_other_top_folder_names_are_the_prefix():
    archive = open_bytes(torch_like(prefix="checkpoint.pth"))
    assert archive.prefix == "checkpoint.pth"
    assert archive.records["data.pkl"].name == "checkpoint.pth/data.pkl"


def test_cp437_names_decode_like_zipfile():
    data = rename(torch_like({"extra/caf_": b"x"}), "archive/extra/caf_", b"archive/extra/caf\x82")
    archive = open_bytes(data)
    assert archive.unknown == ["extra/caf\u00e9"]
    with zipfile.ZipFile(io.BytesIO(data)) as oracle:
        assert "archive/extra/caf\u00e9" in oracle.namelist()


def test_is_zip_sniffs_content_only():
    assert is_zip(Source(b"PK\x03\x04garbage", None))
    assert is_zip(Source(b"PK\x05\x06" + bytes(18), None))
    assert not is_zip(Source(b"\x80\x02}q\x00.", None))
    assert not is_zip(Source(b"PK", None))


# --- reads after opening ---------------------------------------------------------------


def test_crc_mismatch_is_refused_on_read_and_names_the_record():
    data = torch_like()
    record = open_bytes(data).records["data/0"]
    corrupt = bytearray(data)
    corrupt[record.offset] ^= 0xFF
    archive = open_bytes(bytes(corrupt))  # CRCs are checked when read
    with pytest.raises(FormatError, match="CRC-32") as caught:
        archive.read("data/0")
    assert caught.value.member == "archive/data/0"
    assert caught.value.offset == record.offset
    assert len(archive.read("data/0", verify_crc=False)) == 16
    assert len(archive.storage("0")) == 16  # storages: bounds only, zero-copy


def test_archive_written_without_checksums_reads():
    # torch.save after torch.serialization.set_crc32_options(False) writes CRC 0.
    data = torch_like()
    edits = [(central(data, f"archive/{n}") + 16, "I", 0) for n in RECORDS]
    edits += [(local(data, f"archive/{n}") + 14, "I", 0) for n in RECORDS]
    archive = open_bytes(patch(data, *edits))
    assert not archive.checksums
    assert bytes(archive.pickle()) == PICKLE
    assert open_bytes(data).checksums


def test_missing_storage_record_is_named():
    archive = open_bytes(torch_like())
    with pytest.raises(FormatError, match=r"storage record 'data/7' is missing") as caught:
        archive.storage("7")
    assert caught.value.member == "archive/data/7"
    for key in ("../data.pkl", "", "0/../1", 0):
        with pytest.raises(FormatError, match="missing"):
            archive.storage(key)


def test_storage_size_agrees_with_the_storage_view_for_every_key():
    # the scanner's size check uses storage_size, not storage(): it must say what
    # len(storage(key)) says, and refuse what storage() refuses, as storage() does
    archive = open_bytes(torch_like({"data/a.b": b"xyz", "data/x/y": b"12"}))
    keys = ["0", "1", "a.b", "7", "x/y", "x", "../data.pkl", "", "0/../1", "\u0661", 0, None]
    for key in keys:
        try:
            want = len(archive.storage(key))
        except FormatError as err:
            with pytest.raises(FormatError) as caught:
                archive.storage_size(key)
            assert (str(caught.value), caught.value.member) == (str(err), err.member)
        else:
            assert archive.storage_size(key) == want
    assert [archive.storage_size(k) for k in ("0", "1", "a.b")] == [16, 4, 3]


def test_reading_an_absent_record_is_a_format_error():
    with pytest.raises(FormatError, match="no record"):
        open_bytes(torch_like()).read("nothing")


def test_pickle_size_is_limited():
    err = refused(torch_like(), r"data\.pkl", error=LimitError,
                  limits=Limits(max_pickle_bytes=len(PICKLE) - 1))
    assert err.member == "archive/data.pkl"


# --- refusals: end records and central directory -------------------------------------


def test_encrypted_entry_is_refused():
    data = torch_like()
    at = central(data, "archive/data/0")
    err = refused(patch(data, (at + 8, "H", 1), (local(data, "archive/data/0") + 6, "H", 1)),
                  "archive is encrypted")
    assert (err.member, err.offset) == ("archive/data/0", at)


def test_encryption_flag_in_local_header_only_is_refused():
    data = torch_like()
    at = local(data, "archive/data/1")
    err = refused(patch(data, (at + 6, "H", 1)), "encrypted")
    assert (err.member, err.offset) == ("archive/data/1", at)


def test_compressed_record_is_refused():
    err = refused(torch_like(compress=("data/0",)), r"compressed \(method 8\).*stored")
    assert err.member == "archive/data/0"


def test_multi_disk_archive_is_refused():
    data = torch_like()
    err = refused(patch(data, (end_record(data) + 4, "H", 1)), "multi-disk")
    assert err.offset == end_record(data)


def test_entry_on_another_disk_is_refused():
    data = torch_like()
    at = central(data, "archive/version")
    err = refused(patch(data, (at + 34, "H", 2)), "multi-disk")
    assert err.offset == at


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("/archive/evil", "absolute"),
        ("C:/archive/evil", "absolute"),
        ("archive/../evil", r"'\.\.' component"),
        ("archive/data\\1x", "backslash"),
        ("archive//evil", "empty"),
        ("archive/./evil", "empty or '.'"),
        ("archive/dir/", "directory entry"),
    ],
)
def test_unsafe_record_names_are_refused(name, problem):
    stream = io.BytesIO()
    with zipfile.ZipFile(stream, "w") as writer:
        for full, data in _entries():
            writer.writestr(full, data)
        writer.writestr(zipfile.ZipInfo(name), b"x")
    data = stream.getvalue()
    err = refused(data, problem)
    assert (err.member, err.offset) == (name, central(data, name))


def test_nul_in_a_record_name_is_refused():
    data = rename(torch_like({"data/2x": b"x"}), "archive/data/2x", b"archive/data/2\x00")
    err = refused(data, "NUL")
    assert err.member == "archive/data/2\x00"


def test_invalid_utf8_name_is_refused():
    data = torch_like({"extra/\u00e9": b"x"})  # zipfile sets flag bit 11 for it
    data = data.replace("\u00e9".encode(), b"\xff\xfe")
    err = refused(data, "not valid UTF-8")
    assert err.offset == central(data, b"archive/extra/\xff\xfe")


def test_duplicate_names_are_refused():
    stream = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(stream, "w") as writer:
        warnings.simplefilter("ignore", UserWarning)
        for full, content in [*_entries(), ("archive/data/0", b"other")]:
            writer.writestr(full, content)
    data = stream.getvalue()
    second = data.rfind(b"PK\x01\x02", 0, end_record(data))
    err = refused(data, "duplicate record name 'archive/data/0'")
    assert (err.member, err.offset) == ("archive/data/0", second)


def test_names_equal_but_for_letter_case_are_refused():
    # torch (miniz) finds records ignoring case, and would load whichever of
    # the two comes first: safeload must not scan one while torch loads the other.
    data = torch_like({"DATA.PKL": b"other"})
    err = refused(data, "'archive/data.pkl' and 'archive/DATA.PKL' are the same name to torch")
    assert (err.member, err.offset) == ("archive/DATA.PKL", central(data, "archive/DATA.PKL"))


def test_same_name_bytes_in_two_encodings_are_refused():
    data = torch_like({"extra/\u00e9": b"x", "extra/XX": b"y"})  # the first is UTF-8 flagged
    data = rename(data, "archive/extra/XX", "archive/extra/\u00e9".encode())  # cp437 now
    refused(data, "same name to torch")


def test_capitals_alone_are_fine():
    archive = open_bytes(torch_like(prefix="MyModel"))
    assert archive.prefix == "MyModel"


@pytest.mark.parametrize("name", ["BYTEORDER", "Data.pkl", "DATA/0", ".Data/version"])
def test_torch_record_names_in_other_letter_case_are_refused(name):
    # torch would read "archive/BYTEORDER" as its byteorder record.
    data = torch_like({name.lower(): None, name: b"big"})
    err = refused(data, f"is torch's '{name.lower()}' but for letter case")
    assert (err.member, err.offset) == (f"archive/{name}", local(data, f"archive/{name}"))


def test_two_top_folders_are_refused():
    stream = io.BytesIO()
    with zipfile.ZipFile(stream, "w") as writer:
        for full, content in [*_entries(), ("other/data/9", b"x")]:
            writer.writestr(full, content)
    data = stream.getvalue()
    err = refused(data, "one top folder.*'archive' and 'other'")
    assert (err.member, err.offset) == ("other/data/9", central(data, "other/data/9"))


def test_records_at_the_root_are_not_a_torch_checkpoint():
    data = torch_like(prefix="")
    err = refused(data, "not a torch checkpoint: records must live in one top folder")
    assert err.member == "data.pkl"


def test_symlink_entry_is_refused():
    stream = io.BytesIO()
    with zipfile.ZipFile(stream, "w") as writer:
        for full, content in _entries():
            writer.writestr(full, content)
        link = zipfile.ZipInfo("archive/data/9")
        link.create_system = 3
        link.external_attr = 0o120777 << 16
        writer.writestr(link, b"/etc/passwd")
    data = stream.getvalue()
    err = refused(data, "symbolic link")
    assert (err.member, err.offset) == ("archive/data/9", central(data, "archive/data/9"))


def test_junk_before_the_archive_is_refused():
    data = torch_like()
    err = refused(b"#!/bin/sh\nexit 0\n" + data, "added before or inside the archive")
    assert err.offset == end_record(data) + 17


def test_junk_before_the_first_record_with_adjusted_offsets_is_refused():
    data = _write_zip(_entries(), junk=b"GIF89a" + bytes(100))
    with zipfile.ZipFile(io.BytesIO(data)) as oracle:  # zipfile accepts the polyglot
        assert oracle.read("archive/data.pkl") == PICKLE
    err = refused(data, r"106 bytes come before the first zip record")
    assert err.offset == 0


def test_trailing_bytes_after_the_end_record_are_refused():
    data = torch_like()
    err = refused(data + b"<html>", "bytes follow the end of the zip archive")
    assert err.offset == end_record(data)


def _with_comment(comment: bytes) -> bytes:
    stream = io.BytesIO()
    with zipfile.ZipFile(stream, "w") as writer:
        for full, content in _entries():
            writer.writestr(full, content)
        writer.comment = comment
    return stream.getvalue()


def test_a_signature_inside_the_comment_is_not_the_end_record():
    data = _with_comment(b"PK\x05\x06" + bytes(100))
    assert set(open_bytes(data).records) == set(RECORDS)


def test_end_record_is_searched_in_the_last_65557_bytes_only():
    data = _with_comment(bytes(65535))  # the longest comment: still found
    assert set(open_bytes(data).records) == set(RECORDS)
    err = refused(data + b"x", "no zip end-of-central-directory record")
    assert err.offset == len(data) + 1 - 65557


@pytest.mark.parametrize("cut", [1, 10, 21, 60])
def test_truncated_archive_is_refused(cut):
    refused(torch_like()[:-cut], "end-of-central-directory|follow the end")


def test_too_short_or_not_a_zip_is_refused():
    refused(b"PK\x03\x04", "too short")
    refused(bytes(200), "no zip end-of-central-directory record")


def test_central_directory_outside_the_file_is_refused():
    data = torch_like()
    end = end_record(data)
    refused(patch(data, (end + 16, "I", 10**9)), "central directory")


def test_huge_entry_count_with_a_small_directory_is_refused_before_allocating():
    data = torch_like()
    end = end_record(data)
    err = refused(patch(data, (end + 8, "H", 0xFFFE), (end + 10, "H", 0xFFFE)),
                  "65534 entries, more than a")
    assert err.offset == end
    data = _write_zip(_entries(), zip64=True)
    end64 = data.rfind(b"PK\x06\x06")
    huge = 2**62
    refused(patch(data, (end64 + 24, "Q", huge), (end64 + 32, "Q", huge)),
            f"{huge} entries, more than a")


def test_entry_count_is_limited():
    err = refused(torch_like(), "number of archive records", error=LimitError,
                  limits=Limits(max_records=3))
    assert "limit of 3" in str(err)


def test_fewer_declared_entries_than_the_directory_holds_is_refused():
    data = torch_like()
    end = end_record(data)
    count = len(RECORDS) - 1
    refused(patch(data, (end + 8, "H", count), (end + 10, "H", count)), "bytes after its")


def test_zip64_end_record_that_disagrees_is_refused():
    data = _write_zip(_entries(), zip64=True)
    refused(patch(data, (end_record(data) + 10, "H", 3)), "zip64 end record disagrees")


def test_zip64_locator_pointing_elsewhere_is_refused():
    data = _write_zip(_entries(), zip64=True)
    locator = data.rfind(b"PK\x06\x07")
    refused(patch(data, (locator + 8, "Q", 0)), "zip64")


def test_unknown_zip_version_is_refused():
    data = torch_like()
    at = central(data, "archive/data/1")
    err = refused(patch(data, (at + 6, "H", 111)), "needs zip version 11.1")
    assert (err.member, err.offset) == ("archive/data/1", at)


def test_bad_central_signature_is_refused():
    data = torch_like()
    at = central(data, "archive/byteorder")
    err = refused(patch(data, (at, "I", 0x02014B51)), "central directory entry")
    assert err.offset == at


# --- refusals: local headers and layout ------------------------------------------------


def test_local_header_signature_must_be_there():
    data = torch_like()
    at = local(data, "archive/data/1")
    err = refused(patch(data, (at, "I", 0)), "no local header")
    assert (err.member, err.offset) == ("archive/data/1", at)


def test_local_name_must_equal_central_name():
    data = torch_like()
    at = local(data, "archive/data/1")
    err = refused(patch(data, (at + 30 + len("archive/data/"), "B", ord("2"))),
                  "names a different record")
    assert (err.member, err.offset) == ("archive/data/1", at)


def test_local_method_must_equal_central_method():
    data = torch_like()
    at = local(data, "archive/data/0")
    err = refused(patch(data, (at + 8, "H", 8)), "method 8")
    assert err.member == "archive/data/0"


@pytest.mark.parametrize(("field", "label"), [(14, "crc"), (18, "compressed"), (22, "size")])
def test_local_sizes_must_agree_with_the_central_directory(field, label):
    data = torch_like()
    at = local(data, "archive/data/0")
    value = struct.unpack_from("<I", data, at + field)[0]
    err = refused(patch(data, (at + field, "I", value ^ 1)), "disagrees with the central")
    assert (err.member, err.offset) == ("archive/data/0", at)


def test_zip64_local_sizes_must_agree_too():
    stream = io.BytesIO()
    with zipfile.ZipFile(stream, "w") as writer:
        for name, content in _entries():
            with writer.open(name, "w", force_zip64=True) as member:
                member.write(content)
    data = stream.getvalue()
    at = local(data, "archive/data/0")
    assert struct.unpack_from("<I", data, at + 22)[0] == 0xFFFFFFFF
    extra = at + 30 + len("archive/data/0")  # tag, length, size, compressed size
    err = refused(patch(data, (extra + 4, "Q", 17)), "disagrees with the central")
    assert (err.member, err.offset) == ("archive/data/0", at)


def test_record_past_the_central_directory_is_refused():
    data = torch_like()
    at = central(data, "archive/data/0")
    err = refused(patch(data, (at + 20, "I", 10**8), (at + 24, "I", 10**8)), "runs past")
    assert err.member == "archive/data/0"


def test_local_header_offset_outside_the_file_is_refused():
    data = torch_like()
    at = central(data, "archive/data/0")
    err = refused(patch(data, (at + 42, "I", len(data) + 100)), "past the records")
    # located at the central entry that names it: an offset inside the file
    assert (err.member, err.offset) == ("archive/data/0", at)
    assert f"at byte {len(data) + 100}" in str(err)


def test_overlapping_records_are_refused():
    data = torch_like()
    grown = len(RECORDS["data/0"]) + 30
    edits = [(central(data, "archive/data/0") + off, "I", grown) for off in (20, 24)]
    edits += [(local(data, "archive/data/0") + off, "I", grown) for off in (18, 22)]
    err = refused(patch(data, *edits), "overlaps the record before it")
    assert err.member == "archive/data/1"


def test_unaccounted_bytes_between_records_are_refused():
    data = torch_like()
    shrunk = len(RECORDS["data/0"]) - 4
    edits = [(central(data, "archive/data/0") + off, "I", shrunk) for off in (20, 24)]
    edits += [(local(data, "archive/data/0") + off, "I", shrunk) for off in (18, 22)]
    refused(patch(data, *edits), "4 unaccounted bytes")


def test_records_listed_out_of_file_order_are_accepted():
    data = _write_zip(_entries())
    # Swap the first two central entries: order in the directory is free.
    start = data.find(b"PK\x01\x02")
    second = data.find(b"PK\x01\x02", start + 1)
    third = data.find(b"PK\x01\x02", second + 1)
    swapped = data[:start] + data[second:third] + data[start:second] + data[third:]
    assert set(open_bytes(swapped).records) == set(RECORDS)


# --- refusals: torch layout ------------------------------------------------------------


def test_archive_without_data_pkl_is_refused():
    err = refused(torch_like({"data.pkl": None}), "no data.pkl")
    assert err.member == "archive/data.pkl"


def test_empty_archive_is_refused():
    stream = io.BytesIO()
    zipfile.ZipFile(stream, "w").close()
    refused(stream.getvalue(), "empty")


@pytest.mark.parametrize("value", [b"middle", b"little\n", b"", b"LITTLE"])
def test_invalid_byteorder_is_refused(value):
    data = torch_like({"byteorder": value})
    err = refused(data, "byteorder record")
    assert err.member == "archive/byteorder"
    assert err.offset == open_bytes(torch_like()).records["byteorder"].offset


@pytest.mark.parametrize("value", [b"abc", b"0", b"48", b""])
def test_invalid_storage_alignment_is_refused(value):
    refused(torch_like({".storage_alignment": value}), r"\.storage_alignment")


@pytest.mark.parametrize(
    ("name", "compress"),
    [("constants.pkl", ()), ("bytecode.pkl", ()), ("code/__torch__.py", ("code/__torch__.py",))],
)
def test_torchscript_archive_is_refused_with_its_own_error(name, compress):
    data = torch_like({name: b"def forward(self): ...\n"}, compress=compress)
    with pytest.raises(TorchScriptArchive) as caught:
        open_bytes(data)
    err = caught.value
    assert isinstance(err, FormatError)
    assert "TorchScript archive" in str(err) and "never runs" in str(err)
    assert err.hint == "load it with torch.jit.load only if you trust its source"
    assert err.member == f"archive/{name}"
    assert err.offset == local(data, f"archive/{name}")


# --- whatever the bytes ----------------------------------------------------------------

_BASES = [
    torch_like(),
    torch_like(descriptors=True),
    _write_zip(_entries(), zip64=True),
]

_mutation = st.tuples(
    st.sampled_from(["flip", "insert", "delete", "set"]),
    st.integers(min_value=0, max_value=1 << 16),
    st.integers(min_value=0, max_value=255),
)


def _mutate(data: bytes, mutations) -> bytes:
    out = bytearray(data)
    for kind, where, value in mutations:
        at = where % (len(out) + 1)
        if kind == "insert":
            out[at:at] = bytes([value])
        elif out and kind == "delete":
            del out[at % len(out)]
        elif out and kind == "flip":
            out[at % len(out)] ^= 1 << (value % 8)
        elif out:
            out[at % len(out)] = value
    return bytes(out)


def _use_everything(archive: TorchZip) -> dict[str, bytes]:
    archive.pickle()
    contents = {}
    for short, record in archive.records.items():
        contents[record.name] = bytes(archive.read(short))
        if short.startswith("data/") and short not in archive.unknown:
            assert bytes(archive.storage(short[5:])) == contents[record.name]
    return contents


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(base=st.sampled_from(_BASES), mutations=st.lists(_mutation, min_size=1, max_size=6))
def test_mutated_archives_fail_only_with_safeload_errors(base, mutations):
    data = _mutate(base, mutations)
    try:
        archive = open_bytes(data)
        contents = _use_everything(archive)
    except (FormatError, LimitError):
        return
    # Accepted: the stdlib must read the very same records (it needs CRCs).
    if not archive.checksums:
        return
    with zipfile.ZipFile(io.BytesIO(data)) as oracle:
        assert {name: oracle.read(name) for name in oracle.namelist()} == contents


# --- real torch.save output ------------------------------------------------------------


def _tensors(torch):
    return {
        "weight": torch.arange(12, dtype=torch.float32).reshape(3, 4),
        "bias": torch.tensor([1.5, -2.0], dtype=torch.float64),
        "mask": torch.tensor([True, False, True]),
        "step": torch.tensor(7, dtype=torch.int64),
    }


def _check_torch_archive(torch, data: bytes, archive: TorchZip, prefix: str) -> None:
    assert archive.prefix == prefix
    assert archive.byteorder == "little"
    assert archive.unknown == []
    with zipfile.ZipFile(io.BytesIO(data)) as oracle:
        names = oracle.namelist()
        assert sorted(r.name for r in archive.records.values()) == sorted(names)
        for short, record in archive.records.items():
            if archive.checksums:  # zipfile insists on CRCs
                assert bytes(archive.read(short)) == oracle.read(record.name)
    storages = {bytes(archive.storage(key[5:])) for key in archive.records
                if key.startswith("data/")}
    for tensor in _tensors(torch).values():
        assert tensor.numpy().tobytes() in storages


@pytest.mark.parametrize("new_zipfile", [True, None])
def test_torch_save_to_bytesio_parses(new_zipfile):
    torch = pytest.importorskip("torch")
    buffer = io.BytesIO()
    kwargs = {} if new_zipfile is None else {"_use_new_zipfile_serialization": True}
    torch.save(_tensors(torch), buffer, **kwargs)
    data = buffer.getvalue()
    archive = open_bytes(data)
    _check_torch_archive(torch, data, archive, "archive")
    if archive.storage_alignment is not None:
        for key, record in archive.records.items():
            if key.startswith("data/"):
                assert record.offset % archive.storage_alignment == 0


def test_torch_save_to_a_file_parses_with_mmap(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "model.pt"
    torch.save(_tensors(torch), path, _use_new_zipfile_serialization=True)
    with Source.open(path, mmap=True) as source:
        archive = open_torch_zip(source)
        assert source.is_mapped
        _check_torch_archive(torch, path.read_bytes(), archive, "model")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torch_save_without_crc32_parses():
    torch = pytest.importorskip("torch")
    if not hasattr(torch.serialization, "set_crc32_options"):
        pytest.skip("torch < 2.6 always writes CRC-32")
    before = torch.serialization.get_crc32_options()
    torch.serialization.set_crc32_options(False)
    try:
        buffer = io.BytesIO()
        torch.save(_tensors(torch), buffer)
    finally:
        torch.serialization.set_crc32_options(before)
    archive = open_bytes(buffer.getvalue())
    assert not archive.checksums
    _check_torch_archive(torch, buffer.getvalue(), archive, "archive")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torch_jit_save_is_a_torchscript_archive():
    torch = pytest.importorskip("torch")
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), buffer)
    with pytest.raises(TorchScriptArchive):
        open_bytes(buffer.getvalue())


# --- the shared corpus -----------------------------------------------------------------

from corpus_paths import CORPUS_ROOT as _CORPUS  # noqa: E402

_WEIGHT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".tar")


def _corpus_notes() -> dict[str, str]:
    """File name -> note column of SOURCES.md (it says which files are TorchScript)."""
    try:
        text = (_CORPUS / "SOURCES.md").read_text(encoding="utf-8")
    except OSError:
        return {}
    notes = {}
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 5:
            notes[cells[1]] = cells[-1]
    return notes


def _is_torchscript(path: Path, notes: dict[str, str]) -> bool:
    return bool(re.search(r"scripted|\.ptl|torchscript", path.name, re.I)) or (
        "torchscript" in notes.get(path.name, "").lower()
    )


def _corpus_files(folder: str) -> list[Path]:
    if not (_CORPUS / folder).is_dir():
        pytest.skip(f"no corpus at {_CORPUS} (set SAFELOAD_CORPUS)")
    return sorted(p for p in (_CORPUS / folder).iterdir() if p.is_file())


def test_corpus_benign_zip_checkpoints_open_or_are_torchscript():
    notes = _corpus_notes()
    files = [
        p for p in _corpus_files("benign")
        if p.name.endswith(_WEIGHT_SUFFIXES) and p.read_bytes()[:4] == b"PK\x03\x04"
    ]
    if not files:
        pytest.skip("no zip checkpoints in the corpus")
    opened = scripted = 0
    for path in files:
        data = path.read_bytes()
        if _is_torchscript(path, notes):
            with pytest.raises(TorchScriptArchive):
                open_torch_zip(Source(data, path.name))
            scripted += 1
            continue
        archive = open_torch_zip(Source(data, path.name))
        # Benign files may be read with zipfile: bytes only, never unpickled.
        with zipfile.ZipFile(io.BytesIO(data)) as oracle:
            assert _use_everything(archive) == {n: oracle.read(n) for n in oracle.namelist()}
        opened += 1
    assert opened and scripted


def test_corpus_picklescan_malicious_zips_are_refused():
    files = [p for p in _corpus_files("malicious") if p.name.startswith("picklescan_malicious1")
             and p.suffix == ".zip"]
    if not files:
        pytest.skip("no picklescan_malicious1*.zip in the corpus")
    for path in files:
        with pytest.raises(FormatError) as caught:  # the container stage only: no pickle
            open_torch_zip(Source(path.read_bytes(), path.name))
        assert caught.value.file == path.name
