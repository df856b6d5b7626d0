"""pytest runs every notebook in `nbs/` as one test, exactly as `nbdev_test` does (same flags, same working directory)."""
import os
from pathlib import Path
import pytest

def pytest_collect_file(parent, file_path):
    if file_path.suffix == '.ipynb' and not file_path.name.startswith('_') and '.ipynb_checkpoints' not in file_path.parts:
        return NotebookFile.from_parent(parent, path=file_path)

class NotebookFile(pytest.File):
    def collect(self): yield NotebookItem.from_parent(self, name=self.path.stem)

class NotebookError(Exception): pass

class NotebookItem(pytest.Item):
    def runtest(self):
        from nbdev.config import get_config
        from nbdev.test import test_nb
        if int(os.environ.get('PYTEST_XDIST_WORKER_COUNT', '1')) > 1:
            import torch; torch.set_num_threads(1)  # one core per worker: workers must not fight over the cores
        skip = get_config().tst_flags.split()
        force = os.environ.get('CPIXELCNN_TEST_FLAGS', '').split()  # e.g. CPIXELCNN_TEST_FLAGS=slow runs the slow cells too
        ok, _ = test_nb(self.path, skip_flags=skip, force_flags=force, showerr=True)
        if not ok: raise NotebookError(f'{self.path.name} failed: the traceback is in the captured stderr below')
    def repr_failure(self, excinfo):
        return str(excinfo.value) if excinfo.errisinstance(NotebookError) else super().repr_failure(excinfo)
    def reportinfo(self): return self.path, 0, f'notebook {self.path.name}'
