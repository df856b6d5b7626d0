"""The trained model the course ships in nbs/models/shapes, which lessons 03-09 load with `from_pretrained('models/shapes')` to
show what each piece does. It must keep meeting the figures of the run that made it: a 1/24/5 head-fusion model on the
built-in 16x16 grey shapes (disc, square, stripes, cross), made with

    cpixelcnn_train --nr_filters 24 --out runs/shapes
    python -c "from cpixelcnn import load_model, save_pretrained; save_pretrained(load_model('runs/shapes'), 'nbs/models/shapes')"

(about 4 minutes on 2 CPU cores). If a change to the library breaks these tests, the lessons' pictures of a trained model are
broken too: fix the change, or make the model again with the commands above and run the lessons again."""
import json
from pathlib import Path

import pytest
import torch

from cpixelcnn.classify import predict
from cpixelcnn.data import get_dataset
from cpixelcnn.metrics import sample_quality, train_judge
from cpixelcnn.model import from_pretrained
from cpixelcnn.sampling import sample

FOLDER = Path(__file__).resolve().parents[1] / 'nbs' / 'models' / 'shapes'
MAX_BYTES = 2 * 2**20           # a few MB at most in the repository
MIN_ACCURACY, MIN_SAMPLE_ACCURACY, SAMPLES_PER_CLASS = 0.97, 0.9, 16

@pytest.fixture(scope='module')
def model():
    return from_pretrained(FOLDER, device='cpu')

@pytest.fixture(scope='module')
def test_set(model):
    return get_dataset('builtin', 'test', model.image_size)

def test_files():
    "config.json and model.safetensors only (no pickle), together under 2 MiB"
    files = {p.name: p.stat().st_size for p in FOLDER.iterdir()}
    assert set(files) == {'config.json', 'model.safetensors'}, sorted(files)
    assert sum(files.values()) < MAX_BYTES, f"{FOLDER.name} holds {sum(files.values()) / 2**20:.2f} MiB (under {MAX_BYTES / 2**20:.0f} wanted)"

def test_configuration(model):
    "The model the lessons describe: 1/24/5, head fusion, one grey channel at 16x16, the built-in classes"
    cfg = json.loads((FOLDER / 'config.json').read_text())
    got = {k: cfg[k] for k in ('nr_resnet', 'nr_filters', 'nr_logistic_mix', 'fusion', 'in_channels', 'image_size', 'classes')}
    assert got == dict(nr_resnet=1, nr_filters=24, nr_logistic_mix=5, fusion='head', in_channels=1, image_size=16,
                       classes=['disc', 'square', 'stripes', 'cross']), got
    assert model.classes == cfg['classes'] and model.image_size == 16 and not model.training

def test_accuracy(model, test_set):
    "It classifies the built-in test split by likelihood with accuracy >= 0.97"
    with torch.no_grad(): pred, _, _ = predict(model, test_set)
    acc = (pred == test_set.y).float().mean().item()
    assert acc >= MIN_ACCURACY, f"the shipped model classifies the built-in test split at {acc:.3f} (at least {MIN_ACCURACY} wanted)"

def test_sample_accuracy(model, test_set):
    "16 samples of each class (seed 0): a judge trained on the built-in train split assigns >= 90% of them to their class"
    judge = train_judge(get_dataset('builtin', 'train', model.image_size))
    x, y = sample(model, SAMPLES_PER_CLASS, generator=torch.Generator().manual_seed(0))
    q = sample_quality(judge, x, y, test_set)
    assert q['judge_accuracy'] >= MIN_ACCURACY, f"the judge itself scores {q['judge_accuracy']:.3f} on real test images: it cannot tell"
    assert q['sample_accuracy'] >= MIN_SAMPLE_ACCURACY, \
        f"sample accuracy {q['sample_accuracy']:.3f} (per class {[round(a, 2) for a in q['per_class']]}; at least {MIN_SAMPLE_ACCURACY} wanted)"
