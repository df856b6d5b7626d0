"""The tests' one notebook runner: pytest runs every notebook in `nbs/` top to bottom in a real Jupyter kernel (nbclient),
one test per notebook, cell by cell as Jupyter's Run All does, in the notebook's folder.
- A lesson (00-09) runs exactly as a learner's Run All: every code cell, whatever nbdev directive it carries (a lesson has no
  `#| eval: false` or `#| slow` cell: tests/test_course.py checks that).
- Any other notebook (the appendix 10-17, index, glossary, exercises) leaves out what nbdev's directives (read by nbdev's own
  parser) mark as not for a test run: cells flagged with one of settings.ini's `tst_flags` (`#| slow`: long runs, kept with
  their saved outputs) and `#| eval: false` cells. `CPIXELCNN_TEST_FLAGS=slow` runs the slow cells too, and the tests marked
  `@pytest.mark.slow`.
One more test builds the docs' notebooks the way the docs site does: nbdev's `proc_nbs`, the step `nbdev_proc_nbs` runs before Quarto."""
import os, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).parent
if int(os.environ.get('PYTEST_XDIST_WORKER_COUNT', '1')) > 1:
    os.environ['OMP_NUM_THREADS'] = '1'   # one core per worker (before torch is imported): workers must not fight over the cores

def run_flags() -> set:
    "The flags of slow work asked for in this run: CPIXELCNN_TEST_FLAGS, e.g. 'slow'"
    return set(os.environ.get('CPIXELCNN_TEST_FLAGS', '').split())

def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: a test of a minute or more; runs only with CPIXELCNN_TEST_FLAGS=slow')

def pytest_collection_modifyitems(config, items):
    if 'slow' in run_flags(): return
    skip = pytest.mark.skip(reason="slow: run with CPIXELCNN_TEST_FLAGS=slow")
    for item in items:
        if 'slow' in item.keywords: item.add_marker(skip)

def pytest_collect_file(parent, file_path):
    if file_path.suffix == '.ipynb' and not file_path.name.startswith('_') and '.ipynb_checkpoints' not in file_path.parts:
        return NotebookFile.from_parent(parent, path=file_path)
    if file_path.name == '_quarto.yml': return DocsFile.from_parent(parent, path=file_path)

class NotebookError(Exception): pass

def is_lesson(path:Path) -> bool:
    "A lesson of the course path: nbs/00_*.ipynb to nbs/09_*.ipynb"
    return path.parent.name == 'nbs' and path.name[:2].isdigit() and path.name[0] == '0' and path.name[2] == '_'

def left_out(cell, flags:set, lesson:bool=False) -> bool:
    "Whether a test run leaves `cell` out: markdown; in a notebook other than a lesson, `#| eval: false` or a directive among `flags`"
    from nbdev.process import extract_directives
    if cell.cell_type != 'code': return True
    if lesson: return False                                     # a lesson runs as Run All does: every code cell
    d = extract_directives(cell, remove=False)
    return d.get('eval:', [''])[0].lower() == 'false' or bool(flags & d.keys())

class NotebookFile(pytest.File):
    def collect(self): yield NotebookItem.from_parent(self, name=self.path.stem)

class NotebookItem(pytest.Item):
    def runtest(self):
        import nbformat
        from nbclient import NotebookClient
        from nbclient.exceptions import CellExecutionError
        from nbdev.config import get_config
        flags = set(get_config().tst_flags.split()) - run_flags()
        nb = nbformat.read(self.path, as_version=4)
        nb.cells = [c for c in nb.cells if not left_out(c, flags, is_lesson(self.path))]
        os.environ['IN_TEST'] = '1'
        client = NotebookClient(nb, timeout=3600, kernel_name='python3', resources={'metadata': {'path': str(self.path.parent)}},
                              extra_arguments=['--InteractiveShell.colors=nocolor'])
        try: client.execute()
        except CellExecutionError as e: raise NotebookError(f'{self.path.name} failed:\n{e}') from None
    def repr_failure(self, excinfo):
        return str(excinfo.value) if excinfo.errisinstance(NotebookError) else super().repr_failure(excinfo)
    def reportinfo(self): return self.path, 0, f'notebook {self.path.name}'

class DocsFile(pytest.File):
    def collect(self): yield DocsItem.from_parent(self, name='nbdev_proc_nbs')

class DocsItem(pytest.Item):
    def runtest(self):
        # nbdev_proc_nbs's own processing step: the command itself would first install Quarto where it is missing and
        # re-install this package with pip, in the middle of a test run
        r = subprocess.run([sys.executable, '-c', 'from nbdev.quarto import proc_nbs; proc_nbs()'], cwd=ROOT, capture_output=True, text=True)
        if r.returncode or 'Traceback' in r.stderr:
            raise NotebookError(f'proc_nbs failed (exit {r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}')
        missing = [p.name for p in (ROOT / 'nbs').glob('[0-9]*.ipynb') if not (ROOT / '_proc' / p.name).exists()]
        if missing: raise NotebookError(f'proc_nbs did not write {missing} to _proc/')
    def repr_failure(self, excinfo):
        return str(excinfo.value) if excinfo.errisinstance(NotebookError) else super().repr_failure(excinfo)
    def reportinfo(self): return self.path, 0, 'docs: nbdev_proc_nbs'
