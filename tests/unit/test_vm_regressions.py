"""Regression tests for the VM and allowlist bugs the security work found.

Each test pins one fixed bug with the smallest input that showed it; the
comment says what the input did before the fix. The inputs are written opcode
by opcode; nothing here unpickles with pickle or torch.
"""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import textwrap
import zipfile

import pytest

import safeload
from safeload.allowlist import DEFAULT_POLICY
from safeload.rebuild import Builder
from safeload.unpickler import Unpickler


def _zip(pickle_bytes: bytes, storages: dict[str, bytes] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", pickle_bytes)
        archive.writestr("archive/byteorder", b"little")
        for key, raw in (storages or {}).items():
            archive.writestr(f"archive/data/{key}", raw)
    return buffer.getvalue()


def _binunicode(text: str) -> bytes:
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


_PID = (b"(" + _binunicode("storage") + b"ctorch\nFloatStorage\n" + _binunicode("0")
        + _binunicode("cpu") + b"K\x04tQ")
_STORAGE = {"0": struct.pack("<4f", 1, 2, 3, 4)}


def _refusal(data: bytes, **kwargs) -> safeload.SafeloadError:
    with pytest.raises(safeload.SafeloadError) as info:
        safeload.load(data, **kwargs)
    return info.value


def test_deep_tuple_given_to_rebuild_from_type_is_refused_not_a_segfault():
    # _rebuild_from_type_v2 tested ``func in a set``: hashing a 10**6-deep
    # tuple recursed in C until the interpreter crashed (SIGSEGV).
    code = textwrap.dedent("""
        import safeload
        deep = b"N" + b"\\x85" * 1_000_000
        data = (b"\\x80\\x02ctorch._tensor\\n_rebuild_from_type_v2\\n(" + deep
                + b"N)Nt" + b"R.")
        try:
            safeload.load(data)
        except safeload.FormatError as err:
            print(err.reason)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-500:]
    assert "must wrap a tensor rebuild function" in proc.stdout


def test_refusal_message_does_not_repr_a_shared_structure():
    # storage_ref_from_pid formatted the bad value with {x!r:.40}: the full
    # repr of a list holding one list 30 000 times (via the memo) is 2.7 GB;
    # a 120 kB file took 30 s and 2 GB before the message was cut to 40 chars.
    inner = b"](" + b"K\x00" * 3_000 + b"eq\x00"
    outer = b"](" + b"h\x00" * 3_000 + b"e"
    data = b"\x80\x02" + inner + b"0(" + outer + b"NNNNtQ."
    err = _refusal(data)
    assert isinstance(err, safeload.FormatError)
    assert "persistent id kind must be 'storage', got <list>" in err.reason


@pytest.mark.parametrize("slot", ["offset", "size"])
def test_huge_int_sizes_are_refused_before_any_arithmetic(slot):
    # A dimension of 2**524288 (a 64 kB LONG4) was accepted; the product of 64
    # of them took a minute. Sizes, strides and offsets are int64 in torch.
    huge = b"\x8b" + struct.pack("<i", 9) + (2**64).to_bytes(9, "little")
    size = b"(" + huge * 64 + b"t" if slot == "size" else b"K\x04\x85"
    offset = huge if slot == "offset" else b"K\x00"
    stride = b"(" + b"K\x01" * 64 + b"t" if slot == "size" else b"K\x01\x85"
    body = (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n(" + _PID + offset + size + stride
            + b"\x89}tR.")
    err = _refusal(_zip(body, _STORAGE))
    assert isinstance(err, safeload.FormatError)
    assert "int64" in err.reason


def test_tuple_keys_sharing_a_big_tuple_are_paid_from_the_copy_budget():
    # Each key (i, BIG) with BIG a 9 990-part tuple from the memo costs 8 bytes
    # of pickle and a walk plus a hash of 10 000 parts: 110 kB took 23 s.
    big = b"(" + b"K\x00" * 9_990 + b"tq\x00" + b"0"
    keys = b"".join(b"J" + struct.pack("<i", i) + b"h\x00\x86N" for i in range(2_000))
    err = _refusal(b"\x80\x02" + big + b"}(" + keys + b"u.")
    assert isinstance(err, safeload.LimitError)
    assert "copied" in err.reason


def test_byteswapped_array_states_are_paid_from_the_copy_budget():
    # numpy copies the bytes of a byteswapped (or small, or unaligned) array
    # state; one bytes value shared by 1 000 BUILDs made 1 GB from 1 MB.
    n = 65_536
    raw = b"B" + struct.pack("<I", n) + b"\0" * n + b"q\x03"
    dtype = (b"cnumpy\ndtype\n(X\x02\x00\x00\x00f4\x89\x88tR(K\x03X\x01\x00\x00\x00>NNN"
             b"J\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tbq\x02")
    state = b"(K\x01M" + struct.pack("<H", n // 4) + b"\x85h\x02\x89h\x03tq\x04"
    rec = b"cnumpy.core.multiarray\n_reconstruct\nq\x00(cnumpy\nndarray\nK\x00\x85C\x01btq\x01"
    body = (b"\x80\x03" + raw + b"0" + dtype + b"0" + state + b"0" + rec + b"0]("
            + b"h\x00h\x01Rh\x04b" * 200 + b"e.")
    err = _refusal(body)
    assert isinstance(err, safeload.LimitError)


def test_ordered_dict_copies_are_charged_by_their_memory():
    # OrderedDict(pairs) copies n entries of ~100 bytes each; charged one unit
    # per entry, an 820 kB file made 1.5 GB of copies before the budget ran out.
    n, k = 20_000, 50
    pairs = b"](" + b"".join(b"J" + struct.pack("<i", i) + b"N\x86" for i in range(n)) + \
        b"eq\x00" + b"0"
    call = b"ccollections\nOrderedDict\nq\x01" + b"0"
    body = b"\x80\x02" + pairs + call + b"](" + b"h\x01h\x00\x85R" * k + b"e."
    err = _refusal(body)
    assert isinstance(err, safeload.LimitError)


def test_small_int_keys_need_no_collision_bookkeeping():
    # check_key kept a (container, hash) entry for every non-str key (~150
    # bytes each): with copies through the memo that was most of a 2 GB
    # memory bomb. Ints below the hash modulus cannot collide.
    n = 50_000
    body = b"\x80\x02}(" + b"".join(b"J" + struct.pack("<i", i) + b"N" for i in range(n)) + \
        b"u."
    vm = Unpickler(body, policy=DEFAULT_POLICY, builder=Builder())
    assert len(vm.load()) == n
    assert len(vm._key_hashes) == 0
    colliding = b"\x80\x02}(" + b"".join(
        b"\x8a\x09" + (1 + i * (2**61 - 1)).to_bytes(9, "little") + b"N" for i in range(1, 18)
    ) + b"u."
    assert isinstance(_refusal(colliding), safeload.LimitError)


def test_int_opcode_is_bounded_like_long():
    # INT reads int(text, 0): hex of any length made one huge int, past
    # Limits.max_int_bytes, which only LONG / LONG1 / LONG4 checked.
    err = _refusal(b"I0x" + b"f" * 140_000 + b"\n.")
    assert isinstance(err, safeload.LimitError)
    assert safeload.load(b"I0x" + b"f" * 100 + b"\n.") == int("f" * 100, 16)


def test_empty_tensor_numpy_cannot_describe_is_refused_by_loader_and_scanner(tmp_path):
    # shape (0, 2**62): the loader failed inside numpy ("array is too big") while
    # the scanner, which builds no array, called the file clean. Both now apply
    # numpy's rule (the product of the non-zero sizes must be addressable).
    size = b"(K\x00\x8a\x08" + (2**62).to_bytes(8, "little") + b"t"
    body = (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n(" + _PID + b"K\x00" + size
            + b"(K\x01K\x01t\x89}tR.")
    path = tmp_path / "empty.pt"
    path.write_bytes(_zip(body, _STORAGE))
    assert isinstance(_refusal(path.read_bytes()), safeload.LimitError)
    from safeload.scan import scan_file

    assert scan_file(path).verdict != "clean"
    fits = body.replace((2**62).to_bytes(8, "little"), (2**61 - 1).to_bytes(8, "little"))
    assert safeload.load(_zip(fits, _STORAGE)).shape == (0, 2**61 - 1)


@pytest.mark.parametrize("name", ["\ud800", "\x1b[2K\rclean", "os\x00", "a\nb"])
def test_global_names_that_are_not_printable_text_are_refused(name):
    # A STACK_GLOBAL name is any str: lone surrogates made printing the error
    # (and `safeload scan`'s report) fail with UnicodeEncodeError, and control
    # characters reached terminals and CI logs as they were.
    raw = name.encode("utf-8", "surrogatepass")
    data = b"\x80\x04\x8c\x02os\x8c" + bytes([len(raw)]) + raw + b"\x93."
    err = _refusal(data)
    assert isinstance(err, safeload.FormatError)
    text = str(err)
    text.encode("utf-8")
    assert text.isprintable()


def test_long_global_names_are_cut_in_messages():
    name = "a" * 1_000_000
    data = b"\x80\x04\x8c\x02os\x8d" + len(name).to_bytes(8, "little") + name.encode() + b"\x93."
    err = _refusal(data)
    assert isinstance(err, safeload.UnsafeGlobalError)
    assert len(str(err)) < 2_000
