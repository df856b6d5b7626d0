__version__ = "0.1.0"

# The common path, importable from the package itself: train, load, share, sample, classify.
# Loaded on first use, so that `import cpixelcnn` (and a console script's start) stays light.
_LAZY = dict(TrainConfig='trainer', train='trainer', load_model='trainer', save_pretrained='model', from_pretrained='model',
             Callback='trainer', sample='sampling', predict='classify')
__all__ = list(_LAZY)

def __getattr__(name):
    if name not in _LAZY: raise AttributeError(f"module 'cpixelcnn' has no attribute {name!r}")
    import importlib
    return getattr(importlib.import_module(f'.{_LAZY[name]}', __name__), name)

def __dir__(): return sorted({*globals(), *_LAZY})   # the lazy names too, for dir() and completion
