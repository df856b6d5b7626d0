"""What `pip install` gives a user: the package's metadata, and the packages a plain install (no extras) pulls in."""
import re
from importlib import metadata

import pytest
from packaging.requirements import Requirement

WEB_FRAMEWORK = {'python-fasthtml', 'starlette', 'uvicorn', 'httpx', 'websockets', 'fastapi'}

def norm(name): return re.sub(r'[-_.]+', '-', name).lower()

def closure(dist='cpixelcnn', extra=None):
    "Names of the installed distributions that a plain install of `dist` (or with `extra`) depends on, transitively"
    seen, todo = set(), [(dist, extra)]
    while todo:
        name, ex = todo.pop()
        if norm(name) in seen: continue
        seen.add(norm(name))
        try: reqs = metadata.requires(name) or []
        except metadata.PackageNotFoundError: continue      # an optional dependency that is not installed
        for r in map(Requirement, reqs):
            env = {'extra': ex or ''}
            if r.marker is None or r.marker.evaluate(env): todo.append((r.name, None))
    return seen - {norm(dist)}

def test_plain_install_pulls_no_web_framework():
    deps = closure()
    assert not deps & WEB_FRAMEWORK, f"a plain install pulls {sorted(deps & WEB_FRAMEWORK)}"
    assert 'fastprogress' in deps and 'torch' in deps

def test_closure_sees_extras():
    "The walk follows extras, so the test above can fail: [fid] brings pytorch-fid"
    assert 'pytorch-fid' in closure(extra='fid') and 'pytorch-fid' not in closure()

def test_fastprogress_without_fasthtml():
    assert not {norm(Requirement(r).name) for r in metadata.requires('fastprogress') or []} & WEB_FRAMEWORK

def test_classifiers_and_license():
    md = metadata.metadata('cpixelcnn')
    cls = md.get_all('Classifier')
    assert 'Development Status :: 3 - Alpha' in cls, cls           # settings.ini: status = 3
    assert (md.get('License-Expression') or md.get('License')) == 'Apache-2.0'

def test_extras():
    extras = set(metadata.metadata('cpixelcnn').get_all('Provides-Extra'))
    assert {'dev', 'fid'} <= extras, extras

def test_dev_changes_no_user_package():
    "[dev] adds tools; every package a plain install pulls is required by [dev] in a range the plain install also allows"
    plain = {norm(Requirement(r).name) for r in metadata.requires('cpixelcnn') if 'extra ==' not in r}
    dev = [Requirement(r) for r in metadata.requires('cpixelcnn') if re.search(r'extra\s*==\s*"dev"', r)]
    assert not {norm(r.name) for r in dev} & plain, "a [dev] requirement re-pins a package of the plain install"

def test_library_imports_only_what_a_plain_install_has(tmp_path):
    "Every module imports with the packages outside a plain install's dependencies blocked (nbdev, fastcore, IPython, ...)"
    import subprocess, sys
    allowed = sorted(closure() | {'cpixelcnn'})
    check = f'''
import sys, importlib.abc, importlib.metadata as md, pkgutil, re
allowed = {allowed!r}
owner = {{m: {{re.sub(r"[-_.]+", "-", d).lower() for d in ds}} for m, ds in md.packages_distributions().items()}}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        top = name.split('.')[0]
        if top in owner and not owner[top] & set(allowed): raise ImportError(f"{{name}} (from {{sorted(owner[top])}}) is not a dependency of a plain install")
sys.meta_path.insert(0, Block())
import cpixelcnn
for m in pkgutil.iter_modules(cpixelcnn.__path__): __import__(f"cpixelcnn.{{m.name}}")
'''
    r = subprocess.run([sys.executable, '-c', check], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
