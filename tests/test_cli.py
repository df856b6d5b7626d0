"""The four console scripts as a user meets them: each installed script runs in a subprocess, on a real tiny run in a temporary
folder, and must exit 0 on success with nothing dumped on standard error, print where its outputs went, and fail with one line.
The options (--version, --help, usage errors, a missing checkpoint) are checked on the scripts' main functions in this process,
and once each through an installed script, as starting a script costs seconds of imports."""
import json, os, re, subprocess, sys
from pathlib import Path

import pytest

import cpixelcnn
from cpixelcnn import cli

BIN = Path(sys.executable).parent                                  # pip installs the scripts next to the interpreter
SCRIPTS = ['cpixelcnn_train', 'cpixelcnn_sample', 'cpixelcnn_classify', 'cpixelcnn_eval']
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONWARNINGS': 'ignore::DeprecationWarning'}
TINY = ['--image_size', '8', '--nr_filters', '8', '--nr_logistic_mix', '2', '--max_train', '64', '--max_val', '32',
        '--batch_size', '16', '--epochs', '1', '--n_samples_per_class', '2']
SHAPES = ['disc', 'square', 'stripes', 'cross']                    # the built-in data set's classes


def run(name, *args, timeout=300, cwd=None):
    "Run the installed console script `name` with `args`; the CompletedProcess (text)"
    exe = BIN / name
    if not exe.exists(): pytest.skip(f"{name} is not installed next to {sys.executable}: pip install -e .")
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=timeout, env=ENV, cwd=cwd)


def assert_clean(name, r):
    "Exit status 0, and standard error holds at most one-line warnings of the script: no traceback, tensor, table or dict"
    assert r.returncode == 0, f"{name} exited {r.returncode}:\n{r.stderr[-3000:]}"
    for bad in ('Traceback', 'tensor(', 'dtype=', 'rows x', "{'"):
        assert bad not in r.stderr, f"{name} wrote {bad!r} to stderr:\n{r.stderr[-3000:]}"
    others = [l for l in r.stderr.splitlines() if l.strip() and not l.startswith(f"{name}: warning: ")]
    assert not others, f"{name} wrote to stderr:\n" + '\n'.join(others[:20])


def assert_one_error_line(name, r, status):
    "Exit `status` and exactly one line `name: error: ...` on standard error"
    lines = r.stderr.splitlines()
    assert r.returncode == status, (r.returncode, r.stderr[-3000:])
    assert len(lines) == 1 and lines[0].startswith(f"{name}: error: "), r.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    "A tiny run of cpixelcnn_train on the built-in shapes: (run folder, CompletedProcess)"
    out = tmp_path_factory.mktemp('cli') / 'run'
    return out, run('cpixelcnn_train', *TINY, '--out', out)


def test_train(trained):
    out, r = trained
    assert_clean('cpixelcnn_train', r)
    assert str(out) in r.stdout, r.stdout                           # says where the outputs went
    assert {'checkpoint.pt', 'metrics.csv', 'config.json', 'samples.png', 'sample_quality.json', 'judge.safetensors'} <= {p.name for p in out.iterdir()}
    q = json.loads((out / 'sample_quality.json').read_text())
    assert 'sample accuracy' in r.stdout and q['n_samples'] == 8 and 0 <= q['sample_accuracy'] <= 1 and 0 <= q['judge_accuracy'] <= 1, q


def test_sample(trained, tmp_path):
    run_dir, _ = trained
    r = run('cpixelcnn_sample', '--checkpoint', run_dir, '--n_per_class', 2, '--out', tmp_path / 's')
    assert_clean('cpixelcnn_sample', r)
    assert str(tmp_path / 's') in r.stdout, r.stdout
    assert (tmp_path / 's/samples.png').is_file()
    for c in SHAPES:                                                # the model's own class names and image size
        assert sorted(p.name for p in (tmp_path / 's' / c).iterdir()) == ['00000.png', '00001.png'], c
    from PIL import Image
    assert Image.open(tmp_path / 's/disc/00000.png').size == (8, 8)


def test_classify(trained, tmp_path):
    run_dir, _ = trained
    r = run('cpixelcnn_classify', '--checkpoint', run_dir, '--data', 'builtin', '--split', 'test', '--out', tmp_path / 'p.csv')
    assert_clean('cpixelcnn_classify', r)
    assert str(tmp_path / 'p.csv') in r.stdout and 'accuracy' in r.stdout, r.stdout
    lines = (tmp_path / 'p.csv').read_text().splitlines()
    assert lines[0] == 'path,label,class' and len(lines) > 1, lines[:3]
    assert all(re.fullmatch(r'.+,([0-3]),(\w+)', l) and SHAPES[int(l.split(',')[-2])] == l.split(',')[-1] for l in lines[1:]), lines[:3]


def test_classify_submission_format(trained, tmp_path, capsys):
    "--format submission: the course's file, `path,label` lines with CRLF ends and no header, the same predictions as the table"
    run_dir, _ = trained
    for fmt in ('table', 'submission'):
        r = call('cpixelcnn_classify', ['--checkpoint', run_dir, '--data', 'builtin', '--format', fmt, '--out', tmp_path / f'{fmt}.csv'], capsys)
        assert r.returncode == 0, r.stderr
    raw = (tmp_path / 'submission.csv').read_bytes()
    table = (tmp_path / 'table.csv').read_text().splitlines()[1:]
    assert raw.endswith(b'\r\n') and raw.count(b'\n') == raw.count(b'\r\n') == len(table), raw[:100]
    assert raw.decode().split('\r\n')[:-1] == [l.rsplit(',', 1)[0] for l in table]


def test_eval(trained, tmp_path):
    run_dir, _ = trained
    r = run('cpixelcnn_eval', '--checkpoint', run_dir, '--sample_accuracy', 3, '--out', tmp_path / 'm.json')
    assert_clean('cpixelcnn_eval', r)
    assert 'bpd:' in r.stdout and 'sample accuracy' in r.stdout and str(tmp_path / 'm.json') in r.stdout, r.stdout
    m = json.loads((tmp_path / 'm.json').read_text())
    assert 0 < m['bpd'] < 20 and 0 <= m['accuracy'] <= 1, m
    assert m['n_samples'] == 12 and 0 <= m['sample_accuracy'] <= 1 and len(m['per_class']) == 4, m


def call(name, args, capsys):
    "Run the console script `name`'s main function in this process (cheaper than a subprocess): (exit status, stdout, stderr)"
    main = getattr(cli, name.removeprefix('cpixelcnn_') + '_main')
    try: main([str(a) for a in args]); code = 0
    except SystemExit as e: code = e.code
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


@pytest.mark.parametrize('name', SCRIPTS)
def test_version(name, capsys):
    r = call(name, ['--version'], capsys)
    assert (r.returncode, r.stdout.strip(), r.stderr) == (0, f"{name} {cpixelcnn.__version__}", '')


AMP = '{auto,bfloat16,float32}'                                     # one spelling of the network's precision in every script
CHOICES = {'cpixelcnn_train': ['{early,middle,late,block,film,head}', '{exp,cosine,constant}', AMP],
           'cpixelcnn_sample': ['{cached,naive}'], 'cpixelcnn_classify': ['{uniform,train}', '{table,submission}', AMP],
           'cpixelcnn_eval': ['{64,192,768,2048}', AMP]}

@pytest.mark.parametrize('name', SCRIPTS)
def test_help(name, capsys):
    r = call(name, ['--help'], capsys)
    assert r.returncode == 0 and r.stderr == '', r.stderr
    text = r.stdout
    assert '\nexamples:\n' in text and f"\n  {name} " in text, text[-2000:]      # an epilog of example commands
    for c in CHOICES[name]: assert c in text, (c, text)
    assert not re.search(r'\bone of [A-Z_]{3,}\b', text) and not re.search(r'\b(FUSIONS|SCHEDULES|AMP_MODES|SAMPLERS|PRIORS|FORMATS)\b', text), text
    assert '--bf16' not in text, text


REQUIRED = {'cpixelcnn_train': [], 'cpixelcnn_sample': ['--checkpoint', 'run', '--out', 'samples'],
            'cpixelcnn_classify': ['--checkpoint', 'run', '--data', 'builtin', '--out', 'p.csv'], 'cpixelcnn_eval': ['--checkpoint', 'run']}

@pytest.mark.parametrize('name', SCRIPTS)
def test_bad_option(name, capsys):
    line = assert_one_error_line(name, call(name, [*REQUIRED[name], '--no-such-option', '1'], capsys), 2)
    assert '--no-such-option' in line and '--help' in line, line

def test_bad_option_installed(tmp_path):
    line = assert_one_error_line('cpixelcnn_train', run('cpixelcnn_train', '--fusion', 'sideways', cwd=tmp_path), 2)
    assert "invalid choice: 'sideways'" in line, line


@pytest.mark.parametrize('name,args', [
    ('cpixelcnn_train', ['--resume']),
    ('cpixelcnn_sample', ['--checkpoint', 'run', '--out', 'samples', '--n_per_class', '0']),
    ('cpixelcnn_classify', ['--checkpoint', 'run', '--data', 'builtin', '--out', 'p.csv', '--prior', 'flat']),
    ('cpixelcnn_eval', ['--checkpoint', 'run', '--fid_dims', '100']),
    ('cpixelcnn_eval', ['--checkpoint', 'run', '--sample_accuracy', '-1'])])
def test_bad_value(name, args, capsys):
    assert_one_error_line(name, call(name, args, capsys), 2)


MISSING = {'cpixelcnn_train': ['--resume', '--out', '{missing}'],
           'cpixelcnn_sample': ['--checkpoint', '{missing}', '--out', '{tmp}/s'],
           'cpixelcnn_classify': ['--checkpoint', '{missing}', '--data', 'builtin', '--out', '{tmp}/p.csv'],
           'cpixelcnn_eval': ['--checkpoint', '{missing}']}

@pytest.mark.parametrize('name', SCRIPTS)
def test_missing_checkpoint(name, tmp_path, capsys):
    args = [a.format(missing=tmp_path / 'no-run', tmp=tmp_path) for a in MISSING[name]]
    line = assert_one_error_line(name, call(name, args, capsys), 1)
    assert str(tmp_path / 'no-run') in line, line
    assert not (tmp_path / 's').exists() and not (tmp_path / 'p.csv').exists()

def test_missing_checkpoint_installed(tmp_path):
    args = [a.format(missing=tmp_path / 'no-run', tmp=tmp_path) for a in MISSING['cpixelcnn_sample']]
    r = run('cpixelcnn_sample', *args)
    assert 'Traceback' not in r.stderr and str(tmp_path / 'no-run') in assert_one_error_line('cpixelcnn_sample', r, 1)


@pytest.mark.parametrize('name', ['cpixelcnn_classify', 'cpixelcnn_eval'])
def test_signal_stops_a_scoring_pass_between_batches(trained, tmp_path, capsys, name):
    """SIGTERM while the first batch is scored: the script stops before the second batch (exit 143, one line, nothing written),
    not at the end of the pass. A forward hook counts the modules the network runs, and sends the signal"""
    import signal, torch
    from cpixelcnn.classify import classify_dataset
    from cpixelcnn.data import get_dataset
    from cpixelcnn.trainer import load_model
    run_dir, _ = trained
    calls, send_at = [], []
    def on_forward(module, args):
        calls.append(module)
        if len(calls) in send_at: os.kill(os.getpid(), signal.SIGTERM)
    hook = torch.nn.modules.module.register_module_forward_pre_hook(on_forward)
    try:
        classify_dataset(load_model(run_dir), get_dataset('builtin', 'test', 8).subset(torch.arange(4)), batch_size=4)   # one batch
        per_batch = len(calls)
        calls.clear(); send_at.append(1)                                  # SIGTERM as the first batch starts
        out = tmp_path / 'out'
        r = call(name, ['--checkpoint', run_dir, '--data', 'builtin', '--split', 'test', '--batch_size', 4, '--out', out], capsys)
    finally: hook.remove()
    assert 'SIGTERM' in assert_one_error_line(name, r, 128 + signal.SIGTERM)
    assert len(calls) == per_batch, f"{name} ran {len(calls) / per_batch:.0f} batches after SIGTERM, not 1"
    assert not out.exists()


# ---- options described once, in data the program reads at run time -----------------------------------------------------------

def test_train_help_from_field_metadata(capsys):
    "Every TrainConfig field is an option whose help is the field's metadata, its fixed values the metadata's choices"
    import dataclasses
    from cpixelcnn.trainer import TrainConfig
    text = re.sub(r'\s+', '', call('cpixelcnn_train', ['--help'], capsys).stdout)
    for f in dataclasses.fields(TrainConfig):
        assert f.metadata.get('help'), f"TrainConfig.{f.name} has no help in its metadata"
        assert f'--{f.name}' in text and re.sub(r'\s+', '', f.metadata['help']).replace('%', '') [:40] in text.replace('%', ''), f.name
        if 'choices' in f.metadata: assert '{' + ','.join(map(str, f.metadata['choices'])) + '}' in text, f.name


def test_help_from_a_compiled_package(tmp_path):
    "--help is whole where the package holds only compiled files (no .py source to read comments from)"
    import dataclasses, shutil
    from cpixelcnn.trainer import TrainConfig
    pkg = tmp_path / 'cpixelcnn'
    shutil.copytree(Path(cpixelcnn.__file__).parent, pkg, ignore=shutil.ignore_patterns('__pycache__'))
    subprocess.run([sys.executable, '-m', 'compileall', '-q', '-b', str(pkg)], check=True)
    for f in pkg.glob('*.py'): f.unlink()
    code = "import cpixelcnn.cli as c; assert c.__file__.endswith('.pyc'), c.__file__; c.train_main(['--help'])"
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=tmp_path, timeout=300,
                       env={**ENV, 'PYTHONPATH': str(tmp_path)})
    assert r.returncode == 0, r.stderr[-3000:]
    text = re.sub(r'\s+', '', r.stdout).replace('%', '')
    for f in dataclasses.fields(TrainConfig):
        assert f'--{f.name}' in text and re.sub(r'\s+', '', f.metadata['help']).replace('%', '')[:40] in text, f.name


def main_of(name):
    "The main function of `python nbs/experiments.py` or `python -m cpixelcnn.bench`"
    if name == 'bench':
        from cpixelcnn import bench
        return bench.main
    import importlib.util
    spec = importlib.util.spec_from_file_location('experiments', Path(__file__).resolve().parents[1] / 'nbs' / 'experiments.py')
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main

@pytest.mark.parametrize('name,prog', [('bench', 'python -m cpixelcnn.bench'), ('experiments', 'experiments.py')])
def test_other_commands_follow_the_conventions(name, prog, capsys):
    "The benchmark and the experiments script answer --version, and a usage error is one line with exit status 2"
    main = main_of(name)
    def outcome(argv):
        try: main(argv); code = 0
        except SystemExit as e: code = e.code
        out, err = capsys.readouterr()
        return code, out, err
    assert outcome(['--version']) == (0, f"{prog} {cpixelcnn.__version__}\n", '')
    code, out, err = outcome(['--threads', '0'] if name == 'bench' else ['no-such-experiment'])
    assert code == 2 and out == '' and len(err.splitlines()) == 1 and err.startswith(f"{prog}: error: "), err


# ---- classify any folder ---------------------------------------------------------------------------------------------------

def save_shapes(folder, labels=True, n=8):
    "n built-in test images as PNG files: folder/<class>/<i>.png (labels) or folder/<i>.png (a plain folder); (paths, labels)"
    from PIL import Image
    from cpixelcnn.data import get_dataset
    ds = get_dataset('builtin', 'test', 8)
    paths = []
    for i in range(n):
        p = Path(folder) / (ds.classes[int(ds.y[i])] if labels else '') / f'{i}.png'
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(ds.x[i, 0].numpy()).save(p)
        paths.append(p.relative_to(folder).as_posix())
    return paths, ds.y[:n].tolist()

@pytest.mark.parametrize('layout', ['class folders', 'plain folder'])
def test_classify_any_folder(trained, tmp_path, capsys, layout):
    "A class-folder layout (accuracy printed) and a plain folder of images with no CSV and no classes.txt: every image classified, by name"
    run_dir, _ = trained
    paths, labels = save_shapes(tmp_path / 'images', labels=layout == 'class folders')
    r = call('cpixelcnn_classify', ['--checkpoint', run_dir, '--data', tmp_path / 'images', '--out', tmp_path / 'p.csv'], capsys)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr
    assert ('accuracy' in r.stdout) == (layout == 'class folders'), r.stdout
    rows = [l.split(',') for l in (tmp_path / 'p.csv').read_text().splitlines()]
    assert rows[0] == ['path', 'label', 'class'] and sorted(p for p, _, _ in rows[1:]) == sorted(paths), rows[:3]
    assert all(SHAPES[int(k)] == c for _, k, c in rows[1:]), rows[:3]

def test_classify_the_runs_validation_split(trained, tmp_path, capsys):
    "--split val: the run's own validation images, split with the run's settings (max_val 32 of the tiny run)"
    from cpixelcnn.cli import run_data_split, run_settings
    run_dir, _ = trained
    r = call('cpixelcnn_classify', ['--checkpoint', run_dir, '--split', 'val', '--out', tmp_path / 'p.csv'], capsys)
    assert r.returncode == 0 and 'on 32 labelled images' in r.stdout, (r.stdout, r.stderr)
    paths = [l.split(',')[0] for l in (tmp_path / 'p.csv').read_text().splitlines()[1:]]
    assert paths == run_data_split(run_settings(run_dir))[1].paths


@pytest.mark.parametrize('name', ['sample_to_folder', 'classify_to_csv', 'evaluate_checkpoint'])
def test_python_api_parameters_in_help(name):
    "The scripts' Python functions describe every parameter where help() shows it (a numpy-style Parameters section)"
    import inspect, pydoc
    f = getattr(cli, name)
    text = pydoc.render_doc(f, renderer=pydoc.plaintext)
    assert '\n    Parameters\n    ----------\n' in text, text[:500]
    for p in inspect.signature(f).parameters: assert re.search(rf'\n    {p}\n        \S', text), (name, p)
