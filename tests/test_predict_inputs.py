"""tools/predict.py as users run it: folders, list files, batches, the CSV, accuracy, bad images.

The model is the tiny exported model of tests/test_export.py; every expected
figure is computed here from `Classifier.predict` on the same files, one by one.
"""
import csv
import os

import numpy as np
import pytest
from PIL import Image

from engine.errors import cli
from test_export import exported, tiny_family, trained  # noqa: F401  (module fixtures)
from tools import predict


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    """A folder of 5 images (one in a sub-folder, one with an upper-case extension), a text file
    that is not an image, and a hidden file."""
    root = tmp_path_factory.mktemp('photos')
    (root / 'sub').mkdir()
    rng = np.random.default_rng(5)
    for i, name in enumerate(['b.jpg', 'a.png', 'sub/c.jpg', 'd.JPEG', 'e.png']):
        pixels = rng.integers(0, 256, (40 + 7 * i, 60 - 5 * i, 3), dtype=np.uint8)
        pixels[: 10 + 4 * i] //= 4
        Image.fromarray(pixels).save(str(root / name), format='PNG' if name.endswith('png') else 'JPEG')
    (root / 'notes.txt').write_text('not an image\n')
    (root / '.hidden.jpg').write_bytes(b'')
    return root


IMAGES = ['a.png', 'b.jpg', 'd.JPEG', 'e.png', 'sub/c.jpg']      # sorted, as the folder is read


@pytest.fixture(scope='module')
def reference(exported, folder):
    """{relative path: (top-7 classes, probabilities)} of each image predicted alone."""
    classifier = predict.Classifier(exported, predict.load_config(exported), threads=1)
    return {name: tuple(a[0] for a in classifier.predict([str(folder / name)], k=7)) for name in IMAGES}


def read_csv(path):
    with open(path, newline='', encoding='utf-8') as f:
        return list(csv.reader(f))


def run(exported, *args):
    return predict.main(['--model_dir', exported, '--threads', '1', '--quiet', *map(str, args)])


@pytest.mark.parametrize('batch_size', [1, 3])
def test_folder_to_csv_at_any_batch_size(exported, folder, reference, tmp_path, capsys, batch_size):
    out = tmp_path / 'top.csv'
    assert run(exported, folder, '--csv', out, '--topk', 2, '--batch_size', batch_size) == 0
    rows = read_csv(out)
    assert [os.path.relpath(r[0], folder).replace(os.sep, '/') for r in rows] == IMAGES
    for row, name in zip(rows, IMAGES):
        indices, probs = reference[name]
        assert [int(c) for c in row[1::2]] == list(indices[:2])
        np.testing.assert_allclose([float(p) for p in row[2::2]], probs[:2], atol=1e-5)
    summary = capsys.readouterr().out.splitlines()[-1]
    assert summary.startswith('5 images in ') and 'images/s' in summary and 'skipped' not in summary


def test_csv_names_classes(exported, folder, tmp_path):
    names = tmp_path / 'names.txt'
    names.write_text(''.join(f'kind {i}\n' for i in range(7)))
    out = tmp_path / 'top.csv'
    run(exported, folder / 'a.png', '--csv', out, '--topk', 3, '--labels', names)
    row, = read_csv(out)
    assert row[0] == str(folder / 'a.png') and len(row) == 1 + 3 * 3
    assert all(row[3 + 3 * r] == f'kind {row[1 + 3 * r]}' for r in range(3))


def test_list_with_labels_prints_accuracy(exported, folder, reference, tmp_path, capsys):
    rank = {'a.png': 0, 'b.jpg': 0, 'd.JPEG': 3, 'e.png': 6, 'sub/c.jpg': 1}   # of the true label
    labels = {name: int(reference[name][0][rank[name]]) for name in IMAGES}
    lines = ''.join(f'{os.path.join("..", folder.name, name)} {labels[name]}\n' for name in IMAGES)
    (folder.parent / 'lists').mkdir(exist_ok=True)
    listed = folder.parent / 'lists' / 'val_list.txt'          # paths are relative to the list's folder
    listed.write_text(lines)
    assert run(exported, listed, '--batch_size', 2) == 0
    top1 = sum(reference[n][0][0] == labels[n] for n in IMAGES)
    top5 = sum(labels[n] in reference[n][0][:5] for n in IMAGES)
    assert (top1, top5) == (2, 4)
    assert capsys.readouterr().out.splitlines()[-1] == \
        f'accuracy over 5 labelled images: top-1 {100 * top1 / 5:.2f}%, top-5 {100 * top5 / 5:.2f}%'


def test_list_of_paths_only(exported, folder, reference, tmp_path):
    listed = folder / 'paths.txt'
    listed.write_text('sub/c.jpg\n\nb.jpg\n')
    out = tmp_path / 'top.csv'
    run(exported, listed, '--csv', out, '--topk', 1)
    assert [(r[0], int(r[1])) for r in read_csv(out)] == \
        [(str(folder / n), reference[n][0][0]) for n in ('sub/c.jpg', 'b.jpg')]


def test_bad_image_is_skipped_named_and_counted(exported, folder, reference, tmp_path, capsys, caplog):
    bad = tmp_path / 'broken.jpg'
    bad.write_bytes(b'\xff\xd8 truncated')
    out = tmp_path / 'top.csv'
    run(exported, folder / 'a.png', bad, folder / 'b.jpg', tmp_path / 'gone.jpg', '--csv', out, '--topk', 1)
    assert [r[0] for r in read_csv(out)] == [str(folder / 'a.png'), str(folder / 'b.jpg')]
    captured = capsys.readouterr()
    logged = caplog.text                      # the engine logs each skipped image, to stderr
    assert str(bad) in logged and str(tmp_path / 'gone.jpg') in logged
    assert captured.out.splitlines()[-1].startswith('2 images in ')
    assert 'skipped 2 unreadable image(s)' in captured.out


def test_wrong_list_line_names_file_and_line(exported, folder, capsys):
    listed = folder / 'wrong.txt'
    listed.write_text('a.png 1\nb.jpg one\n')
    with pytest.raises(SystemExit) as stop:
        cli(predict.main, ['--model_dir', exported, '--quiet', str(listed)])
    assert stop.value.code == 2
    assert f'{listed}:2: label \'one\' is not an integer' in capsys.readouterr().err


def test_progress_bar_only_on_a_terminal(capsys, monkeypatch):
    predict.Progress(4).draw(2)
    assert capsys.readouterr().err == ''                       # pytest's stderr is not a terminal
    monkeypatch.setattr(type(__import__('sys').stderr), 'isatty', lambda self: True, raising=False)
    predict.Progress(4, quiet=True).draw(2)
    assert capsys.readouterr().err == ''
    predict.Progress(4, width=8).draw(2)
    assert capsys.readouterr().err.startswith('\r[####....] 2/4 images, ')
