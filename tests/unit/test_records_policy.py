"""The records policy: objects of unknown classes come back as inert Records.

Covers the semantics (what becomes a Record, what stays refused) on objects pickled
by Python in every protocol, hand-made pickles for the opcodes Python 3 no longer
writes (INST, OBJ), the refusals, Record / to_plain, per-call policy, the
``[tool.safeload]`` configuration, and the shared corpus: Lightning, HF Trainer and
argparse checkpoints load with records and match torch.load; attack samples stay
refused. Files under malicious/ are never opened with pickle or torch.load.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import enum
import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from corpus_paths import CORPUS, needs_corpus

import safeload
from safeload import FormatError, Policy, SafeloadError, UnsafeGlobalError
from safeload.allowlist import DEFAULT_POLICY, RecordTypes
from safeload.config import ConfigError, load_config, snippet_for
from safeload.rebuild import Builder
from safeload.records import GlobalRef, Record, to_plain
from safeload.unpickler import Opaque, Unpickler

MOD = __name__
PROTOCOLS = range(6)


# --- objects, as a user's code defines them -------------------------------------------


@dataclasses.dataclass
class Config:
    lr: float = 0.1
    layers: list = dataclasses.field(default_factory=lambda: [64, 64])


class Plain:
    def __init__(self):
        self.a = 1
        self.b = "two"


class Slotted:
    __slots__ = ("x", "y")

    def __init__(self):
        self.x = 1
        self.y = [2, 3]


class SlottedWithState:
    __slots__ = ("x", "y")

    def __init__(self):
        self.x = 1
        self.y = [2, 3]

    def __getstate__(self):
        return {"x": self.x, "y": self.y}

    def __setstate__(self, state):
        self.x, self.y = state["x"], state["y"]


class Color(enum.Enum):
    RED = 1
    GREEN = "g"


class AttributeDict(dict):  # Lightning's hparams type, in miniature
    pass


class Layers(list):
    pass


def _made(case: str):
    return {
        "namespace": argparse.Namespace(lr=0.1, name="run"),
        "dataclass": Config(),
        "plain": Plain(),
        "slots+getstate": SlottedWithState(),
        "dict-subclass": AttributeDict(a=1, b=[2]),
        "list-subclass": Layers([1, 2, 3]),
    }[case]


# The Record each object becomes, whatever the protocol.
EXPECTED = {
    "namespace": Record("argparse", "Namespace", state={"lr": 0.1, "name": "run"}),
    "dataclass": Record(MOD, "Config", state={"lr": 0.1, "layers": [64, 64]}),
    "plain": Record(MOD, "Plain", state={"a": 1, "b": "two"}),
    "slots+getstate": Record(MOD, "SlottedWithState", state={"x": 1, "y": [2, 3]}),
    "dict-subclass": Record(MOD, "AttributeDict", items={"a": 1, "b": [2]}),
    "list-subclass": Record(MOD, "Layers", listitems=[1, 2, 3]),
}


def _same_record(got: object, want: Record) -> None:
    assert type(got) is Record, got
    assert (got.module, got.name) == (want.module, want.name)
    assert got.to_dict() == want.to_dict()
    assert (got.state, got.items, got.listitems) == (want.state, want.items, want.listitems)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_plain_objects_come_back_as_records_in_every_protocol(case, protocol):
    data = pickle.dumps({"value": _made(case), "n": 3}, protocol=protocol)
    got = safeload.load(data, records=True)
    assert got["n"] == 3
    _same_record(got["value"], EXPECTED[case])


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_without_records_the_refusal_hint_suggests_them(case, protocol):
    data = pickle.dumps({"value": _made(case)}, protocol=protocol)
    with pytest.raises(UnsafeGlobalError) as info:
        safeload.load(data)
    assert "records=True" in info.value.hint


@pytest.mark.parametrize("protocol", range(2, 6))
def test_slots_without_getstate_keep_their_slot_state(protocol):
    got = safeload.load(pickle.dumps(Slotted(), protocol=protocol), records=True)
    assert got.state == (None, {"x": 1, "y": [2, 3]})
    assert got.attributes == {"x": 1, "y": [2, 3]}
    assert got.to_dict() == {"__class__": f"{MOD}.Slotted", "x": 1, "y": [2, 3]}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_enum_is_a_call_refused_unless_named(protocol):
    data = pickle.dumps([Color.RED, Color.GREEN], protocol=protocol)
    with pytest.raises(UnsafeGlobalError) as info:
        safeload.load(data, records=True)
    assert info.value.global_name == f"{MOD}.Color"
    assert info.value.location.opcode == "REDUCE"
    assert f"records=['{MOD}.Color']" in info.value.hint
    for named in ([f"{MOD}.Color"], [f"{MOD.rpartition('.')[0] or MOD}.*"]):
        red, green = safeload.load(data, records=named)
        assert (red.global_name, red.args, green.args) == (f"{MOD}.Color", (1,), ("g",))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_defaultdict_factory_is_a_callable_refused_unless_named(protocol):
    data = pickle.dumps(collections.defaultdict(list, {"a": [1]}), protocol=protocol)
    with pytest.raises(UnsafeGlobalError, match="collections.defaultdict"):
        safeload.load(data, records=True)
    got = safeload.load(data, records=["collections.defaultdict"])
    assert got.global_name == "collections.defaultdict"
    assert got.args == (GlobalRef("builtins", "list"),)
    assert got.items == {"a": [1]}


def test_package_patterns_admit_classes_not_functions():
    # how an advisory PoC calls a runnable function of an innocent-looking package
    call = _global("pkg.tools.__main__", "run_profile") + b"(S'code'\n}tR."
    with pytest.raises(UnsafeGlobalError, match="REDUCE calls 'pkg.tools.__main__.run_profile'"):
        safeload.load(call, records=["pkg.*"])
    assert safeload.load(call, records=["pkg.tools.__main__.run_profile"]).args == ("code", {})
    enum_call = _global("pkg.types", "Mode") + b"(S'fast'\ntR."
    assert safeload.load(enum_call, records=["pkg.*"]).args == ("fast",)


def _omegaconf_like(monkeypatch):
    """Classes shaped like omegaconf's (DictConfig keeps its data in __getstate__:
    ``_content`` of value nodes, ``_metadata`` dataclasses naming typing.Any and
    dict), in modules named like omegaconf's, so pickle writes the same globals."""
    import types
    import typing

    @dataclasses.dataclass
    class ContainerMetadata:
        ref_type: object = typing.Any
        object_type: object = dict
        optional: bool = True
        key: object = None
        flags: dict = dataclasses.field(default_factory=dict)

    class AnyNode:
        def __init__(self, value, parent=None):
            self._val, self._parent = value, parent
            self._metadata = ContainerMetadata(object_type=None)

    class DictConfig:
        def __init__(self, content):
            self._metadata = ContainerMetadata()
            self._parent = None
            self._content = {k: AnyNode(v, self) for k, v in content.items()}

        def __getstate__(self):
            return {"_metadata": self._metadata, "_parent": self._parent,
                    "_content": self._content, "_flags_cache": None}

    package = types.ModuleType("omegaconf")
    monkeypatch.setitem(sys.modules, "omegaconf", package)
    for cls, module in ((ContainerMetadata, "omegaconf.base"), (AnyNode, "omegaconf.nodes"),
                        (DictConfig, "omegaconf.dictconfig")):
        cls.__module__, cls.__qualname__ = module, cls.__name__
        fake = types.ModuleType(module)
        setattr(fake, cls.__name__, cls)
        setattr(package, module.rpartition(".")[2], fake)
        monkeypatch.setitem(sys.modules, module, fake)
    return DictConfig


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_omegaconf_style_config_comes_back_as_records(monkeypatch, protocol):
    DictConfig = _omegaconf_like(monkeypatch)
    data = pickle.dumps({"hyper_parameters": DictConfig({"lr": 0.1, "layers": [64]})},
                        protocol=protocol)
    monkeypatch.undo()  # the classes are gone, as on a machine without omegaconf
    with pytest.raises(UnsafeGlobalError) as info:
        safeload.load(data)
    assert "records=True" in info.value.hint
    cfg = safeload.load(data, records=True)["hyper_parameters"]
    assert cfg.global_name == "omegaconf.dictconfig.DictConfig"
    content = cfg.attributes["_content"]
    assert {k: node.attributes["_val"] for k, node in content.items()} == {
        "lr": 0.1, "layers": [64]}
    assert content["lr"].attributes["_parent"] is cfg  # the cycle is kept, not followed
    assert cfg.attributes["_metadata"].attributes["ref_type"] == GlobalRef("typing", "Any")
    assert cfg.attributes["_metadata"].attributes["object_type"] == GlobalRef("builtins", "dict")
    plain = to_plain(cfg)
    assert plain["_content"]["lr"]["_val"] == 0.1 and plain["_content"]["lr"]["_parent"] is plain


def test_real_omegaconf_config_comes_back_as_records():
    omegaconf = pytest.importorskip("omegaconf")
    data = pickle.dumps({"cfg": omegaconf.OmegaConf.create({"lr": 0.1})}, protocol=4)
    cfg = safeload.load(data, records=["omegaconf.*"])["cfg"]
    assert cfg.global_name == "omegaconf.dictconfig.DictConfig"
    assert to_plain(cfg)["_content"]["lr"]["_val"] == 0.1


def test_classes_and_functions_that_are_only_named_are_global_refs():
    data = pickle.dumps({Plain: "as a key", "fn": collections.namedtuple}, protocol=4)
    got = safeload.load(data, records=True)
    assert got == {GlobalRef(MOD, "Plain"): "as a key",
                   "fn": GlobalRef("collections", "namedtuple")}
    assert str(got["fn"]) == "collections.namedtuple"


def test_records_and_global_refs_are_inert():
    rec = safeload.load(pickle.dumps(argparse.Namespace(lr=0.1), protocol=2), records=True)
    assert type(rec) is Record
    assert not hasattr(rec, "lr")  # no attribute magic that could pass for the class
    assert not hasattr(rec, "__dict__")
    with pytest.raises(AttributeError):
        rec.lr  # noqa: B018
    assert not callable(rec) and not callable(GlobalRef("os", "system"))


# --- hand-made pickles: Python 2 opcodes, malformed reconstructions ------------------------


def _global(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()


def test_inst_and_obj_without_arguments_are_records():
    inst = b"(i" + f"{MOD}\nPlain\n".encode() + b"(dS'a'\nI1\nsb."
    got = safeload.load(inst, records=True)
    assert (got.global_name, got.args, got.state) == (f"{MOD}.Plain", (), {"a": 1})
    obj = b"\x80\x01(" + _global(MOD, "Plain") + b"o}b."
    assert safeload.load(obj, records=True).global_name == f"{MOD}.Plain"


def test_inst_with_arguments_is_a_call():
    inst = b"(I5\ni" + f"{MOD}\nPlain\n".encode() + b"."
    with pytest.raises(UnsafeGlobalError, match="INST calls"):
        safeload.load(inst, records=True)
    got = safeload.load(inst, records=[f"{MOD}.Plain"])
    assert got.args == (5,)


@pytest.mark.parametrize("base, state, message", [
    ((MOD, "Plain"), b"N", "builtin base type"),
    (("builtins", "object"), b"I1\n", "no state"),
    (("builtins", "dict"), b"(l", "a dict value"),
])
def test_reconstructor_takes_only_builtin_bases_with_matching_state(base, state, message):
    data = (_global("copy_reg", "_reconstructor") + b"(" + _global(MOD, "Plain")
            + _global(*base) + state + b"tR.")
    with pytest.raises(FormatError, match=message):
        safeload.load(data, records=True)


def test_reconstructor_of_a_builtin_class_is_refused():
    data = (_global("copy_reg", "_reconstructor") + b"(" + _global("builtins", "int")
            + _global("builtins", "object") + b"NtR.")
    with pytest.raises(UnsafeGlobalError, match="never kept as records"):
        safeload.load(data, records=True)


def test_reconstructor_without_records_is_refused_with_a_records_hint():
    data = pickle.dumps(argparse.Namespace(a=1), protocol=0)
    with pytest.raises(UnsafeGlobalError) as info:
        safeload.load(data)
    assert info.value.global_name == "copyreg._reconstructor"
    assert "records=True" in info.value.hint


def test_newobj_of_builtin_object_is_refused():
    with pytest.raises(UnsafeGlobalError, match="builtins.object"):
        safeload.load(pickle.dumps(object(), protocol=2), records=True)


def test_build_twice_on_a_record_is_refused():
    data = b"\x80\x02" + _global(MOD, "Plain") + b")\x81}b}b."
    with pytest.raises(FormatError, match="second time"):
        safeload.load(data, records=True)


def test_additems_on_a_record_is_refused():
    data = b"\x80\x04" + _global(MOD, "Plain") + b")\x81(K\x01\x90."
    with pytest.raises(FormatError, match="ADDITEMS on a Record"):
        safeload.load(data, records=True)


def test_calling_a_record_is_refused():
    data = b"\x80\x02" + _global(MOD, "Plain") + b")\x81)R."
    with pytest.raises(FormatError, match="REDUCE on a Record"):
        safeload.load(data, records=True)


@pytest.mark.parametrize("module, name", [
    ("os", "system"), ("posix", "system"), ("builtins", "eval"), ("subprocess", "Popen"),
    ("builtins", "getattr"), ("torch.serialization", "load"), ("copyreg", "__newobj__"),
])
def test_dangerous_globals_are_refused_under_records(module, name):
    data = _global(module, name) + b"(S'x'\ntR."
    with pytest.raises(UnsafeGlobalError) as info:
        safeload.load(data, records=True)
    assert "do not load it" in info.value.hint
    with pytest.raises(ValueError, match="never be a record type"):
        Policy(records=[f"{module}.{name}"])


@pytest.mark.parametrize("name", ["os.*", "builtins.int", "builtins.*", "*", "Color", "a..b",
                                  "pkg.Name.*x"])
def test_record_type_names_that_no_policy_admits(name):
    with pytest.raises(ValueError):
        RecordTypes([name])


def test_record_type_names_must_be_a_list():
    with pytest.raises(TypeError):
        Policy(records="argparse.Namespace")


# --- Record, to_plain -------------------------------------------------------------------


def test_record_repr_is_readable_and_cycle_safe():
    rec = Record("argparse", "Namespace", state={"lr": 0.1})
    assert repr(rec) == "Record('argparse.Namespace', state={'lr': 0.1})"
    rec.state["self"] = rec
    assert repr(rec) == "Record('argparse.Namespace', state={'lr': 0.1, 'self': ...})"


def test_to_dict_keeps_what_is_not_an_attribute_under_reserved_keys():
    rec = Record("m", "C", args=(1,), state=[1, 2], kwargs={"k": 2}, items={"i": 3},
                 listitems=[4])
    assert rec.to_dict() == {"__class__": "m.C", "__state__": [1, 2], "__args__": (1,),
                             "__kwargs__": {"k": 2}, "__items__": {"i": 3},
                             "__listitems__": [4]}
    clash = Record("m", "C", state={"__class__": "x", "a": 1})  # an attribute named __class__
    assert clash.to_dict() == {"__class__": "m.C", "__state__": {"__class__": "x", "a": 1}}


def test_to_plain_is_recursive_shared_and_cycle_safe():
    inner = Record("argparse", "Namespace", state={"opt": GlobalRef("torch.optim", "Adam")})
    shared = [1, 2]
    outer = Record("m", "Model", state={"hp": inner, "a": shared, "b": shared,
                                        "t": (shared, GlobalRef("m", "F"))})
    outer.state["me"] = outer
    plain = to_plain({GlobalRef("m", "Key"): outer, "s": {GlobalRef("m", "X")},
                      "f": frozenset({(GlobalRef("m", "Y"), 1)})})
    model = plain["m.Key"]
    assert model["__class__"] == "m.Model"
    assert model["hp"] == {"__class__": "argparse.Namespace", "opt": "torch.optim.Adam"}
    assert model["a"] is model["b"] and model["t"][0] is model["a"]
    assert model["t"][1] == "m.F"
    assert model["me"] is model
    assert plain["s"] == {"m.X"} and plain["f"] == frozenset({("m.Y", 1)})


def test_to_plain_handles_any_depth():
    deep = leaf = []
    for _ in range(100_000):
        leaf.append([])
        leaf = leaf[0]
    plain = to_plain(Record("m", "C", state={"deep": deep}))
    depth, node = 0, plain["deep"]
    while node:
        node, depth = node[0], depth + 1
    assert depth == 100_000


def test_to_plain_of_a_lightning_style_checkpoint_is_json():
    data = pickle.dumps({"hyper_parameters": {"args": argparse.Namespace(lr=0.1, dims=[1])},
                         "callbacks": {Plain: {"best": 0.5}}}, protocol=2)
    plain = to_plain(safeload.load(data, records=True))
    assert json.loads(json.dumps(plain)) == {
        "hyper_parameters": {"args": {"__class__": "argparse.Namespace", "lr": 0.1,
                                      "dims": [1]}},
        "callbacks": {f"{MOD}.Plain": {"best": 0.5}},
    }


# --- the policy is per call ---------------------------------------------------------------


def test_default_policy_is_unchanged_and_records_are_per_call():
    assert DEFAULT_POLICY.records is None and Policy().records is None
    data = pickle.dumps(argparse.Namespace(a=1), protocol=2)
    assert type(safeload.load(data, records=True)) is Record
    with pytest.raises(UnsafeGlobalError):  # no state left behind by the previous call
        safeload.load(data)
    assert type(safeload.load(data, policy=Policy(records=True))) is Record
    with pytest.raises(UnsafeGlobalError):  # records=False turns a policy's records off
        safeload.load(data, policy=Policy(records=True), records=False)


def test_policy_combines_allow_and_records():
    policy = Policy(allow=[Plain], records=[f"{MOD}.Color"])
    data = pickle.dumps([Plain(), Color.RED, argparse.Namespace(a=1)], protocol=4)
    plain, color, ns = safeload.load(data, policy=policy)
    assert type(plain) is Plain and plain.b == "two"  # allowed: the real class
    assert color.args == (1,) and ns.global_name == "argparse.Namespace"
    merged = Policy(records=["a.B"]).with_records(["c.*"]).allowing([Config])
    assert merged.records.names() == ["a.B", "c.*"] and f"{MOD}.Config" in merged.trusted


def test_allowed_class_pickled_with_protocol_0_is_built_for_real():
    got = safeload.load(pickle.dumps(Plain(), protocol=0), allow=[Plain], records=True)
    assert type(got) is Plain and (got.a, got.b) == (1, "two")


def test_analysis_mode_reports_a_refused_call_and_keeps_the_records():
    data = pickle.dumps({"color": Color.RED, "ns": argparse.Namespace(a=1)}, protocol=4)
    findings: list[SafeloadError] = []
    value = Unpickler(data, policy=Policy(records=True), builder=Builder(),
                      on_finding=findings.append).load()
    assert [f.global_name for f in findings] == [f"{MOD}.Color"]
    assert findings[0].location.opcode == "REDUCE"
    assert isinstance(value["color"], Opaque) and type(value["ns"]) is Record


def test_nothing_is_imported_to_make_a_record(tmp_path):
    # A module with an import side effect sits on sys.path; records must not import it.
    (tmp_path / "canary_module.py").write_text(
        "open(__file__ + '.imported', 'w').close()\nclass Thing: pass\n")
    protocol2 = (b"\x80\x02" + _global("canary_module", "Thing")
                 + b")\x81}X\x01\x00\x00\x00aK\x01sb.")
    protocol0 = (_global("copy_reg", "_reconstructor") + b"(" + _global("canary_module", "Thing")
                 + _global("__builtin__", "object") + b"NtR(dS'a'\nI1\nsb.")
    code = textwrap.dedent("""
        import sys, safeload
        sys.path.insert(0, sys.argv[1])
        for data in (bytes.fromhex(sys.argv[2]), bytes.fromhex(sys.argv[3])):
            rec = safeload.load(data, records=True)
            assert rec.global_name == "canary_module.Thing" and rec.attributes == {"a": 1}
        print("canary_module" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path), protocol2.hex(),
                          protocol0.hex()], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
    assert not (tmp_path / "canary_module.py.imported").exists()


# --- [tool.safeload] ------------------------------------------------------------------------


def _project(tmp_path: Path, table: str) -> Path:
    (tmp_path / "pyproject.toml").write_text(f"[project]\nname = 'x'\n\n{table}\n")
    sub = tmp_path / "models" / "deep"
    sub.mkdir(parents=True)
    return sub


def test_config_is_read_from_the_nearest_pyproject_with_the_table(tmp_path):
    sub = _project(tmp_path, '[tool.safeload]\nallow = ["mypkg.Config"]\n'
                             'records = ["transformers.*"]\nfail_on = "dangerous"\n')
    (sub.parent / "pyproject.toml").write_text("[project]\nname = 'inner'\n")  # no table
    config = load_config(sub)
    assert config == {"allow": ["mypkg.Config"], "records": ["transformers.*"],
                      "fail_on": "dangerous", "limits": {},
                      "path": str(tmp_path / "pyproject.toml")}
    from safeload.config import policy_from_config

    assert policy_from_config(config).records.names() == ["transformers.*"]


def test_config_defaults_without_a_table(tmp_path):
    assert load_config(tmp_path) == {"allow": [], "records": False, "fail_on": "unsafe",
                                     "limits": {}, "path": None}


@pytest.mark.parametrize("table, message", [
    ('allow = ["os.system"]', "never allowed"),
    ('allow = "argparse.Namespace"', "list of strings"),
    ('allow = ["Namespace"]', "not 'module.Name'"),
    ('records = ["builtins.eval"]', "never be a record type"),
    ('records = "yes"', "list of strings"),
    ('fail_on = "everything"', "fail_on must be one of"),
    ('alow = []', "unknown key"),
])
def test_config_errors_name_the_file_and_the_problem(tmp_path, table, message):
    sub = _project(tmp_path, f"[tool.safeload]\n{table}\n")
    with pytest.raises(ConfigError, match=message) as info:
        load_config(sub)
    assert str(tmp_path / "pyproject.toml") in str(info.value)


def test_snippet_admits_unknown_names_and_explains_dangerous_ones():
    text = snippet_for(["torch.optim.adam.Adam", "argparse.Namespace", "posix.system",
                        "argparse.Namespace"])
    assert text == ('[tool.safeload]\n'
                    '# never admitted: posix.system (runs commands or touches files)\n'
                    'allow = [\n    "argparse.Namespace",\n    "torch.optim.adam.Adam",\n]\n')
    import tomllib

    assert tomllib.loads(text)["tool"]["safeload"]["allow"] == ["argparse.Namespace",
                                                               "torch.optim.adam.Adam"]
    assert "records = [" in snippet_for(["argparse.Namespace"], key="records")
    assert "builtins.int" not in snippet_for(["builtins.int"], key="records").split("\n", 2)[2]


# --- the shared corpus ------------------------------------------------------------------------



#: benign files that pickle foreign objects -> the records= each needs
RECORD_FILES = {
    "aegnn_last.ckpt": True,  # Lightning: callback classes as dict keys
    "deeponet_burgers.ckpt": True,  # Lightning: argparse.Namespace hparams
    "long-short-lstm_last.ckpt": True,  # Lightning: a function in the hparams
    "max78000_best.pth.tar": True,  # distiller: torch.optim.adam.Adam class
    "herbsek_full_model.pth": ["__main__.cnn"],  # a whole pickled nn.Module
    "hf_trainer_training_args.bin": ["transformers.*", "accelerate.*"],  # enums: calls
    "eyetrack_read_features_last.ckpt": True,  # Lightning, already plain
    "mafat_last.ckpt": True,  # Lightning 0.8, already plain
}
NEEDS_RECORDS = set(RECORD_FILES) - {"eyetrack_read_features_last.ckpt", "mafat_last.ckpt"}


def _corpus_file(name: str) -> Path:
    path = CORPUS / "benign" / name if CORPUS else None
    if path is None or not path.is_file():
        pytest.skip(f"{name} not in the corpus")
    return path


def _key_text(key) -> str:
    if isinstance(key, type):
        return f"{key.__module__}.{key.__qualname__}"
    if type(key) is GlobalRef:
        return key.global_name
    return repr(key)


def _tensors_of(obj, is_tensor, children) -> dict[str, object]:
    found, seen, todo = {}, set(), [("", obj)]
    while todo:
        path, value = todo.pop()
        if is_tensor(value):
            found[path] = value
            continue
        if id(value) in seen:
            continue
        seen.add(id(value))
        todo.extend((f"{path}/{_key_text(k)}", v) for k, v in children(value))
    return found


def _safeload_children(value):
    if isinstance(value, dict):
        return list(value.items())
    if isinstance(value, (list, tuple)):
        return list(enumerate(value))
    if type(value) is Record:
        attrs = value.attributes or {}
        return list(attrs.items()) + list((value.items or {}).items()) + \
            list(enumerate(value.listitems or []))
    return []


def _torch_children(value):
    if isinstance(value, dict):
        return list(value.items())
    if isinstance(value, (list, tuple)):
        return list(enumerate(value))
    import types

    plain_object = not isinstance(value, (type, types.FunctionType, types.BuiltinFunctionType,
                                          types.ModuleType))
    if hasattr(value, "__dict__") and plain_object:  # nn.Module instances too
        return list(vars(value).items())
    return []


@needs_corpus
@pytest.mark.parametrize("name", sorted(RECORD_FILES))
def test_corpus_checkpoint_loads_with_records(name):
    path = _corpus_file(name)
    state = safeload.load(path, records=RECORD_FILES[name])
    tensors = _tensors_of(state, lambda v: isinstance(v, np.ndarray), _safeload_children)
    assert tensors or name == "hf_trainer_training_args.bin"
    json.dumps(to_plain(state), default=lambda x: None)  # to_plain of a real file: plain data


def _stand_ins(name: str, torch, monkeypatch) -> None:
    """Give torch.load the classes these benign files name, where an empty class
    will do: the training script's model class (``__main__.cnn``, an nn.Module),
    Lightning's callback classes (used only as dict keys)."""
    import types

    if name == "herbsek_full_model.pth":
        main = sys.modules["__main__"]
        monkeypatch.setattr(main, "cnn", type("cnn", (torch.nn.Module,), {}), raising=False)
    if name == "aegnn_last.ckpt":
        for module, cls in (("pytorch_lightning.callbacks.early_stopping", "EarlyStopping"),
                            ("pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint")):
            parts = module.split(".")
            for i in range(1, len(parts) + 1):
                monkeypatch.setitem(sys.modules, ".".join(parts[:i]),
                                    sys.modules.get(".".join(parts[:i]))
                                    or types.ModuleType(".".join(parts[:i])))
            stand_in = type(cls, (), {"__module__": module})
            monkeypatch.setattr(sys.modules[module], cls, stand_in, raising=False)


@needs_corpus
@pytest.mark.parametrize("name", sorted(RECORD_FILES))
def test_corpus_checkpoint_with_records_matches_torch_load(name, monkeypatch):
    path = _corpus_file(name)
    state = safeload.load(path, records=RECORD_FILES[name])  # the safeload side never skips
    torch = pytest.importorskip("torch")
    _stand_ins(name, torch, monkeypatch)
    try:
        expected = torch.load(path, weights_only=False, map_location="cpu")
    except Exception as exc:  # the classes' packages are not installed here
        pytest.skip(f"torch.load cannot load it here: {type(exc).__name__}: {exc}")
    want = _tensors_of(expected, lambda v: isinstance(v, torch.Tensor), _torch_children)
    got = _tensors_of(state, lambda v: isinstance(v, np.ndarray), _safeload_children)
    assert set(got) == set(want)
    for key, tensor in want.items():
        array = got[key]
        assert tuple(tensor.shape) == array.shape, key
        raw = tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        assert np.ascontiguousarray(array).reshape(-1).view(np.uint8).tobytes() == raw, key


@needs_corpus
@pytest.mark.parametrize("name", sorted(NEEDS_RECORDS))
def test_corpus_checkpoint_without_records_is_refused_with_a_records_hint(name):
    with pytest.raises(UnsafeGlobalError) as info:
        safeload.load(_corpus_file(name))
    assert "records=True" in info.value.hint


@needs_corpus
def test_enums_in_training_args_need_naming_and_the_hint_says_how():
    path = _corpus_file("hf_trainer_training_args.bin")
    with pytest.raises(UnsafeGlobalError) as info:
        safeload.load(path, records=True)
    assert "records=['transformers.trainer_utils.IntervalStrategy']" in info.value.hint
    args = safeload.load(path, records=["transformers.*", "accelerate.*"])
    assert args.global_name == "transformers.training_args.TrainingArguments"
    assert args.attributes["eval_strategy"].args == ("steps",)
    assert args.attributes["learning_rate"] == 5e-05


def _malicious() -> list[Path]:
    folder = CORPUS / "malicious" if CORPUS else None
    if folder is None or not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file())


@needs_corpus
@pytest.mark.parametrize("path", [pytest.param(p, id=p.name) for p in _malicious()])
def test_malicious_file_is_refused_under_records(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SafeloadError):
        safeload.load(path, records=True)
    with pytest.raises(SafeloadError):
        safeload.load(path, records=["collections.*", "numpy.*", "torch.*"])
    assert list(tmp_path.iterdir()) == []


@needs_corpus
def test_main_references_load_only_when_named():
    """binaryninja's sample holds no call: its payload would live in the loading
    script's own __main__ classes. records=True refuses those names; naming them
    keeps them as inert references."""
    path = CORPUS / "malicious" / "binaryninja_malicious_model_pytorch.pth"
    if not path.is_file():
        pytest.skip("file not in the corpus")
    with pytest.raises(UnsafeGlobalError, match="__main__.MaliciousModel") as info:
        safeload.load(path, records=True)
    assert "records=['__main__.MaliciousModel']" in info.value.hint
    names = ["__main__.MaliciousModel", "__main__.MaliciousLayer"]
    state = safeload.load(path, records=names)
    assert state["model_class"] == GlobalRef("__main__", "MaliciousModel")
    assert state["layer_class"] == GlobalRef("__main__", "MaliciousLayer")
    assert isinstance(state["model_state_dict"]["_malicious_code"], str)  # never run


@needs_corpus
def test_loading_malicious_files_with_records_imports_and_writes_nothing(tmp_path):
    files = _malicious()
    if not files:
        pytest.skip("no malicious files")
    code = textwrap.dedent("""
        import json, sys
        import safeload
        # what safeload's own stages may import on first use: container helpers
        # from the stdlib, ml_dtypes for bfloat16 / float8
        for name in ("zipfile", "tarfile", "zlib", "binascii", "struct", "mmap", "bz2",
                     "lzma", "gzip", "codecs", "ml_dtypes"):
            try:
                __import__(name)
            except ImportError:
                pass
        baseline = set(sys.modules)
        outcomes = {}
        for path in json.loads(sys.argv[1]):
            try:
                safeload.load(path, records=True)
                outcomes[path] = "loaded"
            except safeload.SafeloadError:
                outcomes[path] = "refused"
            except BaseException as exc:
                outcomes[path] = type(exc).__name__
        print(json.dumps({"outcomes": outcomes, "new": sorted(set(sys.modules) - baseline)}))
    """)
    (tmp_path / "canary.txt").write_text("untouched")
    result = subprocess.run([sys.executable, "-c", code, json.dumps([str(p) for p in files])],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    new = [m for m in report["new"] if not m.startswith(("safeload", "encodings"))]
    assert new == [], f"loading attack files with records imported {new}"
    assert sorted(os.listdir(tmp_path)) == ["canary.txt"]
    outcomes = {Path(p).name: o for p, o in report["outcomes"].items()}
    assert {n for n, o in outcomes.items() if o != "refused"} == set()
