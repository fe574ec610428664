"""`port_weights/port.py --ema`: the EMA weights of a training checkpoint that holds both.

The checkpoints are written here, without PyTorch, in torch's zip format (what
`torch.save` writes since 1.6): `archive/data.pkl` pickles the containers, each
tensor as `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`
with its storage a persistent id `('storage', torch.<X>Storage, key, 'cpu', numel)`
whose bytes are `archive/data/<key>`.  The two layouts are the ones the official
trainers save: timm's CheckpointSaver (`state_dict` + `state_dict_ema`: TLT,
SP-ViT) and DeiT's main.py (`model` + `model_ema`: DeiT, PiT, PerViT).
"""
import collections
import io
import json
import os
import pickle
import zipfile

import numpy as np
import paddle
import pytest
import yaml

from engine.weights import MissingEMAError, load_checkpoint
from port_weights.port import main as port_main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, 'tests', 'fixtures')

_STORAGE_NAMES = {np.dtype(np.float32): 'FloatStorage', np.dtype(np.float64): 'DoubleStorage',
                  np.dtype(np.int64): 'LongStorage', np.dtype(np.float16): 'HalfStorage'}


class _Global:
    """Pickled as the GLOBAL `module.name` without importing `module` (torch is not installed)."""

    def __init__(self, module, name):
        self.module, self.name = module, name

    def __call__(self, *args):   # pickle requires a callable reduce function; never called here
        raise AssertionError('only pickled')


class _Storage:
    def __init__(self, key, array):
        self.key, self.array = key, array


class _Tensor:
    def __init__(self, storage):
        self.storage = storage

    def __reduce__(self):
        a = self.storage.array
        stride = tuple(s // a.itemsize for s in a.strides)
        return (_Global('torch._utils', '_rebuild_tensor_v2'),
                (self.storage, 0, tuple(a.shape), stride, False, collections.OrderedDict()))


class _TorchPickler(pickle._Pickler):   # the Python pickler: its dispatch table can be extended
    dispatch = dict(pickle._Pickler.dispatch)

    def _save_global(self, obj):
        self.write(pickle.GLOBAL + f'{obj.module}\n{obj.name}\n'.encode())

    dispatch[_Global] = _save_global

    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            return ('storage', _Global('torch', _STORAGE_NAMES[obj.array.dtype]), obj.key, 'cpu',
                    obj.array.size)
        return None


def write_pth(path, obj):
    """Save `obj` (dicts / lists of NumPy arrays and plain values) as torch.save would."""
    storages = []

    def wrap(value):
        if isinstance(value, np.ndarray):
            storages.append(_Storage(str(len(storages)), np.ascontiguousarray(value)))
            return _Tensor(storages[-1])
        if isinstance(value, dict):
            return collections.OrderedDict((k, wrap(v)) for k, v in value.items())
        if isinstance(value, (list, tuple)):
            return type(value)(wrap(v) for v in value)
        return value

    buffer = io.BytesIO()
    _TorchPickler(buffer, protocol=2).dump(wrap(obj))
    with zipfile.ZipFile(path, 'w') as zf:
        zf.writestr('archive/data.pkl', buffer.getvalue())
        zf.writestr('archive/byteorder', 'little')
        zf.writestr('archive/version', '3\n')
        for storage in storages:
            zf.writestr(f'archive/data/{storage.key}', storage.array.tobytes())


def _weights(seed):
    rng = np.random.default_rng(seed)
    return {'blocks.0.fc.weight': rng.standard_normal((3, 4)).astype(np.float32),
            'blocks.0.fc.bias': rng.standard_normal(3).astype(np.float32),
            'bn.num_batches_tracked': np.array(7, dtype=np.int64)}


def _assert_same(state, expected):
    assert list(state) == list(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(state[key], value, err_msg=key)


def test_writer_round_trips_through_the_reader(tmp_path):
    weights = _weights(0)
    write_pth(tmp_path / 'w.pth', {'model': weights, 'epoch': 3})
    _assert_same(load_checkpoint(str(tmp_path / 'w.pth')), weights)


@pytest.mark.parametrize('model_key, ema_key', [('state_dict', 'state_dict_ema'),   # timm / TLT / SP-ViT
                                                ('model', 'model_ema')])            # DeiT / PiT / PerViT
def test_ema_weights_are_taken_only_with_ema(tmp_path, model_key, ema_key):
    model, ema = _weights(1), _weights(2)
    src = str(tmp_path / 'ckpt.pth')
    write_pth(src, {'epoch': 309, model_key: model, 'optimizer': {'state': {}}, ema_key: ema,
                    'args': {'lr': 1e-3}})
    _assert_same(load_checkpoint(src), model)
    _assert_same(load_checkpoint(src, ema=True), ema)


def test_ema_under_ddp_prefix(tmp_path):
    ema = _weights(3)
    src = str(tmp_path / 'ckpt.pth')
    write_pth(src, {'state_dict': _weights(4), 'state_dict_ema': {f'module.{k}': v for k, v in ema.items()}})
    _assert_same(load_checkpoint(src, ema=True), ema)


def test_missing_ema_lists_what_the_checkpoint_holds(tmp_path):
    src = str(tmp_path / 'no_ema.pth')
    write_pth(src, {'model': _weights(5), 'optimizer': {}, 'epoch': 299})
    with pytest.raises(MissingEMAError) as info:
        load_checkpoint(src, ema=True)
    message = str(info.value)
    assert 'no_ema.pth' in message and 'state_dict_ema or model_ema' in message
    assert 'top-level keys: epoch, model, optimizer' in message

    bare = str(tmp_path / 'bare.pth')
    write_pth(bare, _weights(6))
    with pytest.raises(MissingEMAError, match=r'a bare state dict of 3 tensors \(blocks\.0\.fc\.weight'):
        load_checkpoint(bare, ema=True)

    np.savez(tmp_path / 'w.npz', **_weights(7))
    with pytest.raises(MissingEMAError, match=r'a \.npz file holds one set of weights'):
        load_checkpoint(str(tmp_path / 'w.npz'), ema=True)


def _pit_mini_config(tmp_path):
    with open(os.path.join(FIXTURES, 'pit_mini', 'meta.json')) as f:
        a = json.load(f)['official_class_args']
    cfg = {'DATA': {'IMAGE_SIZE': a['image_size']},
           'MODEL': {'TYPE': 'PiT', 'NAME': 'pit_mini', 'NUM_CLASSES': a['num_classes'],
                     'PATCH_SIZE': a['patch_size'], 'STRIDE': a['stride'], 'BASE_DIMS': a['base_dims'],
                     'DEPTH': a['depth'], 'NUM_HEADS': a['heads'], 'MLP_RATIO': float(a['mlp_ratio']),
                     'DISTILLED': False, 'DROPPATH': 0.0}}
    path = str(tmp_path / 'pit_mini.yaml')
    with open(path, 'w') as f:
        yaml.safe_dump(cfg, f)
    return path


def test_port_cli_writes_the_ema_weights(tmp_path, capsys):
    """A timm-style checkpoint of the official PiT fixture: --ema ports the average, which gives
    the official logits; the non-EMA weights (perturbed) do not."""
    official = load_checkpoint(os.path.join(FIXTURES, 'pit_mini', 'model.pth'))
    perturbed = {k: (v + 0.5).astype(v.dtype) if v.dtype.kind == 'f' else v for k, v in official.items()}
    src = str(tmp_path / 'model_best.pth.tar')
    write_pth(src, {'epoch': 309, 'arch': 'pit_mini', 'state_dict': perturbed, 'state_dict_ema': official})
    cfg = _pit_mini_config(tmp_path)
    x = os.path.join(FIXTURES, 'pit_mini', 'input.npy')
    ref = os.path.join(FIXTURES, 'pit_mini', 'logits.npy')

    dst = str(tmp_path / 'ema.pdparams')
    assert port_main(['--src', src, '--config', cfg, '--dst', dst, '--ema',
                      '--check-input', x, '--check-logits', ref]) == 0
    assert '(EMA weights)' in capsys.readouterr().out
    saved = paddle.load(dst)
    np.testing.assert_array_equal(saved['head.bias'].numpy(), official['head.bias'])

    assert port_main(['--src', src, '--config', cfg, '--dst', str(tmp_path / 'model.pdparams'),
                      '--check-input', x, '--check-logits', ref]) == 1   # the model weights differ


def test_port_cli_missing_ema_exits_2_with_one_message(tmp_path, capsys):
    src = str(tmp_path / 'checkpoint.pth')
    write_pth(src, {'model': _weights(8), 'epoch': 1})
    dst = tmp_path / 'out.pdparams'
    assert port_main(['--src', src, '--config', _pit_mini_config(tmp_path), '--dst', str(dst), '--ema']) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and 'top-level keys: epoch, model' in err and 'Traceback' not in err
    assert not dst.exists()
