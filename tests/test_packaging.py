"""What `pip install` gives a user: the packages a plain install (no extras) pulls in; every module importable where POSIX-only
modules are missing (Windows); the wheel as a package index gets it (twine check, its page, its files); and the wheel installed
in a fresh environment outside the checkout, running the console scripts."""
import os, re, shutil, subprocess, sys, zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]

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

def lesson_imports() -> dict:
    """The top-level modules that lessons 00-09 import where a learner's Run All reaches them: {module: [notebooks]}. Left out:
    the standard library, cpixelcnn itself, imports inside a function (run only if it is called) and imports guarded by
    `except ImportError` (optional)"""
    import ast, json
    found = {}
    for nb in sorted((ROOT / 'nbs').glob('0[0-9]_*.ipynb')):
        for c in json.loads(nb.read_text())['cells']:
            if c['cell_type'] != 'code': continue
            tree = ast.parse('\n'.join(l for l in ''.join(c['source']).splitlines() if not l.lstrip().startswith(('%', '!'))))
            skip = set()
            for t in ast.walk(tree):
                if isinstance(t, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)): skip |= {id(n) for n in ast.walk(t)}
                if isinstance(t, ast.Try) and any(h.type is not None and {'ImportError', 'ModuleNotFoundError'} & {n.id for n in ast.walk(h.type) if isinstance(n, ast.Name)} for h in t.handlers):
                    skip |= {id(n) for b in t.body for n in ast.walk(b)}
            for t in ast.walk(tree):
                if id(t) in skip: continue
                names = [a.name for a in t.names] if isinstance(t, ast.Import) else [t.module] if isinstance(t, ast.ImportFrom) and t.module and not t.level else []
                for m in {n.split('.')[0] for n in names} - set(sys.stdlib_module_names) - {'cpixelcnn'}: found.setdefault(m, []).append(nb.name)
    return {m: sorted(set(v)) for m, v in found.items()}

def test_course_extra_provides_what_the_lessons_import():
    """`pip install -e ".[course]"` (README's way to take the course) installs every module a lesson imports, and a plain install
    does not (the lessons import fastcore.test and nbdev.showdoc): the course needs its extra"""
    owners = metadata.packages_distributions()
    imports = lesson_imports()
    assert {'torch', 'fastcore', 'nbdev'} <= imports.keys(), sorted(imports)
    course, plain = closure(extra='course'), closure()
    missing = {m: nbs for m, nbs in imports.items() if not {norm(d) for d in owners.get(m, [])} & course}
    assert not missing, f"the [course] extra does not install what these lessons import: {missing}"
    assert {'jupyterlab', 'ipykernel'} <= course, "the [course] extra must install JupyterLab and a kernel"
    assert {'nbdev', 'fastcore'} <= course - plain, "a plain install already has nbdev and fastcore: the check above cannot fail"

def test_fastprogress_without_fasthtml():
    assert not {norm(Requirement(r).name) for r in metadata.requires('fastprogress') or []} & WEB_FRAMEWORK

def test_classifiers_and_license():
    md = metadata.metadata('cpixelcnn')
    cls = md.get_all('Classifier')
    assert 'Development Status :: 3 - Alpha' in cls, cls           # settings.ini: status = 3
    assert (md.get('License-Expression') or md.get('License')) == 'Apache-2.0'

def test_extras():
    extras = set(metadata.metadata('cpixelcnn').get_all('Provides-Extra'))
    assert {'course', 'dev', 'fid'} <= extras, extras

def test_dev_installs_the_course():
    "[dev] (tests, docs) has every requirement of [course], so the tests run the lessons as a learner's install does"
    reqs = metadata.requires('cpixelcnn')
    of = lambda extra: {str(Requirement(r.split(';')[0])) for r in reqs if re.search(rf'extra\s*==\s*"{extra}"', r)}
    assert of('course') and of('course') <= of('dev'), of('course') - of('dev')

def test_dev_changes_no_user_package():
    "[dev] adds tools; every package a plain install pulls is required by [dev] in a range the plain install also allows"
    plain = {norm(Requirement(r).name) for r in metadata.requires('cpixelcnn') if 'extra ==' not in r}
    dev = [Requirement(r) for r in metadata.requires('cpixelcnn') if re.search(r'extra\s*==\s*"dev"', r)]
    assert not {norm(r.name) for r in dev} & plain, "a [dev] requirement re-pins a package of the plain install"

def test_library_imports_only_what_a_plain_install_has(tmp_path):
    "Every module imports with the packages outside a plain install's dependencies blocked (nbdev, fastcore, IPython, ...)"
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


# ---- what runs where a plain POSIX module is missing (Windows) --------------------------------------------------------------

def test_every_module_imports_without_posix_only_modules():
    "Every module of the package imports where fcntl, resource, termios, pwd and grp do not exist (Windows): none at import time"
    check = '''
import importlib.abc, pkgutil, sys
import torch, torchvision, numpy, pandas, matplotlib, seaborn, PIL, safetensors, fastprogress   # theirs may use them: not checked
POSIX_ONLY = {'fcntl', 'resource', 'termios', 'pwd', 'grp'}
for m in POSIX_ONLY: sys.modules.pop(m, None)
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in POSIX_ONLY: return None
        f = sys._getframe(1)
        while f is not None and f.f_globals.get('__name__', '').startswith(('importlib', '_frozen_importlib')): f = f.f_back
        importer = f.f_globals.get('__name__', '') if f is not None else ''
        if importer.split('.')[0] == 'cpixelcnn': raise ImportError(f"{importer} imports {name}, which Windows lacks")
sys.meta_path.insert(0, Block())
import cpixelcnn
for m in pkgutil.iter_modules(cpixelcnn.__path__): __import__(f"cpixelcnn.{m.name}")
print(len(list(pkgutil.iter_modules(cpixelcnn.__path__))))
'''
    r = subprocess.run([sys.executable, '-c', check], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]

def test_the_check_above_can_fail():
    "The same blocker refuses a cpixelcnn-named module that imports fcntl at import time"
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / 'cpixelcnn_probe.py').write_text('import fcntl\n')
        check = '''
import importlib.abc, sys
sys.modules.pop('fcntl', None)
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != 'fcntl': return None
        f = sys._getframe(1)
        while f is not None and f.f_globals.get('__name__', '').startswith(('importlib', '_frozen_importlib')): f = f.f_back
        if f is not None and f.f_globals.get('__name__', '').startswith('cpixelcnn'): raise ImportError('blocked')
sys.meta_path.insert(0, Block())
import cpixelcnn_probe
'''
        r = subprocess.run([sys.executable, '-c', check], capture_output=True, text=True, timeout=60, cwd=d)
    assert r.returncode == 1 and 'blocked' in r.stderr, r.stderr[-2000:]


# ---- the package's namespace ------------------------------------------------------------------------------------------------

def test_dir_lists_the_lazy_names():
    import cpixelcnn
    assert set(cpixelcnn.__all__) <= set(dir(cpixelcnn)), dir(cpixelcnn)
    for name in cpixelcnn.__all__: assert callable(getattr(cpixelcnn, name)), name
    assert cpixelcnn.save_pretrained.__module__ == 'cpixelcnn.model' and cpixelcnn.from_pretrained.__module__ == 'cpixelcnn.model'
    with pytest.raises(AttributeError): cpixelcnn.no_such_name


# ---- the wheel, as a package index gets it and a user installs it -----------------------------------------------------------


@pytest.fixture(scope='module')
def wheel(tmp_path_factory) -> Path:
    "The wheel `python -m build` makes from a copy of the project's packaging files and package (the checkout is not touched)"
    src = tmp_path_factory.mktemp('src')
    for name in ('settings.ini', 'setup.py', 'pyproject.toml', 'MANIFEST.in', 'LICENSE', 'README.md'): shutil.copy(ROOT / name, src)
    shutil.copytree(ROOT / 'cpixelcnn', src / 'cpixelcnn', ignore=shutil.ignore_patterns('__pycache__'))
    r = subprocess.run([sys.executable, '-m', 'build', '--wheel', '--outdir', str(src / 'dist'), str(src)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return next((src / 'dist').glob('cpixelcnn-*.whl'))

def wheel_metadata(whl:Path):
    "The METADATA of a wheel, parsed"
    from email.parser import HeaderParser
    with zipfile.ZipFile(whl) as z:
        return HeaderParser().parsestr(z.read(next(n for n in z.namelist() if n.endswith('.dist-info/METADATA'))).decode())

def test_twine_check(wheel):
    r = subprocess.run([sys.executable, '-m', 'twine', 'check', '--strict', str(wheel)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and 'PASSED' in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]

def test_wheel_metadata(wheel):
    md = wheel_metadata(wheel)
    urls = dict(u.split(', ', 1) for u in md.get_all('Project-URL'))
    assert urls == {'Documentation': 'https://cpixelcnn.github.io/cpixelcnn', 'Source': 'https://github.com/cpixelcnn/cpixelcnn',
                    'Issues': 'https://github.com/cpixelcnn/cpixelcnn/issues'}, urls
    assert 'License :: OSI Approved :: Apache Software License' in md.get_all('Classifier')
    assert (md.get('License-Expression') or md.get('License')) == 'Apache-2.0'
    page = md.get_payload()                                             # the long description: README.md
    assert 'pip install -e ".[course]"' in page and re.findall(r'\]\((?!https://)[^)]*\)', page) == []   # links work off GitHub

def test_wheel_contents(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert 'cpixelcnn/py.typed' in names and 'cpixelcnn/cli.py' in names
    assert not [n for n in names if n.startswith('cpixelcnn/experiments')], "the experiments need the repository: not in the package"


def make_images(folder:Path, names:list, colour:tuple, size:int=8):
    "Small RGB PNGs folder/<name> in one colour with noise"
    import numpy as np
    from PIL import Image
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(names))
    for n in names:
        a = np.clip(np.array(colour) + rng.integers(-40, 40, (size, size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(a).save(folder / n)

def test_wheel_in_a_fresh_environment(wheel, tmp_path):
    """The wheel installed (--no-deps) in a new virtual environment outside the checkout, whose site-packages borrows this one's
    heavy dependencies through a .pth line (torch is not installed twice), trains on a class-folder layout and classifies a plain
    folder of images (no CSV, no classes.txt) with its own console scripts; the package is imported from the wheel"""
    import site, venv
    env = tmp_path / 'env'
    venv.create(env, with_pip=False)
    py = env / ('Scripts/python.exe' if sys.platform == 'win32' else 'bin/python')
    env_site = Path(subprocess.run([str(py), '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'], capture_output=True, text=True, check=True).stdout.strip())
    borrowed = [p for p in site.getsitepackages() if Path(p, 'torch').is_dir()]
    (env_site / 'borrowed.pth').write_text('\n'.join(borrowed) + '\n')    # plain paths: their .pth files (the editable install's) stay off
    r = subprocess.run([sys.executable, '-m', 'pip', '--python', str(py), 'install', '--no-deps', '--no-index', '-q', str(wheel)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    work = tmp_path / 'work'                                            # outside the checkout: nothing of it on the path
    make_images(work / 'data/red', [f'{k}.png' for k in range(12)], (200, 40, 40))
    make_images(work / 'data/blue', [f'{k}.png' for k in range(12)], (40, 40, 200))
    make_images(work / 'new', ['a.png', 'b.png', 'c.jpg'], (200, 40, 40))
    def script(name, *args):
        exe = py.parent / name
        r = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=600, cwd=work,
                           env={**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': ''})
        assert r.returncode == 0, f"{name}: {r.stderr[-3000:]}"
        return r
    where = subprocess.run([str(py), '-c', 'import cpixelcnn.cli; print(cpixelcnn.cli.__file__)'], capture_output=True, text=True,
                           cwd=work, env={**os.environ, 'PYTHONPATH': ''})
    assert Path(where.stdout.strip()).is_relative_to(env_site), (where.stdout, where.stderr[-2000:])
    script('cpixelcnn_train', '--data', 'data', '--out', 'run', '--image_size', '8', '--nr_filters', '8', '--nr_logistic_mix', '2',
           '--batch_size', '8', '--max_steps', '2', '--minutes', 'none', '--n_samples_per_class', '0')
    assert (work / 'run/checkpoint.pt').is_file()
    r = script('cpixelcnn_classify', '--checkpoint', 'run', '--data', 'new', '--out', 'preds.csv')
    rows = (work / 'preds.csv').read_text().splitlines()
    assert len(rows) == 4 and rows[0].startswith('path,label,class') and all(l.split(',')[2] in ('blue', 'red') for l in rows[1:]), rows
