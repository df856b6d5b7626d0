"""Data as users hold it and folders as they come: conversion to model input, in-memory data, the split of a run (decoded
only where kept), and folders that are odd or broken (FIFOs, 16-bit images, duplicate rows, text that is not UTF-8, ...).
Each test builds a tiny folder in tmp_path."""
import os, warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cpixelcnn.data as data
from cpixelcnn.data import (ImageListing, ImageSet, as_imageset, builtin_dataset, fingerprint, get_dataset, list_dataset,
                            run_split, to_model_input, to_pil, to_uint8)
from cpixelcnn.model import MAX_IMAGE_SIZE


def png(path, value=(0, 128, 255), size=8, mode='RGB'):
    "A small solid image file at `path`"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (size, size), value).save(path)
    return path

def class_folders(root, classes=('cat', 'dog'), n=3):
    "root/<class>/<k>.png, n images per class, each class its own grey level"
    for c, name in enumerate(classes):
        for k in range(n): png(root / name / f'{k}.png', (40 * c, 40 * c, 40 * c))
    return root

def csv_folder(root, lines, n=4):
    "root/img/<k>.png (k < n) and root/train.csv holding `lines`"
    for k in range(n): png(root / 'img' / f'{k}.png', (k, k, k))
    (root / 'train.csv').write_text(''.join(l + '\n' for l in lines))
    return root

def count_decodes(monkeypatch):
    "A list that grows by one path each time an image file is decoded"
    seen, read = [], data.read_image
    monkeypatch.setattr(data, 'read_image', lambda p, s=None: (seen.append(str(p)), read(p, s))[1])
    return seen


# ---------------------------------------------------------------------------------------- images as users hold them
def test_to_model_input_forms():
    u8 = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    x = to_model_input(u8)
    assert x.dtype == torch.float32 and torch.equal(to_uint8(x), u8)
    assert torch.equal(to_model_input(u8.float() / 255), x)                          # [0, 1] (ToTensor) rescaled
    assert torch.equal(to_model_input(x), x) and torch.equal(to_model_input(x.double()), x)   # [-1, 1] kept, as float32
    assert torch.equal(to_model_input(u8[0]), x[:1])                                 # (C, H, W): a batch of one
    pil = [Image.fromarray(a) for a in u8.permute(0, 2, 3, 1).numpy()]
    assert torch.equal(to_model_input(pil), x) and torch.equal(to_model_input(pil[0]), x[:1])
    grey = to_model_input(Image.new('L', (8, 4), 255))
    assert grey.shape == (1, 1, 4, 8) and (grey == 1).all()                          # grey stays one channel
    assert to_model_input(torch.ones(1, 3, 4, 4)).eq(1).all()                        # all white in [-1, 1] is not [0, 1]
    assert to_model_input(torch.zeros(0, 3, 4, 4)).shape == (0, 3, 4, 4)

@pytest.mark.parametrize('bad, words', [
    (torch.full((1, 3, 4, 4), 200.), 'must lie in [-1, 1] or [0, 1]'),               # 0..255 as floats
    (torch.full((1, 3, 4, 4), float('nan')), 'must lie in'),
    (torch.zeros(1, 4, 4, 3), 'C = 1 or 3'),                                         # channels last
    (torch.zeros(1, 3, 4, 4, dtype=torch.int32), 'uint8 (0..255) or float'),
    ('a.png', 'must be a tensor, a PIL image'),
    ([], 'must be a tensor, a PIL image')])
def test_to_model_input_refuses(bad, words):
    with pytest.raises((ValueError, TypeError)) as e: to_model_input(bad)
    assert words in str(e.value) and '\n' not in str(e.value)

def test_to_8bit_scales_16_bit_and_composites_alpha(tmp_path):
    a = np.array([[0, 257, 32896, 65535]], np.uint16)
    Image.fromarray(a).save(tmp_path / 'g16.png')
    with Image.open(tmp_path / 'g16.png') as im: assert im.mode.startswith('I')
    assert to_model_input(Image.open(tmp_path / 'g16.png')).shape == (1, 1, 1, 4)
    assert to_uint8(to_model_input(Image.open(tmp_path / 'g16.png'))).flatten().tolist() == [0, 1, 128, 255]
    png(tmp_path / 'ds/a/1.png', 32896, size=8, mode='I;16'); png(tmp_path / 'ds/b/1.png', 0, size=8, mode='I;16')
    ds = get_dataset(tmp_path / 'ds', image_size=8)
    assert ds.x[0].unique().tolist() == [128] and ds.x[1].unique().tolist() == [0]  # not clipped to white
    rgba = Image.new('RGBA', (4, 4), (255, 0, 0, 0))
    assert to_uint8(to_model_input(rgba)).unique().tolist() == [255]                # transparent: white

def test_to_pil_round_trip():
    x = to_model_input(torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8))
    ims = to_pil(x)
    assert [im.mode for im in ims] == ['RGB', 'RGB'] and torch.equal(to_model_input(ims), x)
    one = to_pil(x[0, :1])
    assert isinstance(one, Image.Image) and one.mode == 'L'


# ------------------------------------------------------------------------------------------------- images in memory
def test_as_imageset_tensors_and_imageset():
    x, y = torch.rand(6, 3, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    ds = as_imageset((x, y))
    assert ds.x.dtype == torch.uint8 and ds.classes == ['0', '1', '2'] and ds.y.tolist() == y.tolist()
    assert as_imageset(ds) is ds and as_imageset(ds, ['a', 'b', 'c']).classes == ['a', 'b', 'c']
    assert torch.equal(as_imageset((ds.x, y.int())).x, ds.x)                        # uint8 images, int32 labels
    with pytest.raises(ValueError, match='int64'): as_imageset((ds.x, y.float()))           # float labels
    with pytest.raises(ValueError, match=r'\[-1, 3\)'): as_imageset((ds.x, y + 1), ['a', 'b', 'c'])

def test_as_imageset_torch_datasets():
    class Pets(torch.utils.data.Dataset):                                            # PIL images, as ImageFolder yields
        classes = ['cat', 'T-shirt/top']
        def __len__(self): return 4
        def __getitem__(self, i): return Image.new('RGB', (8, 8), (60 * i, 0, 0)), i % 2
    ds = as_imageset(Pets())
    assert ds.classes == ['cat', 'T-shirt or top'] and ds.y.tolist() == [0, 1, 0, 1] and ds.x[:, 0, 0, 0].tolist() == [0, 60, 120, 180]
    tensors = torch.utils.data.TensorDataset(ds.x.float() / 255, ds.y)              # ToTensor-like floats
    assert torch.equal(as_imageset(tensors).x, ds.x)
    loader = torch.utils.data.DataLoader(tensors, batch_size=3)
    assert torch.equal(as_imageset(loader).x, ds.x) and as_imageset(loader).classes == ['0', '1']
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self): return iter([(ds.x[i], int(ds.y[i])) for i in range(4)])
    assert torch.equal(as_imageset(Stream()).x, ds.x)

@pytest.mark.parametrize('bad', ['builtin', 42, (torch.zeros(2, 3, 4, 4),)])
def test_as_imageset_refuses(bad):
    with pytest.raises(TypeError, match='must be an ImageSet, a pair'): as_imageset(bad)

@pytest.mark.parametrize('bad', [builtin_dataset(1), (torch.zeros(2, 3, 4, 4), torch.zeros(2))])
def test_get_dataset_points_in_memory_data_elsewhere(bad):
    with pytest.raises(TypeError, match='as_imageset') as e: get_dataset(bad)
    assert 'File name too long' not in str(e.value)

def test_empty_data_name_is_not_the_current_folder(tmp_path, monkeypatch):
    class_folders(tmp_path); monkeypatch.chdir(tmp_path)                             # '' from an unset variable
    with pytest.raises(ValueError, match="unknown dataset ''"): run_split('')
    assert len(get_dataset('.')) == 6                                                # the current folder, named


# ------------------------------------------------------------------------------------------------ the split of a run
def test_run_split_builtin_matches_hold_out():
    full = get_dataset('builtin')
    tr, va = run_split('builtin')
    tr0, va0 = data.train_val_split(full)
    assert torch.equal(tr.x, tr0.x) and torch.equal(va.y, va0.y)
    small, _ = run_split('builtin', max_train=64, max_val=8)
    assert len(small) == 64 and set(small.paths) <= set(tr.paths)

def test_run_split_draws_only_what_it_keeps():
    tr, va = run_split('builtin', image_size=MAX_IMAGE_SIZE, max_train=16, max_val=4)
    assert tr.x.shape == (16, 1, MAX_IMAGE_SIZE, MAX_IMAGE_SIZE) and len(va) == 4
    listing = list_dataset('builtin', image_size=MAX_IMAGE_SIZE)
    assert isinstance(listing, ImageListing) and listing.subset([5]).load().x.shape == (1, 1, MAX_IMAGE_SIZE, MAX_IMAGE_SIZE)

@pytest.mark.parametrize('size', [1000, 30, 0, True, 8.0])
def test_image_size_refused(size):
    with pytest.raises(ValueError, match='image_size'): run_split('builtin', image_size=size, max_train=8)
    with pytest.raises(ValueError, match='image_size'): get_dataset('builtin', image_size=size)

def test_run_split_decodes_only_kept_images(tmp_path, monkeypatch):
    root = class_folders(tmp_path / 'd', n=20)
    seen = count_decodes(monkeypatch)
    tr, va = run_split(root, max_train=5, max_val=2, image_size=8)
    assert (len(tr), len(va)) == (5, 2) and len(seen) == 7
    seen.clear(); run_split(root, max_train=5, max_val=2)                            # size from the first image's header: one more
    assert len(seen) == 8

def test_run_split_in_memory_and_resized():
    x, y = torch.randint(0, 256, (40, 3, 10, 10), dtype=torch.uint8), torch.arange(40) % 2
    tr, va = run_split((x, y), val_frac=0.25)
    assert (len(tr), len(va), tr.x.shape[-1]) == (30, 10, 8)                         # default size: 10 -> 8
    assert run_split((x, y), image_size=16)[0].x.shape[-1] == 16

def test_run_split_refuses_one_class(tmp_path):
    with pytest.raises(ValueError, match='at least 2 classes'): run_split(class_folders(tmp_path / 'one', ['cat']))
    with pytest.raises(ValueError, match='max_train=1'): run_split('builtin', max_train=1)
    png(tmp_path / 'plain/a.png'); png(tmp_path / 'plain/b.png')
    with pytest.warns(UserWarning, match='without a label'), pytest.raises(ValueError, match='classes.txt'): run_split(tmp_path / 'plain')

def test_run_split_warns_of_unused_and_unlabelled(tmp_path):
    root = csv_folder(tmp_path / 'd', ['img/0.png,0', 'img/1.png,0', 'img/2.png,2', 'img/3.png,-1'])
    with pytest.warns(UserWarning) as w: tr, va = run_split(root, val_frac=0)
    msgs = ' | '.join(str(m.message) for m in w)
    assert "class(es) ['1']" in msgs and '1 image(s) without a label' in msgs and len(tr) == 3

def test_validation_csv_never_shares_images_with_training(tmp_path):
    root = csv_folder(tmp_path / 'd', ['img/0.png,0', 'img/1.png,1', 'img/2.png,0', 'img/3.png,1'])
    (root / 'validation.csv').write_text('./img/2.png,0\nimg/3.png,1\n')             # also training images
    with pytest.warns(UserWarning, match='2 of its images are training images'): tr, va = run_split(root)
    assert tr.paths == ['img/0.png', 'img/1.png'] and va.paths == ['./img/2.png', 'img/3.png']

def test_fingerprint_changes_with_the_data():
    ds = builtin_dataset(2)
    same = ImageSet(ds.x.clone(), ds.y.clone(), list(ds.paths), list(ds.classes))
    assert fingerprint(ds) == fingerprint(same)
    x = ds.x.clone(); x[0, 0, 0, 0] += 1
    for other in (ImageSet(x, ds.y, ds.paths, ds.classes), ImageSet(ds.x, ds.y.flip(0), ds.paths, ds.classes),
                  ImageSet(ds.x, ds.y, ds.paths, ['a', 'b', 'c', 'd'])):
        assert fingerprint(other) != fingerprint(ds)


# ---------------------------------------------------------------------------------------------------- folder layouts
def test_class_folders_any_split(tmp_path):
    for split in ('train', 'val', 'test'): class_folders(tmp_path / split, n=1)
    val = get_dataset(tmp_path, 'val', 8)
    assert val.paths == ['val/cat/0.png', 'val/dog/0.png'] and val.classes == ['cat', 'dog']
    flat = class_folders(tmp_path / 'flat', n=1)
    with pytest.raises(FileNotFoundError, match='has no test split'): get_dataset(flat, 'test')

def test_plain_folder_unlabelled(tmp_path):
    for k in range(3): png(tmp_path / 'p' / f'{k}.png')
    ds = get_dataset(tmp_path / 'p', 'test', 8)
    assert ds.y.tolist() == [-1] * 3 and ds.classes == [] and len(get_dataset(tmp_path / 'p')) == 3
    (tmp_path / 'p' / 'classes.txt').write_text('cat\ndog\n')
    assert get_dataset(tmp_path / 'p').classes == ['cat', 'dog']
    png(tmp_path / 'q' / 'test' / '0.png')                                          # root/test/ holding images: a plain split
    assert get_dataset(tmp_path / 'q', 'test').paths == ['test/0.png']

def test_csv_and_class_folders_need_a_choice(tmp_path):
    root = class_folders(tmp_path / 'd')
    (root / 'train.csv').write_text('cat/0.png,0\ndog/0.png,1\n')
    with pytest.raises(ValueError, match='holds both train.csv and class folders') as e: get_dataset(root)
    assert str(root / 'train.csv') in str(e.value)
    assert get_dataset(root / 'train.csv').paths == ['cat/0.png', 'dog/0.png']       # naming the CSV chooses it
    (root / 'test.csv').write_text('dog/1.png,1\n')
    assert get_dataset(root / 'train.csv', 'test').paths == ['dog/1.png']            # other splits: CSVs beside it

@pytest.mark.parametrize('layout', ['csv', 'folders'])
def test_fifo_refused_without_blocking(tmp_path, layout):
    root = class_folders(tmp_path / 'd')
    os.mkfifo(root / 'cat' / 'zz.png')                                               # opening it would block for ever
    if layout == 'csv': (root / 'list.csv').write_text('cat/0.png,0\ndog/0.png,1\ncat/zz.png,0\n')
    with pytest.raises((ValueError, FileNotFoundError), match='regular file') as e:
        get_dataset(root / 'list.csv' if layout == 'csv' else root)
    assert 'zz.png' in str(e.value)

def test_duplicate_csv_rows(tmp_path):
    root = csv_folder(tmp_path / 'd', ['img/0.png,0', 'img/1.png,1', './img/0.png,0', 'img/../img/1.png,1'])
    with pytest.warns(UserWarning, match=r'2 line\(s\) list an image again \(first: line 3\)'): ds = get_dataset(root)
    assert ds.paths == ['img/0.png', 'img/1.png']
    (root / 'train.csv').write_text('img/0.png,0\nimg/1.png,1\nimg/0.png,1\n')
    with pytest.raises(ValueError, match='line 3: .* listed again with another label'): get_dataset(root)

def test_labels_outside_the_classes_refused(tmp_path):
    root = csv_folder(tmp_path / 'd', ['img/0.png,0', 'img/1.png,2'])
    (root / 'classes.txt').write_text('cat\ndog\n')
    with pytest.raises(ValueError, match=r'line 2: label 2 is outside \[-1, 2\)'): get_dataset(root)

@pytest.mark.parametrize('encoding', ['utf-16', 'latin-1'])
def test_csv_not_utf8(tmp_path, encoding):
    root = csv_folder(tmp_path / 'd', [])
    (root / 'train.csv').write_text('img/0.png,0\nimg/1.png,1\nimg/é.png,1\n', encoding=encoding)
    with pytest.raises(ValueError, match='is not UTF-8 text: save it as UTF-8') as e: get_dataset(root)
    assert 'train.csv' in str(e.value)

def test_file_name_not_utf8(tmp_path):
    root = class_folders(tmp_path / 'd')
    name = os.fsdecode(b'bad\xff.png')                                               # a Latin-1 name on a UTF-8 system
    png(root / 'cat' / name)
    with pytest.raises(ValueError, match='not UTF-8 text; rename it') as e: get_dataset(root)
    str(e.value).encode('utf-8')                                                     # the message itself prints anywhere

def test_missing_and_unreadable_files_named(tmp_path):
    root = csv_folder(tmp_path / 'd', ['img/0.png,0', 'img/9.png,1'])
    with pytest.raises(FileNotFoundError, match='line 2: .*9.png'): get_dataset(root)
    (root / 'img' / '1.png').write_bytes(b'not a png')
    (root / 'train.csv').write_text('img/0.png,0\nimg/1.png,1\n')
    with pytest.raises(ValueError, match=r'cannot read image .*1.png .*replace or remove it'): get_dataset(root)

def test_class_folder_names_in_nfd(tmp_path):
    "A file system may spell 'café' with a combining accent (NFD); class names are NFC: the folder still finds its class"
    class_folders(tmp_path / 'd', ['cafe\u0301', 'tea'], n=1)
    ds = get_dataset(tmp_path / 'd')
    assert ds.classes == ['caf\u00e9', 'tea'] and ds.y.tolist() == [0, 1]
