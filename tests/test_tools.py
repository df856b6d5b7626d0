"""The scripts beside the notebooks that need the repository: the GPU check (`nbs/gpu_check.py`) and the report split of
the README's results table (`nbs/report.py`)."""
import os, subprocess, sys
from pathlib import Path

import pytest
import torch

NBS = Path(__file__).resolve().parents[1] / 'nbs'
sys.path.insert(0, str(NBS))                                        # report.py and experiments.py, as the scripts import them

def script(name, *args, cwd, timeout=900):
    "Run nbs/<name> with `args` in a fresh Python process; the CompletedProcess (text)"
    env = {**os.environ, 'OMP_NUM_THREADS': os.environ.get('OMP_NUM_THREADS', '1')}
    return subprocess.run([sys.executable, str(NBS / name), *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)

@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the check itself would run (minutes)")
def test_gpu_check_without_a_gpu_says_so(tmp_path):
    r = script('gpu_check.py', cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'no CUDA device here' in r.stdout and 'nothing to check' in r.stdout, r.stdout
    assert not r.stderr.strip(), r.stderr[-2000:]

@pytest.mark.slow
def test_gpu_check_runs_its_checks_on_the_cpu(tmp_path):
    "The same code path as on a GPU, on the CPU and small: every property passes and the table is printed"
    r = script('gpu_check.py', '--device', 'cpu', '--quick', '--minutes', '0.05', '--data', 'builtin', cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    table = [l for l in r.stdout.splitlines() if l.startswith('| ') and ('pass' in l or 'FAIL' in l)]
    assert len(table) == 5 and all('| pass |' in l for l in table), '\n'.join(table)
    assert '| matmul float32, GFLOP/s |' in r.stdout and 'accuracy on the builtin validation split' in r.stdout

@pytest.fixture(scope='module')
def course():
    "The CPEN455 labelled images (skips where the course data is absent)"
    import report
    try: folder = report.course_data()
    except FileNotFoundError as e: pytest.skip(f"{e}: the report split is made from it")
    from cpixelcnn.data import get_dataset
    return get_dataset(folder, 'train', 32)

def test_report_split_was_never_chosen_on(course):
    "A stratified tenth, drawn only from images in none of the validation splits the settings were chosen on, and fixed"
    import report
    from cpixelcnn.data import run_split
    mask = report.report_split(course)
    assert torch.equal(mask, report.report_split(course))                                # fixed by its seed
    for c in range(course.n_classes):
        n = int((course.y == c).sum())
        assert int(mask[course.y == c].sum()) == round(report.REPORT_FRAC * n), course.classes[c]
    chosen_on = set().union(*(run_split(course, val_frac=0.15, seed=s)[1].paths for s in report.TUNING_SEEDS))
    assert not chosen_on & {p for p, m in zip(course.paths, mask.tolist()) if m}
