"""The trainer's promises, each made to fail if broken: an exact resume, one run per folder, stops at step boundaries, hooks in
order, data as users hold it, settings checked by type, run folders that are never spoiled, a full disk said in one line, and a
training step that never reads the device. Tiny models (8x8 images, 8 filters) and a few steps each."""
import errno, json, os, pydoc, re, signal, subprocess, sys, textwrap
from pathlib import Path

import pytest
import torch

from cpixelcnn import loop, predict, trainer as trainer_module
from cpixelcnn.data import builtin_dataset
from cpixelcnn.trainer import (Callback, Interrupted, RunBar, RunLock, TrainConfig, Trainer, TrainingDiverged, check_interrupt,
                               load_checkpoint, load_model, stop_signals, train)

TINY = dict(data='builtin', image_size=8, nr_filters=8, nr_logistic_mix=2, max_train=64, max_val=32, batch_size=16,
            epochs=None, minutes=None, n_samples_per_class=0, amp='float32')
EXACT = {**TINY, 'dropout': 0.5, 'augment': True, 'fusion': 'middle', 'ce_weight': 0., 'schedule': 'exp'}
ENV = {**os.environ, 'OMP_NUM_THREADS': '1'}
posix_only = pytest.mark.skipif(os.name != 'posix', reason="POSIX signals")

def losses_of(out, cfg=EXACT, **kw):
    "Train `cfg` (updated by the settings in kw; resume=, data=, callbacks= pass through) into `out`: the per-step losses"
    args = {k: kw.pop(k) for k in ('resume', 'data', 'overwrite') if k in kw}
    seen = []
    train(TrainConfig(**{**cfg, **kw}), out, callbacks=[lambda t: seen.append(t.loss)], **args)
    return seen

def same(a, b, where='checkpoint'):
    "Assert that two nested structures of tensors and plain values are exactly equal"
    if isinstance(a, torch.Tensor): assert a.shape == b.shape and torch.allclose(a, b, rtol=0, atol=0, equal_nan=True), where
    elif isinstance(a, dict):
        assert sorted(a) == sorted(b), where
        for k in a: same(a[k], b[k], f'{where}.{k}')
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (u, v) in enumerate(zip(a, b)): same(u, v, f'{where}[{i}]')
    else: assert a == b or (a != a and b != b), f'{where}: {a} != {b}'

STATE_KEYS = ('model', 'optimizer', 'scheduler', 'ema', 'recent', 'epoch_gen_state', 'step', 'epoch', 'pos', 'rng')


# ----------------------------------------------------------------------------------------------------- exact resume
def test_resume_is_exact(tmp_path):
    a = losses_of(tmp_path / 'A', max_steps=7, eval_every=1)
    b = losses_of(tmp_path / 'B', max_steps=3, eval_every=1) + losses_of(tmp_path / 'B', resume=True, max_steps=7, eval_every=1)
    assert len(a) == 7 and b == a
    ck_a, ck_b = load_checkpoint(tmp_path / 'A'), load_checkpoint(tmp_path / 'B')
    for k in STATE_KEYS: same(ck_a[k], ck_b[k], k)

def test_checkpoint_is_the_whole_state(tmp_path):
    t = Trainer(TrainConfig(**EXACT, max_steps=3), tmp_path / 'run')
    try: assert set(t.state.state_dict()) <= set(t.checkpoint([t.state.rng]))
    finally: t.close()


# ------------------------------------------------------------------------------------------------- the training step
@pytest.mark.parametrize('ce_weight', [0., 0.5])
def test_step_never_reads_the_device(tmp_path, monkeypatch, ce_weight):
    "train_step does no .item()/.tolist()/bool()/float() on a tensor: no host sync between sync points"
    t = Trainer(TrainConfig(**{**TINY, 'ce_weight': ce_weight, 'augment': True, 'max_steps': 5, 'ema': 0.99}), tmp_path / 'run')
    x, y = next(iter(loop.batches(t.train_set, 16, shuffle=True)))
    def refuse(*a, **k): raise AssertionError("the training step read a tensor on the host")
    try:
        for name in ('item', 'tolist', '__bool__', '__float__', '__int__', '__index__'): monkeypatch.setattr(torch.Tensor, name, refuse)
        for _ in range(3): t.train_step(x, y)
        monkeypatch.undo()
        assert t.state.step == 3 and 0 < t.loss < 9
    finally: monkeypatch.undo(); t.close()

def test_refused_step_is_not_taken_and_stops_at_the_sync_point(tmp_path):
    t = Trainer(TrainConfig(**TINY, max_steps=10), tmp_path / 'run')
    try:
        x, y = next(iter(loop.batches(t.train_set, 16, shuffle=True)))
        t.train_step(x, y)
        before = {k: v.clone() for k, v in t.state.model.state_dict().items()}
        t.train_step(x.new_full(x.shape, float('nan')), y)                # a non-finite loss
        assert all(torch.equal(v, before[k]) for k, v in t.state.model.state_dict().items())
        with pytest.raises(TrainingDiverged, match='at step 2: the loss is nan'): t._sync()
        with pytest.raises(TrainingDiverged): t.save_checkpoint()          # never saved
    finally: t.close()

def test_divergence_keeps_last_good_checkpoint(tmp_path):
    with pytest.raises(TrainingDiverged, match='lower the learning rate'):
        train(TrainConfig(**{**TINY, 'max_steps': 20, 'checkpoint_every': 1, 'lr': 1e6}), tmp_path / 'run')
    m = load_model(tmp_path / 'run', device='cpu')
    assert all(torch.isfinite(p).all() for p in m.parameters())
    t = train(TrainConfig(**{**TINY, 'max_steps': 20, 'checkpoint_every': 1, 'lr': 1e-3}), tmp_path / 'run', resume=True)
    assert t.state.step == 20


# ----------------------------------------------------------------------------------------------------- one run per folder
def test_lock_refuses_a_second_process(tmp_path):
    run = tmp_path / 'run'
    lock = RunLock(run)
    try:
        script = f"from cpixelcnn.trainer import *; train(TrainConfig(**{TINY!r}, max_steps=2), {str(run)!r})"
        r = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, env=ENV, timeout=300)
        assert r.returncode != 0 and f"{run} is in use by process {os.getpid()}" in r.stderr, r.stderr[-2000:]
        assert sorted(p.name for p in run.iterdir()) == ['.lock']        # nothing written
    finally: lock.release()
    assert not run.exists()                                               # the lock made the folder, and it stayed empty

def test_stale_lock_is_taken_over(tmp_path):
    run = tmp_path / 'run'
    script = f"import os; from cpixelcnn.loop import RunLock; lock = RunLock({str(run)!r}); os._exit(0)"   # dies holding it
    subprocess.run([sys.executable, '-c', script], check=True, env=ENV, timeout=300)
    assert (run / '.lock').exists()
    t = train(TrainConfig(**TINY, max_steps=2), run)
    assert t.state.step == 2 and not (run / '.lock').exists()


# ------------------------------------------------------------------------------------------------------------ signals
@posix_only
def test_sigterm_between_steps_saves_an_exact_checkpoint(tmp_path):
    "A SIGTERM that arrives inside a step stops the run at the next step boundary, exit status 143, and the resume is exact"
    script = textwrap.dedent(f"""
        import os, signal, sys
        from cpixelcnn.trainer import *
        def kill_in_step_4(t):
            if t.state.step == 4: os.kill(os.getpid(), signal.SIGTERM)
        try: train(TrainConfig(**{EXACT!r}, max_steps=8), {str(tmp_path / 'run')!r}, callbacks=[kill_in_step_4])
        except Interrupted as e: sys.exit(e.exit_code)
        """)
    r = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 143, r.stderr[-2000:]
    assert 'stopped by SIGTERM: saved' in r.stdout and 'Exception ignored' not in r.stderr, (r.stdout, r.stderr)
    assert load_checkpoint(tmp_path / 'run')['step'] == 4
    losses_of(tmp_path / 'run', resume=True, max_steps=8)
    losses_of(tmp_path / 'whole', max_steps=8)
    a, b = load_checkpoint(tmp_path / 'run'), load_checkpoint(tmp_path / 'whole')
    for k in STATE_KEYS: same(a[k], b[k], k)

@posix_only
def test_signals_wait_for_a_safe_point_and_are_never_lost():
    with pytest.raises(Interrupted) as e:
        with stop_signals():
            with stop_signals():                                          # nested: a command line's and a run's
                os.kill(os.getpid(), signal.SIGINT)
                done = True                                               # the signal only took note
    assert done and e.value.exit_code == 130
    check_interrupt()                                                     # the note is gone once the outermost block ends
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# ---------------------------------------------------------------------------------------------------------- callbacks
def test_callbacks_in_order(tmp_path):
    seen = []
    class Spy(Callback):
        def after_step(self, t): seen.append(('step', t.state.step))
        def after_eval(self, t, row): seen.append(('eval', row['step']))
        def after_fit(self, t): seen.append(('fit', t.state.step))
    train(TrainConfig(**{**TINY, 'max_train': 32, 'epochs': 2}), tmp_path / 'run', callbacks=[Spy(), lambda t: seen.append(('f', t.state.step))])
    assert seen == [('step', 1), ('f', 1), ('step', 2), ('f', 2), ('eval', 2), ('step', 3), ('f', 3), ('step', 4), ('f', 4), ('eval', 4), ('fit', 4)]

def test_after_fit_runs_when_a_run_stops(tmp_path):
    seen = []
    class Stop(Callback):
        def after_step(self, t): raise KeyboardInterrupt
        def after_fit(self, t): seen.append(t.state.step)
    with pytest.raises(Interrupted): train(TrainConfig(**TINY, max_steps=5), tmp_path / 'run', callbacks=[Stop()])
    assert seen == [1] and load_checkpoint(tmp_path / 'run')['step'] == 1

def test_bad_callback_refused(tmp_path):
    with pytest.raises(TypeError, match='callbacks must be'): train(TrainConfig(**TINY, max_steps=1), tmp_path / 'run', callbacks=[3])
    assert not (tmp_path / 'run').exists()


# ----------------------------------------------------------------------------------------------- data as users hold it
def shapes_tensors(n=24):
    ds = builtin_dataset(n, image_size=8)
    return ds.x, ds.y, ds.classes

def test_in_memory_tensor_pair(tmp_path):
    x, y, _ = shapes_tensors()
    cfg = TrainConfig(**{**TINY, 'data': 'not used', 'max_steps': 3})
    t = train(cfg, tmp_path / 'run', data=(x, y))
    assert json.loads((tmp_path / 'run/config.json').read_text())['data'] == '<in-memory>'
    assert t.state.model.classes == ['0', '1', '2', '3'] and load_checkpoint(tmp_path / 'run')['data']['n_train'] == len(t.train_set)
    with pytest.raises(ValueError, match='stands for images passed in memory'):
        train(None, tmp_path / 'run', resume=True)
    with pytest.raises(ValueError, match='data differ from those'):
        train(TrainConfig(**{**cfg.to_dict(), 'data': '<in-memory>', 'max_steps': 5}), tmp_path / 'run', resume=True, data=(x.flip(-1), y))
    t = train(TrainConfig(**{**cfg.to_dict(), 'data': '<in-memory>', 'max_steps': 5}), tmp_path / 'run', resume=True, data=(x, y))
    assert t.state.step == 5

def test_changed_validation_set_is_said(tmp_path):
    train(TrainConfig(**TINY, max_steps=2), tmp_path / 'run')
    with pytest.warns(UserWarning, match='validation images differ'): train(TrainConfig(**{**TINY, 'max_steps': 3, 'max_val': 16}), tmp_path / 'run', resume=True)

def test_torchvision_style_dataset(tmp_path):
    "A torch Dataset yielding (PIL image, label), with `classes`, as torchvision's ImageFolder gives them"
    from PIL import Image
    x, y, names = shapes_tensors()
    class Folder(torch.utils.data.Dataset):
        classes = names
        def __len__(self): return len(y)
        def __getitem__(self, i): return Image.fromarray(x[i, 0].numpy()), int(y[i])
    t = train(TrainConfig(**{**TINY, 'max_steps': 2}), tmp_path / 'run', data=Folder())
    assert t.state.model.classes == names and t.state.model.image_size == 8

def test_path_in_config(tmp_path):
    from PIL import Image
    x, y, names = shapes_tensors(8)
    for i in range(len(y)):
        (tmp_path / 'data' / names[y[i]]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(x[i, 0].numpy()).save(tmp_path / 'data' / names[y[i]] / f'{i}.png')
    cfg = TrainConfig(**{**TINY, 'data': tmp_path / 'data', 'max_steps': 2, 'batch_size': 8, 'val_frac': 0.25})
    assert cfg.data == str(tmp_path / 'data')
    train(cfg, tmp_path / 'run')
    assert json.loads((tmp_path / 'run/config.json').read_text())['data'] == str(tmp_path / 'data')
    (tmp_path / 'data' / names[0] / 'extra.png').write_bytes((tmp_path / 'data' / names[0] / '0.png').read_bytes())
    with pytest.raises(ValueError, match='data differ from those'): train(TrainConfig(**{**cfg.to_dict(), 'max_steps': 4}), tmp_path / 'run', resume=True)


# ------------------------------------------------------------------------------------------------- settings and refusals
@pytest.mark.parametrize('bad, exc, msg', [(dict(lr='0.01'), TypeError, "lr must be float, got '0.01'"),
                                           (dict(minutes=True), TypeError, 'minutes must be float | None'),
                                           (dict(epochs=2.5), TypeError, 'epochs must be int | None'),
                                           (dict(lr=float('inf')), ValueError, 'lr must be a finite number'),
                                           (dict(data=''), ValueError, 'data is empty'),
                                           (dict(schedule='linear'), ValueError, 'schedule must be one of')])
def test_config_refuses(bad, exc, msg):
    with pytest.raises(exc, match=msg.replace('|', r'\|').replace('(', r'\(')): TrainConfig(**bad)

def test_help_describes_every_field():
    doc = pydoc.render_doc(TrainConfig)
    for f in loop.fields(TrainConfig): assert f.name in doc and f.metadata['help'][:40] in doc.replace('\n', ' '), f.name

@pytest.mark.parametrize('config', [dict(TINY), 'cfg', 3])
def test_train_refuses_what_is_not_a_config(tmp_path, config):
    with pytest.raises(TypeError, match='config must be a TrainConfig'): train(config, tmp_path / 'run')
    assert not (tmp_path / 'run').exists()

def test_out_dir_refusals(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match='out_dir is empty'): train(TrainConfig(**TINY, max_steps=1), '')
    (tmp_path / 'mine').mkdir(); (tmp_path / 'mine/notes.txt').write_text('keep me')
    with pytest.raises(FileExistsError, match=r'is not empty \(notes.txt\)'): train(TrainConfig(**TINY, max_steps=1), 'mine')
    assert sorted(os.listdir('mine')) == ['notes.txt']
    train(TrainConfig(**TINY, max_steps=1), 'mine', overwrite=True)           # asked for: trains there, keeps the other file
    assert (tmp_path / 'mine/notes.txt').read_text() == 'keep me' and (tmp_path / 'mine/checkpoint.pt').exists()
    with pytest.raises(FileExistsError, match='holds a run: resume=True'): train(TrainConfig(**TINY, max_steps=1), 'mine')
    with pytest.raises(ValueError, match='exclude each other'): train(TrainConfig(**TINY, max_steps=1), 'mine', resume=True, overwrite=True)
    (tmp_path / 'mine/samples.png').write_bytes(b'an earlier run')
    t = train(TrainConfig(**{**TINY, 'max_steps': 1, 'seed': 1}), 'mine', overwrite=True)   # an earlier run's files go
    assert not (tmp_path / 'mine/samples.png').exists() and t.state.step == 1
    with pytest.raises(ValueError): train(TrainConfig(**{**TINY, 'data': 'no_such_dataset'}), 'fresh')
    assert not (tmp_path / 'fresh').exists()                                   # a failed start leaves no empty folder


# --------------------------------------------------------------------------------------------------------- a full disk
def test_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    run, saves = tmp_path / 'run', []
    real = loop.atomic_write
    def flaky(path, write):
        if Path(path).name == 'checkpoint.pt':
            saves.append(path)
            if len(saves) == 3: raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, write)
    monkeypatch.setattr(loop, 'atomic_write', flaky)
    with pytest.raises(OSError) as e: train(TrainConfig(**{**TINY, 'max_train': 32, 'epochs': 3}), run)   # saves: start, epoch 1, epoch 2
    msg = str(e.value)
    assert msg.startswith('no space left on device while writing') and 'the previous checkpoint.pt is kept' in msg and '\n' not in msg
    ck = load_checkpoint(run)
    assert ck['step'] == 2 and len(ck['metrics']) == 1
    assert len((run / 'metrics.csv').read_text().splitlines()) == 1 + len(ck['metrics'])   # the log is not ahead of the checkpoint


# ------------------------------------------------------------------------------------------------------------ progress
def test_terminal_bar(monkeypatch, capsys):
    monkeypatch.setattr(loop, 'IN_NOTEBOOK', False)
    bar = RunBar()
    bar.update(0.5, 'half way'); bar.write('epoch 1: a line of its own'); bar.close(1., 'the end')
    out = capsys.readouterr().out
    shown = [l.split('\r')[-1].rstrip() for l in out.split('\n')]          # what a terminal shows on each line
    assert shown == ['epoch 1: a line of its own', '|' + '#' * RunBar.width + '| the end', ''], shown   # not glued to the bar; closed full

def test_time_budget_shows_time_and_closes_full(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(loop, 'IN_NOTEBOOK', False)
    monkeypatch.setattr(trainer_module, 'show_progress', lambda: True)
    train(TrainConfig(**{**TINY, 'minutes': 0.02, 'max_train': 256, 'eval_every': 0}), tmp_path / 'run')
    out = capsys.readouterr().out
    final = [l for l in out.replace('\r', '\n').splitlines() if l.startswith('|')][-1]
    assert re.match(r"\|#{30}\| 100% \[00:0\d<00:00\]", final) and 'Epoch' not in out, final


# -------------------------------------------------------------------------------------------------------- load_model
def test_load_model_refuses_a_config_that_does_not_fit_before_allocating(tmp_path):
    train(TrainConfig(**TINY, max_steps=1), tmp_path / 'run')
    p = tmp_path / 'run/checkpoint.pt'
    ck = torch.load(p, weights_only=True)
    torch.save({**ck, 'model_config': {**ck['model_config'], 'nr_filters': 3000}}, p)
    with pytest.raises(ValueError, match='do not fit its model config'): load_model(tmp_path / 'run')


# ---------------------------------------------------------------------------------------------------------------- format 1
FORMAT_1_RUN = Path(__file__).parent / 'fixtures' / 'checkpoint-format-1.pt'   # written by cpixelcnn 0.1.0 before TrainState

def test_checkpoint_of_format_1_still_loads():
    "A checkpoint of the layout before TrainState loads with load_model (weights, image size, classes, prior), and says it cannot be resumed"
    ck = torch.load(FORMAT_1_RUN, weights_only=True)
    assert ck['format'] == 'cpixelcnn-train-1'
    for ema in (True, False):
        m = load_model(FORMAT_1_RUN, ema=ema, device='cpu')
        want = ck['ema']['model'] if ema else ck['model']
        assert all(torch.equal(v, want[k]) for k, v in m.state_dict().items())
        assert (m.image_size, m.classes, m.fusion) == (ck['image_size'], ck['classes'], ck['model_config']['fusion'])
        assert torch.allclose(m.log_prior, ck['log_prior'])
    x = torch.rand(2, 1, 8, 8).mul(255).round().div(127.5).sub(1)
    pred, logp, ll = predict(m, x)
    assert torch.isfinite(ll).all() and pred.shape == (2,)
    with pytest.raises(ValueError, match='earlier version.*cannot be resumed'): load_checkpoint(FORMAT_1_RUN)
