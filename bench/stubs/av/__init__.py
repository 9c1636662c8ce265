"""Inert PyAV stand-in for the device machine (no video nodes): every av.* module and name imports."""
import importlib.abc, importlib.machinery, sys, types


class _Meta(type):
    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Inert()


class _Inert(metaclass=_Meta):
    """Any attribute, call or subclassing works; nothing does anything."""
    def __init__(self, *a, **k): pass
    def __getattr__(self, name): return _Inert()
    def __call__(self, *a, **k): return _Inert()


class _Module(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return type(name, (_Inert,), {})


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        if fullname.startswith("av."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None
    def create_module(self, spec):
        m = _Module(spec.name); m.__path__ = []; return m
    def exec_module(self, module): pass


sys.meta_path.insert(0, _Finder())
sys.modules[__name__].__class__ = _Module
__version__ = "16.0.0"
__path__ = __path__
