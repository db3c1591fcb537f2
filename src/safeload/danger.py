"""Globals known to run code, touch files or the network, or unpickle again.

This list never decides whether a file loads: the allowlist does (a global is
refused unless it is allowed). It only ranks a refusal: a known-dangerous name
gets a "do not load this" message instead of "allow it if you trust it", and the
scanner reports it as ``dangerous`` instead of ``unsafe``.
"""

from __future__ import annotations

__all__ = ["danger_of"]

#: whole modules (and their submodules) whose globals are all dangerous
DANGEROUS_MODULES: dict[str, str] = {
    "os": "runs commands or touches files",
    "posix": "runs commands or touches files",
    "nt": "runs commands or touches files",
    "subprocess": "runs commands",
    "pty": "runs commands",
    "commands": "runs commands",
    "popen2": "runs commands",
    "sys": "changes the interpreter",
    "socket": "opens network connections",
    "ssl": "opens network connections",
    "http": "opens network connections",
    "urllib": "opens network connections",
    "urllib2": "opens network connections",
    "requests": "opens network connections",
    "httplib": "opens network connections",
    "ftplib": "opens network connections",
    "smtplib": "opens network connections",
    "telnetlib": "opens network connections",
    "imaplib": "opens network connections",
    "poplib": "opens network connections",
    "nntplib": "opens network connections",
    "xmlrpc": "opens network connections",
    "webbrowser": "starts programs",
    "shutil": "touches files",
    "tempfile": "touches files",
    "pathlib": "touches files",
    "io": "opens files",
    "_io": "opens files",
    "fileinput": "opens files",
    "glob": "reads the file system",
    "logging": "opens files",
    "zipfile": "touches files",
    "tarfile": "touches files",
    "shelve": "opens files and unpickles",
    "dbm": "opens files",
    "pickle": "unpickles again (nested payload)",
    "_pickle": "unpickles again (nested payload)",
    "cPickle": "unpickles again (nested payload)",
    "dill": "unpickles code",
    "cloudpickle": "rebuilds functions from code",
    "joblib": "unpickles again",
    "marshal": "loads code objects",
    "types": "builds code and functions",
    "code": "runs code",
    "codeop": "compiles code",
    "runpy": "runs code",
    "importlib": "imports modules",
    "imp": "imports modules",
    "pkgutil": "imports modules",
    "zipimport": "imports modules",
    "ctypes": "calls native code",
    "_ctypes": "calls native code",
    "cffi": "calls native code",
    "multiprocessing": "starts processes",
    "concurrent": "starts processes",
    "threading": "starts threads",
    "_thread": "starts threads",
    "asyncio": "runs code and opens connections",
    "signal": "changes the interpreter",
    "gc": "reaches any object",
    "inspect": "reaches any object",
    "operator": "calls attributes of any object (attrgetter / methodcaller)",
    "functools": "wraps calls (partial / reduce)",
    "pdb": "runs code",
    "bdb": "runs code",
    "timeit": "runs code",
    "trace": "runs code",
    "profile": "runs code",
    "cProfile": "runs code",
    "doctest": "runs code",
    "idlelib": "runs code",
    "pydoc": "runs code and starts programs",
    "venv": "starts programs",
    "ensurepip": "starts programs",
    "distutils": "runs code and touches files",
    "setuptools": "runs code and touches files",
    "pip": "installs packages",
    "uuid": "runs commands (_get_command_stdout)",
    "_osx_support": "runs commands",
    "_aix_support": "runs commands",
    "_pyrepl": "runs code and starts programs",
    "test": "runs code",
    "numpy.testing": "runs commands",
    "numpy.f2py": "runs commands",
    "numpy.distutils": "runs commands",
    "numpy._pytesttester": "runs tests (imports and runs code)",
    "numpy.lib.npyio": "loads pickles and opens files",
    "numpy.lib._npyio_impl": "loads pickles and opens files",
    "numpy.lib.format": "loads pickles and opens files",
    "numpy.lib._format_impl": "loads pickles and opens files",
    "numpy.lib._datasource": "opens files and URLs",
    "numpy.ctypeslib": "loads native libraries",
    "numpy.compat": "imports modules from files",
    "numpy.core.memmap": "opens files",
    "numpy._core.memmap": "opens files",
    "torch.serialization": "loads another checkpoint without restrictions",
    "torch.hub": "downloads and runs code",
    "torch.jit": "runs TorchScript code",
    "torch._dynamo": "runs code",
    "torch._inductor": "compiles and runs code",
    "torch.utils.cpp_extension": "compiles and runs code",
    "torch.utils.bottleneck": "runs code under a profiler",
    "torch.utils.data": "runs code",
    "torch._C": "calls native functions",
    "torch.ops": "calls native operators",
    "torch.fx": "runs code",
    "torch.distributed": "opens network connections",
    "torch.multiprocessing": "starts processes",
}

#: single names outside the modules above
DANGEROUS_NAMES: dict[str, str] = {
    "builtins.eval": "evaluates code",
    "builtins.exec": "runs code",
    "builtins.execfile": "runs code",
    "builtins.compile": "compiles code",
    "builtins.open": "opens files",
    "builtins.file": "opens files",
    "builtins.__import__": "imports modules",
    "builtins.getattr": "reaches any attribute",
    "builtins.setattr": "sets any attribute",
    "builtins.delattr": "deletes any attribute",
    "builtins.globals": "reaches module globals",
    "builtins.locals": "reaches local variables",
    "builtins.vars": "reaches any namespace",
    "builtins.input": "reads the terminal",
    "builtins.breakpoint": "starts a debugger",
    "builtins.help": "starts a pager",
    "builtins.memoryview": "reaches raw memory",
    "builtins.type": "creates classes",
    "builtins.object": "builds arbitrary objects",
    "builtins.classmethod": "wraps functions",
    "builtins.staticmethod": "wraps functions",
    "builtins.property": "wraps functions",
    "builtins.super": "reaches parent classes",
    "builtins.apply": "calls anything",
    "builtins.map": "calls functions lazily",
    "builtins.filter": "calls functions lazily",
    "copyreg._reconstructor": "builds an instance of any class",
    "copyreg.__newobj__": "builds an instance of any class",
    "copyreg.__newobj_ex__": "builds an instance of any class",
    "_codecs.decode": "decodes through any codec",
    "codecs.decode": "decodes through any codec",
    "codecs.open": "opens files",
    "numpy.core.multiarray._reconstruct_object": "builds arbitrary objects",
    "numpy._core.multiarray._reconstruct_object": "builds arbitrary objects",
    "torch.load": "loads another checkpoint without restrictions",
    "torch.save": "writes files",
    "torch.from_file": "opens files",
    "torch._utils._rebuild_device_tensor_from_numpy": "calls into numpy with pickled objects",
    "torch.storage._load_from_bytes": "unpickles again (nested payload)",
    "torch._tensor._rebuild_from_type": "changes a tensor's class",
    "torch.Tensor.__setstate__": "sets tensor internals",
    "torch.nn.Module.__setstate__": "sets module internals",
}


#: numpy functions and classes that read or write files, unpickle or import,
#: under whichever numpy module names them: numpy re-exports one function from
#: several (``numpy.fromfile`` is also ``numpy.core.multiarray.fromfile`` and
#: ``numpy._core.multiarray.fromfile``, ``numpy.load`` is ``numpy.lib.npyio.load``)
DANGEROUS_NUMPY_NAMES: dict[str, str] = {
    "load": "loads pickles and opens files",
    "loads": "unpickles again (nested payload)",
    "save": "writes files",
    "savez": "writes files",
    "savez_compressed": "writes files",
    "savetxt": "writes files",
    "dump": "writes files",
    "tofile": "writes files",
    "loadtxt": "opens files",
    "genfromtxt": "opens files and URLs",
    "recfromtxt": "opens files and URLs",
    "recfromcsv": "opens files and URLs",
    "fromregex": "opens files",
    "fromfile": "opens files",
    "fromtextfile": "opens files",
    "memmap": "opens files",
    "open_memmap": "opens files",
    "DataSource": "opens files and URLs",
    "load_library": "loads native libraries",
    "lookfor": "imports modules",
    "as_strided": "reads memory outside the array (strides the file chooses)",
}


def danger_of(module: str, name: str) -> str | None:
    """Why ``module.name`` is known to be dangerous, or None if it is not known.

    Any dotted attribute path (``os.path.join``, ``Foo.__init__``) and any
    dunder name is dangerous in itself: it reaches through an object.
    """
    full = f"{module}.{name}"
    if full in DANGEROUS_NAMES:
        return DANGEROUS_NAMES[full]
    if (module == "numpy" or module.startswith("numpy.")) and name in DANGEROUS_NUMPY_NAMES:
        return DANGEROUS_NUMPY_NAMES[name]
    probe = module
    while probe:
        if probe in DANGEROUS_MODULES:
            return DANGEROUS_MODULES[probe]
        probe = probe.rpartition(".")[0]
    if "." in name:
        return "reaches an attribute through another object"
    if name.startswith("__") and name.endswith("__"):
        return "names an interpreter hook"
    if name in {"system", "popen", "exec", "eval", "spawn", "call", "check_output", "run"}:
        return "has the name of a code-running function"
    return None
