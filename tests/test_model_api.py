"""The model side as users and the rest of the library rely on it: the network's layout written once, inputs checked once
(no host sync on the training path), metadata in `config()`, pretrained folders checked before anything is allocated,
class names and priors, the [0, 1] guard, data as PyTorch users hold it, compiled and bfloat16 models, chunked sampling and
scoring, completion, help() and type hints. Tiny models (8x8 images, nr_filters 8, nr_logistic_mix 2): seconds."""
import inspect, json, math, pydoc, re, subprocess, sys, warnings
from pathlib import Path
from unittest import mock

import pytest
import torch

import cpixelcnn
from cpixelcnn import classify, mixture, model as model_mod, pixelcnn, sampling
from cpixelcnn.classify import AllClassParams, class_log_likelihoods, classify_dataset, hybrid_loss, predict
from cpixelcnn.data import ImageSet, builtin_dataset, to_model_input
from cpixelcnn.mixture import dmol_log_prob, to_grid
from cpixelcnn.model import (FUSIONS, MAX_IMAGE_SIZE, PRETRAINED_FORMAT, ConditionalPixelCNN, check_class_names, check_log_prior,
                             cpu_bf16_fast, cpu_capability, from_pretrained, resolve_device, save_pretrained, unwrap_model)
from cpixelcnn.pixelcnn import check_model_input, eval_mode, looks_unit_range
from cpixelcnn.sampling import build_plan, complete, sample, sample_batches, sample_cached, sample_naive, sampling_noise

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / 'cpixelcnn'

def tiny(fusion='middle', in_channels=3, n_classes=3, dtype=torch.float32, seed=0, **kw):
    "A 1/8/2 model with all parameters randomized (FiLM and head fusion are not the identity then)"
    torch.manual_seed(seed)
    m = ConditionalPixelCNN(1, 8, 2, n_classes=n_classes, fusion=fusion, in_channels=in_channels, **kw).to(dtype).eval()
    with torch.no_grad():
        for p in m.parameters(): p.add_(torch.randn_like(p) * 0.3)
    return m

def images(n=4, C=3, size=8, dtype=torch.float32, seed=0):
    "Images on the 256-level grid of [-1, 1]"
    return to_grid(torch.rand(n, C, size, size, generator=torch.Generator().manual_seed(seed), dtype=dtype) * 2 - 1)


# ---------------------------------------------------------------------------------------------- one layout, one gate
LAYOUT = ('up_layers', 'down_layers', 'downsize_u', 'downsize_ul', 'upsize_u', 'upsize_ul', 'u_init', 'ul_init')

def test_layout_is_written_once():
    "Only pixelcnn.py (which declares the network) names its modules; model, sampling and classify walk it"
    spelled = {f.name for f in PKG.glob('*.py') if f.name != '_modidx.py' and any(k in f.read_text() for k in LAYOUT)}
    assert spelled == {'pixelcnn.py'}, spelled

def test_gate_arithmetic_is_written_once():
    "The gated block's x + c_a * sigmoid(c_b) is pixelcnn.gate; the sampler and the classifier call it"
    users = {f.name for f in PKG.glob('*.py') if f.name != '_modidx.py' and 'sigmoid' in f.read_text()}
    assert users == {'pixelcnn.py'}, users
    assert all('gate(' in (PKG / f).read_text() for f in ('sampling.py', 'classify.py'))

@pytest.mark.parametrize('fusion', FUSIONS)
def test_walk_visitors_agree_with_forward(fusion):
    "The trace visitor computes the forward pass; the plan (Record) and the shared-work visitor give the same numbers"
    m, x, y = tiny(fusion, dtype=torch.float64), images(2, dtype=torch.float64), torch.tensor([0, 2])
    calls, edges, maps = pixelcnn.trace_network(m, x, y)
    with torch.no_grad(): torch.testing.assert_close(maps['head'], m(x, y))
    xs, theta = sampling.run_plan(build_plan(m, 8), m, y, lambda t, _: x[:, :, t // 8, t % 8])
    torch.testing.assert_close(theta, m(x, y, check=False), rtol=0, atol=1e-10)
    want = torch.stack([dmol_log_prob(x, m(x, torch.full((2,), k))) for k in range(3)], 1)
    torch.testing.assert_close(class_log_likelihoods(m, x, class_chunk=2), want, rtol=0, atol=1e-8)

@pytest.mark.parametrize('fusion', FUSIONS)
def test_causal_by_gradients(fusion):
    from cpixelcnn.masks import causal_violations
    m = tiny(fusion)
    assert causal_violations(lambda x: m(x, torch.tensor([1])), torch.rand(1, 3, 4, 8) * 2 - 1) == []

@pytest.mark.parametrize('fusion', FUSIONS)
def test_cached_equals_naive(fusion):
    m, y = tiny(fusion, dtype=torch.float64), torch.tensor([0, 1, 2])
    noise = sampling_noise(m, 3, 8, torch.Generator().manual_seed(1))
    assert torch.equal(sample_naive(m, y, 8, noise), sample_cached(m, y, 8, noise))


# ------------------------------------------------------------------------------- inputs checked once, no host sync
def no_sync():
    "Patch the ways a CPU test can see a host sync (item, tolist, bool of a tensor) to raise"
    def boom(*a, **k): raise AssertionError('a value was read on the host')
    return mock.patch.multiple(torch.Tensor, item=boom, tolist=boom, __bool__=boom)

@pytest.mark.parametrize('fusion', ['middle', 'head', 'film'])
def test_training_path_reads_no_values(fusion):
    m, x, y = tiny(fusion, n_classes=4).train(), images(4), torch.tensor([0, 1, 2, 3])
    net, lp = AllClassParams(m), torch.full((4,), -math.log(4))
    with no_sync():
        loss, bpd, ce = hybrid_loss(net, x, y, lp, ce_weight=torch.tensor(0.5))
        loss.backward()
        m(x, y, check=False).sum().backward()
        net(x, y, own_only=True)

def test_entry_points_check_once():
    "One value check per public call: forward, class_log_likelihoods, predict, sample's labels"
    calls = []
    real = pixelcnn.check_model_input
    def counted(x, *a, **k):
        calls.append(k.get('values', a[2] if len(a) > 2 else True))
        return real(x, *a, **k)
    m, x = tiny(), images(4)
    with mock.patch.object(pixelcnn, 'check_model_input', counted), mock.patch.object(classify, 'check_model_input', counted):
        calls.clear(); m(x, torch.tensor([0, 1, 2, 0])); assert calls.count(True) == 1
        calls.clear(); class_log_likelihoods(m, x, batch_size=1, class_chunk=1); assert calls.count(True) == 1
        calls.clear(); predict(m, x); assert calls.count(True) == 1
        calls.clear(); sample(m, 1, 8); assert calls.count(True) == 0      # samplers: valid by construction
    with pytest.raises(ValueError, match='NaN or inf'): m(torch.full((1, 3, 8, 8), float('nan')), torch.tensor([0]))
    m(torch.full((1, 3, 8, 8), float('nan')), torch.tensor([0]), check=False)            # check=False: no value checks

def test_mixture_has_no_value_checks():
    assert not hasattr(mixture, 'check_images')
    x = images(2)
    with no_sync(): dmol_log_prob(x, torch.randn(2, 20, 8, 8))
    with pytest.raises(ValueError, match='do not match'): dmol_log_prob(x, torch.randn(1, 20, 8, 8))   # shapes still checked


# --------------------------------------------------------------------------------------------- metadata in config()
def test_config_restores_the_model():
    src = tiny('head', image_size=8, classes=['a', 'b', 'c'], log_prior=torch.tensor([0.5, 0.3, 0.2]).log())
    cfg = json.loads(json.dumps(src.config()))
    assert set(cfg) == set(inspect.signature(ConditionalPixelCNN).parameters)            # every constructor argument
    dst = ConditionalPixelCNN(**cfg)
    dst.load_state_dict(src.state_dict())
    x, y = images(2), torch.tensor([0, 2])
    with torch.no_grad(): assert torch.equal(dst.eval()(x, y), src(x, y))
    assert dst.config() == src.config()
    assert all(isinstance(v, torch.Tensor) for v in src.state_dict().values())
    assert not any('prior' in k or 'extra_state' in k for k in src.state_dict())

def test_bfloat16_model_keeps_its_prior():
    m = tiny(log_prior=torch.tensor([0.5, 0.3, 0.2]).log()).bfloat16()
    assert m.log_prior.dtype == torch.float32
    ConditionalPixelCNN(**m.config())                                                     # still a valid config

@pytest.mark.parametrize('kw, msg', [(dict(image_size=MAX_IMAGE_SIZE + 4), 'MAX_IMAGE_SIZE'), (dict(image_size=10), 'multiple of 4'),
                                     (dict(log_prior=[0, -math.inf, -math.inf, -math.inf]), 'finite'),
                                     (dict(log_prior=[0., 0., 0., 0.]), 'sum to 1'), (dict(log_prior=[-1.] * 3), '4 finite'),
                                     (dict(classes=['a', 'b', 'c']), 'need 4 class names'), (dict(nr_filters=0), 'positive int'),
                                     (dict(n_classes=True), 'positive int'), (dict(dropout=1.5), 'dropout'), (dict(fusion='x'), 'fusion')])
def test_constructor_refuses(kw, msg):
    with pytest.raises(ValueError, match=re.escape(msg)): ConditionalPixelCNN(**kw)

def test_max_image_size_can_be_raised(monkeypatch):
    monkeypatch.setattr(model_mod, 'MAX_IMAGE_SIZE', 512)
    assert ConditionalPixelCNN(image_size=512).image_size == 512

@pytest.mark.parametrize('names', [['Koala', 'koala'], ['koala', 'ｋｏａｌａ'], ['ça', 'c\u0327a'], ['cat', 'cat']])
def test_look_alike_class_names_refused(names):
    with pytest.raises(ValueError, match='look alike'): check_class_names(names)

@pytest.mark.parametrize('name', ['gpj\u202e.exe', 'a\u200bb', 'a\u2028b', 'a\x00', 'tab\there', 'a\ufeffb'])
def test_control_and_format_characters_refused(name):
    with pytest.raises(ValueError, match='control or format character'): check_class_names([name, 'other'])

def test_class_names_kept_nfc():
    assert check_class_names(['c\u0327a', 'b']) == ['ça', 'b']
    assert ConditionalPixelCNN(n_classes=2, classes=['c\u0327a', 'b']).classes == ['ça', 'b']

def test_check_log_prior():
    torch.testing.assert_close(check_log_prior([math.log(0.25)] * 4, 4), torch.full((4,), math.log(0.25)))
    with pytest.raises(ValueError, match='finite'): classify.posterior(torch.zeros(1, 4), [0, -math.inf, -math.inf, -math.inf])


# ---------------------------------------------------------------------------------------- sharing a pretrained model
@pytest.fixture
def shared(tmp_path):
    m = tiny('head', n_classes=3, image_size=8, classes=['a', 'b', 'c'], log_prior=torch.tensor([0.5, 0.25, 0.25]).log())
    return m, save_pretrained(torch.compile(m), tmp_path / 'shared')                     # a compiled model saves its module

def test_pretrained_round_trip(shared):
    m, d = shared
    assert sorted(p.name for p in d.iterdir()) == ['config.json', 'model.safetensors']
    assert json.loads((d / 'config.json').read_text())['format'] == PRETRAINED_FORMAT
    back = from_pretrained(d)                                                             # device='auto': the CPU here
    x = images(3)
    assert not back.training and back.config() == m.config()
    assert all(not t.is_meta for t in [*back.parameters(), *back.buffers()])
    assert torch.equal(predict(back, x)[2], predict(m, x)[2])

def rewrite_config(d, **edit):
    cfg = json.loads((d / 'config.json').read_text())
    (d / 'config.json').write_text(json.dumps({**cfg, **edit}))

@pytest.mark.parametrize('edit, msg', [
    (dict(nr_filters=16), r'tensor \S+ has shape \([\d, ]+\) in the file, \([\d, ]+\) in the model'),
    (dict(nr_filters=3000), 'does not fit config.json: tensor'), (dict(image_size=4096), 'MAX_IMAGE_SIZE'),
    (dict(nr_resnet=10**9), 'holds'), (dict(nr_resnet='x'), 'positive int'), (dict(format='cpixelcnn-model-1'), 'not a cpixelcnn model'),
    (dict(n_classes=10**8), 'one class name per class'), (dict(log_prior=[0, -math.inf, -math.inf]), 'finite'),
    (dict(classes=['a', 'b', '../c']), 'path separator'), (dict(surprise=1), 'does not describe a model')])
def test_hostile_config_refused_in_one_line(shared, edit, msg):
    m, d = shared
    rewrite_config(d, **edit)
    with pytest.raises(ValueError, match=msg) as e: from_pretrained(d)
    assert len(str(e.value).splitlines()) == 1 and len(str(e.value)) < 600, str(e.value)

def test_broken_pretrained_files(shared, tmp_path):
    m, d = shared
    (d / 'model.safetensors').write_bytes(b'\xff' * 64)
    with pytest.raises(ValueError, match='not a safetensors file'): from_pretrained(d)
    (d / 'model.safetensors').unlink()
    with pytest.raises(ValueError, match=r'^no model\.safetensors in '): from_pretrained(d)
    (tmp_path / 'empty').mkdir()
    with pytest.raises(ValueError, match='no model.safetensors in'): from_pretrained(tmp_path / 'empty')
    save_pretrained(m, tmp_path / 'again')
    (tmp_path / 'again' / 'config.json').write_text('{not json')
    with pytest.raises(ValueError, match='not readable JSON'): from_pretrained(tmp_path / 'again')

HOSTILE = """
import json, sys, torch
from cpixelcnn.model import ConditionalPixelCNN, save_pretrained, from_pretrained
from cpixelcnn.bench import peak_rss_mib as peak
d = save_pretrained(ConditionalPixelCNN(1, 40, 5, n_classes=4), sys.argv[1])
from_pretrained(d)                                                           # the honest load: every import and lazy path warmed
before, cfg = peak(), json.loads((d / 'config.json').read_text())
for edit in (dict(nr_filters=3000), dict(image_size=4096), dict(nr_resnet=10**6), dict(nr_filters=3000, nr_resnet=40)):
    (d / 'config.json').write_text(json.dumps({**cfg, **edit}))
    try: from_pretrained(d); print('loaded', edit); sys.exit(1)
    except ValueError: pass
print(before, peak())
"""

@pytest.mark.skipif(not Path('/proc/self/status').exists(), reason='reads the peak memory from /proc/self/status (Linux)')
def test_hostile_config_memory_stays_small(tmp_path):
    "Refused before allocating: four hostile configs (up to 20 GB of weights each) raise the peak memory by under 128 MiB over an honest load"
    r = subprocess.run([sys.executable, '-c', HOSTILE, str(tmp_path / 'm')], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]
    before, after = map(float, r.stdout.split()[-2:])
    assert after - before < 128, f'peak {before:.0f} MiB after an honest load, {after:.0f} MiB after the hostile ones'

@pytest.mark.skipif(not Path('/proc/self/status').exists(), reason='Linux: elsewhere the OS reports the peak only with the parent\'s')
def test_peak_memory_is_the_process_own():
    "A process started by one that holds 2 GB reports its own peak (torch's import, about 0.5 GB), not its parent's"
    child = "from cpixelcnn.bench import peak_rss_mib; print(peak_rss_mib())"
    parent = f"import subprocess, sys; held = b'x' * 2**31; print(subprocess.run([sys.executable, '-c', {child!r}], capture_output=True, text=True, check=True).stdout)"
    r = subprocess.run([sys.executable, '-c', parent], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert 10 < float(r.stdout.split()[-1]) < 1536, r.stdout

def test_resolve_device():
    assert resolve_device('cpu') == torch.device('cpu')
    assert resolve_device('auto').type == ('cuda' if torch.cuda.is_available() else 'cpu')
    with pytest.raises(ValueError, match='unknown device'): resolve_device('gpu0')
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match='CUDA is not available'): resolve_device('cuda')

def test_unwrap_model():
    m = tiny()
    assert unwrap_model(torch.compile(m)) is m and unwrap_model(m) is m
    for bad in (None, torch.nn.Linear(2, 2), 'model'):
        with pytest.raises(ValueError, match='must be a ConditionalPixelCNN'): unwrap_model(bad)
    with pytest.raises(ValueError, match='must be a ConditionalPixelCNN'): predict(None, images(1))


# ------------------------------------------------------------------------------------------------- the [0, 1] guard
def test_totensor_batch_refused():
    from torchvision.transforms.functional import to_tensor
    ds = builtin_dataset(4, 8)
    pil = [__import__('PIL.Image', fromlist=['Image']).fromarray(img.permute(1, 2, 0).numpy()) for img in ds.x[:, :3].expand(-1, 3, -1, -1)]
    batch = torch.stack([to_tensor(p) for p in pil])                                     # what a torchvision pipeline gives
    assert looks_unit_range(batch)
    with pytest.raises(ValueError, match=r'look like \[0, 1\].*cpixelcnn\.data\.to_model_input'): check_model_input(batch)
    photo = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    assert looks_unit_range(photo / 255) and not looks_unit_range(photo / 127.5 - 1)

def test_genuine_images_never_refused():
    ds = builtin_dataset(8, 8)
    m = tiny(in_channels=ds.x.shape[1], n_classes=4)
    for x in (torch.ones(2, 3, 8, 8), -torch.ones(2, 3, 8, 8), torch.zeros(2, 3, 8, 8), ds.x.float() / 127.5 - 1,
              to_model_input(ds.x), sample(m, 2, 8)[0], images(4), torch.randint(128, 256, (2, 3, 8, 8)) / 127.5 - 1):   # the last: bright, no negative value
        assert not looks_unit_range(x)
        check_model_input(x, None)


# ------------------------------------------------------------------------------------ data as users hold it; compile; bf16
def test_predict_accepts_what_users_hold():
    m, ds = tiny(in_channels=1, n_classes=4), builtin_dataset(4, 8)
    want = predict(m, ds.x.float() / 127.5 - 1)[0]
    tv = torch.utils.data.TensorDataset(ds.x.float() / 255, ds.y)                            # ToTensor's scale
    class Pairs(torch.utils.data.Dataset):                                                     # uint8 images and int labels, one by one
        def __len__(self): return len(ds)
        def __getitem__(self, i): return ds.x[i], int(ds.y[i])
    for data in (ds, tv, torch.utils.data.DataLoader(tv, batch_size=5), Pairs()):
        assert torch.equal(predict(m, data, batch_size=3)[0], want)
    with pytest.raises(ValueError, match='DataLoader'): predict(m, 'images/')

def test_compiled_model_samples_and_predicts():
    m = tiny()
    c = torch.compile(m)
    g = lambda: torch.Generator().manual_seed(0)
    assert torch.equal(sample(c, 1, 8, g())[0], sample(m, 1, 8, g())[0])
    assert torch.equal(predict(c, images(2))[2], predict(m, images(2))[2])

def test_bfloat16_model_with_float32_images():
    m = tiny()
    b = tiny().bfloat16()
    x = images(2)
    ll = predict(b, x)[2]
    assert ll.dtype == torch.float32 and torch.isfinite(ll).all()
    torch.testing.assert_close(ll, predict(m, x)[2], atol=2., rtol=0.01)
    s = sample(b, 1, 8, torch.Generator().manual_seed(0))[0]
    assert s.dtype == torch.float32 and torch.equal(s, to_grid(s))                         # on the grid, not bf16-rounded
    with pytest.raises(ValueError, match='convert with x.to'): b(x, torch.tensor([0, 1]))   # forward itself says what to do
    with torch.autocast('cpu', torch.bfloat16): m(x, torch.tensor([0, 1]))                  # float32 weights, autocast: fine

def test_classify_dataset_takes_amp_and_pairs():
    m, ds = tiny(in_channels=1, n_classes=4), builtin_dataset(3, 8)
    df, metrics = classify_dataset(m, ds, batch_size=5, amp=False)
    df2, _ = classify_dataset(m, (ds.x, ds.y), batch_size=5)
    assert df.pred.tolist() == df2.pred.tolist() and metrics['n_images'] == 12
    assert 'bf16' not in inspect.signature(classify_dataset).parameters


# ------------------------------------------------------------------------------------------- chunks: sampling, classes
def test_sample_batches_draws_noise_per_chunk():
    m, sizes = tiny(), []
    real = sampling.sampling_noise
    def spy(model, n, *a, **k): sizes.append(n); return real(model, n, *a, **k)
    with mock.patch.object(sampling, 'sampling_noise', spy):
        chunks = sample_batches(m, 100_000, 8, batch_size=4, method='naive')
        x, y = next(chunks)                                                               # one chunk drawn, not 300,000 images
    assert x.shape == (4, 3, 8, 8) and sizes == [4] and y.tolist() == [0] * 4
    g = lambda: torch.Generator().manual_seed(0)
    one = torch.cat([x for x, _ in sample_batches(m, 3, 8, g(), batch_size=2)])
    assert torch.equal(one, sample(m, 3, 8, g(), batch_size=9)[0])                       # the same images for any batch size

def test_sample_batches_checks_before_drawing():
    with pytest.raises(ValueError, match='n_per_class'): sample_batches(tiny(), 0, 8)     # at the call, not at the first chunk

def test_classes_scored_in_chunks():
    m, x, seen = tiny(n_classes=10), images(3), []
    real = classify.class_params
    def spy(model, xb, classes, *a, **k): seen.append(len(xb) * len(classes)); return real(model, xb, classes, *a, **k)
    with mock.patch.object(classify, 'class_params', spy): ll = class_log_likelihoods(m, x, batch_size=2, class_chunk=4)
    assert max(seen) <= 2 * 4 and ll.shape == (3, 10)
    torch.testing.assert_close(ll, class_log_likelihoods(m, x), rtol=1e-5, atol=1e-3)

def test_many_classes_warn_in_the_hybrid():
    with pytest.warns(UserWarning, match='all 65 classes'): AllClassParams(ConditionalPixelCNN(1, 8, 2, n_classes=65))
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        AllClassParams(tiny(n_classes=4))


# ------------------------------------------------------------------------------------------------------- completion
@pytest.mark.parametrize('fusion', ['middle', 'head', 'film'])
def test_complete(fusion):
    m, y = tiny(fusion, dtype=torch.float64), torch.tensor([0, 1, 2])
    x, noise = images(3, dtype=torch.float64), sampling_noise(m, 3, 8, torch.Generator().manual_seed(2))
    done = complete(m, x, y, 4, noise)
    assert torch.equal(done[:, :, :4], x[:, :, :4].float())                               # kept rows unchanged
    assert torch.equal(done, complete(m, x, y, 4, noise, method='naive'))                # cached == naive, the same draws
    bottom = torch.cat([x[:, :, :4], torch.zeros_like(x[:, :, 4:])], 2)
    assert torch.equal(done, complete(m, bottom, y, 4, noise))                           # rows below are not read
    other = complete(m, torch.cat([-x[:, :, :4], x[:, :, 4:]], 2), y, 4, noise)
    assert not torch.equal(done[:, :, 4:], other[:, :, 4:])                               # the kept rows' values are used


# --------------------------------------------------------------------------------------- one name, one meaning; helpers
def test_one_name_one_meaning():
    assert sampling.eval_mode is pixelcnn.eval_mode and classify.eval_mode is pixelcnn.eval_mode
    assert not hasattr(classify, 'scoring_mode') and not hasattr(sampling, '_count') and not hasattr(sampling, '_labels')
    assert 'weight' in sampling.Op.__dataclass_fields__ and 'W' not in sampling.Op.__dataclass_fields__
    assert 'W' in sampling.Node.__dataclass_fields__                                      # Node.W is a width
    assert callable(classify.estimate_log_prior) and not hasattr(classify, 'log_prior')

def test_eval_mode_restores():
    m = tiny().train()
    with eval_mode(m):
        assert not m.training and not torch.is_grad_enabled()
    assert m.training and torch.is_grad_enabled()
    with pytest.raises(KeyError):
        with eval_mode(m): raise KeyError
    assert m.training


# ------------------------------------------------------------------------------------------------- help() and hints
API = [predict, sample, sample_batches, complete, classify_dataset, save_pretrained, from_pretrained, ConditionalPixelCNN]

@pytest.mark.parametrize('f', API, ids=lambda f: f.__name__)
def test_help_shows_every_parameter(f):
    text = pydoc.render_doc(f, renderer=pydoc.plaintext)
    doc = text[text.index('Parameters'):]
    params = [p for p in inspect.signature(f).parameters if p != 'self']
    missing = [p for p in params if not re.search(rf'(^|[\s,]){p}([\s,]|$)', doc, re.M)]
    assert not missing, f"help({f.__name__}) does not describe {missing}"

def public_callables(mod):
    for name in mod.__all__:
        obj = getattr(mod, name)
        if inspect.isfunction(obj): yield name, obj
        elif inspect.isclass(obj) and obj.__module__ == mod.__name__:
            yield from ((f'{name}.{k}', v) for k, v in vars(obj).items() if inspect.isfunction(v) and (not k.startswith('_') or k == '__init__'))

@pytest.mark.parametrize('mod', [mixture, pixelcnn, model_mod, sampling, classify], ids=lambda m: m.__name__)
def test_type_hints_everywhere(mod):
    bad = []
    for name, f in public_callables(mod):
        sig = inspect.signature(f, eval_str=True)
        ps = [p for p, v in sig.parameters.items() if p not in ('self', 'cls') and v.kind not in (v.VAR_POSITIONAL, v.VAR_KEYWORD)
              and v.annotation is inspect.Parameter.empty]
        if ps or (sig.return_annotation is inspect.Signature.empty and not name.endswith('__init__')): bad.append(name)
    assert not bad, f"{mod.__name__}: no type hint on a parameter or the return value of {bad}"


# ------------------------------------------------------------------------------------------------ which CPU runs it
def test_cpu_capability_on_other_cpus():
    "The answers on other CPUs, simulated by replacing torch's queries"
    patch = mock.patch.object
    avx2 = {'avx2': True, 'avx512_f': False, 'avx512_bf16': False, 'amx_bf16': False, 'amx_tile': False}
    with patch(torch.cpu, 'get_capabilities', lambda: avx2), patch(torch.backends.cpu, 'get_cpu_capability', lambda: 'AVX2'):
        assert (cpu_capability(), cpu_bf16_fast()) == ('AVX2', False)
    amx = {**avx2, 'avx512_f': True, 'amx_bf16': True, 'amx_tile': True}
    with patch(torch.cpu, 'get_capabilities', lambda: amx), patch(torch.backends.cpu, 'get_cpu_capability', lambda: 'AVX512'):
        assert cpu_bf16_fast()
    with patch(torch.cpu, 'get_capabilities', lambda: amx), patch(torch.backends.cpu, 'get_cpu_capability', lambda: 'AVX2'):
        assert not cpu_bf16_fast()                                                         # units there, kernels held at AVX2
    def broken(): raise RuntimeError('no cpuinfo')
    with patch(torch.cpu, 'get_capabilities', broken), patch(torch.backends.cpu, 'get_cpu_capability', broken):
        assert (cpu_capability(), cpu_bf16_fast()) == ('unknown', False)
    with patch(torch.cpu, 'get_capabilities', None), patch(torch.cpu, '_is_avx512_bf16_supported', lambda: True, create=True), \
         patch(torch.backends.cpu, 'get_cpu_capability', lambda: 'AVX512'):
        assert cpu_bf16_fast()                                                             # an older torch: its private queries


# ----------------------------------------------------------------------------------------------- on a GPU, when there is one
@pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device here')
def test_cuda_paths():
    m = tiny('middle', dtype=torch.float64).cuda()
    y = torch.tensor([0, 1, 2], device='cuda')
    noise = sampling_noise(m, 3, 8, torch.Generator('cuda').manual_seed(0))
    assert torch.equal(sample_naive(m, y, 8, noise), sample_cached(m, y, 8, noise))
    x = images(3, dtype=torch.float64)
    want = torch.stack([dmol_log_prob(x.cuda(), m(x.cuda(), torch.full((3,), k, device='cuda'))) for k in range(3)], 1)
    torch.testing.assert_close(class_log_likelihoods(m, x), want, rtol=0, atol=1e-8)     # CPU images, CUDA model
    torch.cuda.set_sync_debug_mode('error')
    try:
        mf = tiny('head', n_classes=4).cuda().train()
        xs, ys = images(4).cuda(), torch.tensor([0, 1, 2, 3], device='cuda')
        loss = hybrid_loss(AllClassParams(mf), xs, ys, torch.full((4,), -math.log(4), device='cuda'), ce_weight=torch.tensor(0.5, device='cuda'))[0]
        loss.backward()
    finally: torch.cuda.set_sync_debug_mode('default')
