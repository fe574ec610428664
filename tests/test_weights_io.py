"""The restricted readers of user-supplied files (issue #19).

- what `paddle.save` writes (model and optimizer state dicts, our `.pdopt`, protocols 2 to 4, the
  DenseTensor reducer, big arrays cut in pieces) reads back as `paddle.load` reads it;
- every hostile pickle (tests/hostile.py) is refused by the `.pdparams` reader and by both `.pth`
  formats, naming the file and the global, and the marker file is never created;
- a `.pth` tensor that reaches outside its storage is refused with its key;
- byte flips and truncations of real files (seeded) end in the reader's own error or a load.
"""
import builtins
import copyreg
import io
import os
import pickle
import pickletools
import random
import struct
import sys
import time
import types
import zipfile

import numpy as np
import paddle
import pytest

import hostile
from engine.checkpoint import CheckpointManager
from engine.optim import WarmupCosine
from engine.weights_io import UnsafePickleError, WeightsFileError, load_paddle, load_state_dict
from engine.torch_reader import UnsafeCheckpointError, load_torch
from engine.weights import load_checkpoint

FORMATS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fixtures', 'torch_formats')


def _assert_same(ours, ref, where='root'):
    """Deep equality: same containers, same keys, arrays equal in dtype, shape and value."""
    if isinstance(ref, paddle.Tensor):
        ref = ref.numpy()
    if isinstance(ref, np.ndarray):
        assert isinstance(ours, np.ndarray), where
        assert ours.dtype == ref.dtype and ours.shape == ref.shape, where
        np.testing.assert_array_equal(ours, ref, err_msg=where)
    elif isinstance(ref, dict):
        assert isinstance(ours, dict) and sorted(map(str, ours)) == sorted(map(str, ref)), where
        for k in ref:
            _assert_same(ours[k], ref[k], f'{where}.{k}')
    elif isinstance(ref, (list, tuple)):
        assert type(ours) is type(ref) and len(ours) == len(ref), where
        for i, (a, b) in enumerate(zip(ours, ref)):
            _assert_same(a, b, f'{where}[{i}]')
    else:
        assert ours == ref and type(ours) is type(ref), (where, ours, ref)


class _Net(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.fc = paddle.nn.Linear(4, 6)
        self.norm = paddle.nn.LayerNorm(6)
        self.head = paddle.nn.Linear(6, 3)

    def forward(self, x):
        return self.head(self.norm(self.fc(x)))


def _trained():
    paddle.seed(0)
    model = _Net()
    sched = WarmupCosine(0.1, 0.01, 0.001, warmup_steps=2, total_steps=20)
    opt = paddle.optimizer.AdamW(learning_rate=sched, parameters=model.parameters(), weight_decay=0.05)
    for _ in range(2):
        model(paddle.randn([5, 4])).sum().backward()
        opt.step()
        opt.clear_grad()
        sched.step()
    return model, opt, sched


@pytest.fixture(scope='module')
def trained():
    return _trained()


# ----------------------------------------------------------------------------- what paddle.save writes

@pytest.mark.parametrize('protocol', [2, 3, 4])
def test_paddle_state_dicts_read_as_paddle_load_reads_them(trained, tmp_path, protocol):
    model, opt, sched = trained
    cases = {
        'model.pdparams': model.state_dict(),
        'adamw.pdopt': opt.state_dict(),   # moments, beta pows, LR_Scheduler state
        'mixed.pdopt': {'optimizer': opt.state_dict(), 'lr_scheduler': sched.state_dict(), 'epoch': 7,
                        'best': np.float64(81.5), 'scaler': None, 'extra': {'names': ['a', 'b'], 't': (1, 2.5)}},
    }
    for name, obj in cases.items():
        path = str(tmp_path / name)
        paddle.save(obj, path, protocol=protocol)
        _assert_same(load_paddle(path), paddle.load(path, return_numpy=True), name)
    state = load_state_dict(str(tmp_path / 'model.pdparams'))
    assert list(state) == list(model.state_dict())   # order kept, name table dropped
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(state[key], value.numpy())


def test_checkpoint_manager_files_read_as_paddle_load_reads_them(trained, tmp_path):
    """The `.pdopt` the checkpoint manager writes (structured optimizer names, scheduler, scaler)."""
    model, opt, sched = trained
    manager = CheckpointManager(str(tmp_path), 'net', save_freq=1)
    scaler = paddle.amp.GradScaler(enable=True, init_loss_scaling=1024.)
    prefix = manager.save(3, model, opt, sched, scaler=scaler, extra={'best_acc': 12.5, 'seen': np.arange(3)})
    for suffix in ('.pdparams', '.pdopt'):
        ours = load_paddle(prefix + suffix)
        _assert_same(ours, paddle.load(prefix + suffix, return_numpy=True), suffix)
    assert any(k.startswith('@fc.weight@') for k in load_paddle(prefix + '.pdopt')['optimizer'])
    # tensors=True: Paddle's Tensors as Tensors, NumPy arrays (a GPU scaler's scale) as arrays, as paddle.load
    ours, ref = load_paddle(prefix + '.pdopt', tensors=True), paddle.load(prefix + '.pdopt')
    for key, value in ref['optimizer'].items():
        if isinstance(value, paddle.Tensor):
            assert isinstance(ours['optimizer'][key], paddle.Tensor), key
            np.testing.assert_array_equal(ours['optimizer'][key].numpy(), value.numpy())
    assert type(ours['extra']['seen']) is type(ref['extra']['seen']) is np.ndarray


def test_dense_tensor_reducer_and_paddlevit_layout(tmp_path):
    """Paddle pickles a DenseTensor as eval('data', {'data': array}); PaddleViT publishes {name: array}."""
    tensor = paddle.to_tensor(np.arange(6, dtype=np.float32).reshape(2, 3))   # keeps the DenseTensor alive
    dense = tensor.value().get_tensor()
    paddle.save({'dense': dense, 'step': 3}, str(tmp_path / 'dense.pdopt'))
    assert b'eval' in (tmp_path / 'dense.pdopt').read_bytes()
    _assert_same(load_paddle(str(tmp_path / 'dense.pdopt')),
                 paddle.load(str(tmp_path / 'dense.pdopt'), return_numpy=True))
    published = {'patch_embed.proj.weight': np.ones((4, 3, 2, 2), np.float32), 'cls_token': np.zeros((1, 1, 4))}
    with open(tmp_path / 'vit.pdparams', 'wb') as f:
        pickle.dump(published, f, protocol=2)
    _assert_same(dict(load_state_dict(str(tmp_path / 'vit.pdparams'))), published)


@pytest.mark.parametrize('protocol', [2, 3])
def test_big_arrays_cut_in_pieces_are_joined(tmp_path, monkeypatch, protocol):
    """Protocols 2/3 cut arrays above 1 GB into pieces (`_unpack_saved_dict`); Paddle's own writer
    is run with its size limit lowered to 5 elements, by shadowing `int` in its module."""
    import paddle.framework.io_utils as io_utils
    monkeypatch.setattr(io_utils, 'int', lambda x: 5 if isinstance(x, float) and x > 1e6 else builtins.int(x),
                        raising=False)
    layer = paddle.nn.Linear(4, 3)   # weight: 12 elements -> 3 pieces; bias: 3 -> kept whole
    path = str(tmp_path / 'big.pdparams')
    paddle.save(layer.state_dict(), path, protocol=protocol)
    monkeypatch.undo()
    assert b'UnpackBigParamInfor@@' in open(path, 'rb').read()
    ours = load_state_dict(path)
    _assert_same(dict(ours), {k: v.numpy() for k, v in layer.state_dict().items()})
    _assert_same(load_paddle(path), paddle.load(path, return_numpy=True))


def _split_file(tmp_path, info, pieces):
    obj = dict(pieces)
    obj['UnpackBigParamInfor@@'] = info
    with open(tmp_path / 'split.pdparams', 'wb') as f:
        pickle.dump(obj, f, protocol=2)
    return str(tmp_path / 'split.pdparams')


def test_inconsistent_pieces_are_refused(tmp_path):
    pieces = {'w@@.0': np.arange(5.), 'w@@.1': np.arange(3.)}
    good = {'w': {'OriginShape': (2, 4), 'slices': ['w@@.0', 'w@@.1']}}
    assert load_state_dict(_split_file(tmp_path, good, pieces))['w'].shape == (2, 4)
    for info, why in [({'w': {'OriginShape': (3, 4), 'slices': ['w@@.0', 'w@@.1']}}, 'do not add up'),
                      ({'w': {'OriginShape': (2, 4), 'slices': ['w@@.0', 'nope']}}, 'missing'),
                      ({'w': {'OriginShape': (2, 4)}}, 'OriginShape, slices'),
                      ([1, 2], 'not a dict')]:
        with pytest.raises(WeightsFileError, match=why):
            load_state_dict(_split_file(tmp_path, info, pieces))


def test_not_a_state_dict_and_trailing_bytes(tmp_path):
    with open(tmp_path / 'ckpt.pdparams', 'wb') as f:
        pickle.dump({'model': {'w': np.zeros(2)}, 'epoch': 3}, f, protocol=2)
    with pytest.raises(WeightsFileError, match=r"ckpt\.pdparams: .*entry 'model' is a dict .*training checkpoint"):
        load_state_dict(str(tmp_path / 'ckpt.pdparams'))
    paddle.save({'w': paddle.zeros([2])}, str(tmp_path / 'w.pdparams'))
    with open(tmp_path / 'w.pdparams', 'ab') as f:   # a second pickle appended: refused, never read
        f.write(pickle.dumps(hostile.Call(os.system, f'touch {tmp_path / "pwned"}'), protocol=2))
    with pytest.raises(WeightsFileError, match='bytes after the end of the pickle'):
        load_paddle(str(tmp_path / 'w.pdparams'))
    assert not (tmp_path / 'pwned').exists()
    with pytest.raises(FileNotFoundError):
        load_paddle(str(tmp_path / 'missing.pdparams'))


# ----------------------------------------------------------------------------- hostile pickles

def _torch_zip(path, data_pkl, storages=(), compress=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, 'w', compression=compress) as zf:
        zf.writestr('archive/data.pkl', data_pkl)
        zf.writestr('archive/byteorder', 'little')
        for key, raw in storages:
            zf.writestr(f'archive/data/{key}', raw)
        zf.writestr('archive/version', '3\n')


def _torch_legacy(path, first_pickle):
    with open(path, 'wb') as f:
        f.write(first_pickle)


def _readers(tmp_path, blob):
    """(reader, path) for the same hostile pickle in a .pdparams, a .pth zip and a legacy .pth."""
    (tmp_path / 'evil.pdparams').write_bytes(blob)
    _torch_zip(tmp_path / 'evil_zip.pth', blob)
    _torch_legacy(tmp_path / 'evil_legacy.pth', blob)
    return [(load_paddle, str(tmp_path / 'evil.pdparams'), UnsafePickleError),
            (load_torch, str(tmp_path / 'evil_zip.pth'), UnsafeCheckpointError),
            (load_torch, str(tmp_path / 'evil_legacy.pth'), UnsafeCheckpointError)]


def test_every_hostile_pickle_is_refused_by_every_reader(tmp_path):
    marker = tmp_path / 'pwned'
    variants = hostile.all_variants(str(marker))
    assert len(variants) >= 100
    refused = 0
    for label, blob, regex in variants:
        for reader, path, error in _readers(tmp_path, blob):
            with pytest.raises(error) as info:
                reader(path)
            message = str(info.value)
            assert message.startswith(path), (label, path, message)
            assert __import__('re').search(regex, message), (label, path, message)
            assert not marker.exists(), (label, path)
            refused += 1
    print(f'{len(variants)} hostile pickles x 3 readers = {refused} refusals')


def test_a_registered_extension_code_is_refused_too(tmp_path):
    """EXT1 resolves through copyreg's registry, whose cache would skip find_class: refused outright."""
    marker = tmp_path / 'pwned'
    copyreg.add_extension('os', 'system', 0xf0)
    try:
        for reader, path, error in _readers(tmp_path, hostile.with_extension(str(marker))):
            with pytest.raises(error, match=r'refusing pickle opcode \(copyreg extension code'):
                reader(path)
    finally:
        copyreg.remove_extension('os', 'system', 0xf0)
    assert not marker.exists()


def test_refusal_is_a_user_error_and_keeps_its_old_type(tmp_path):
    from engine.errors import UserError
    assert issubclass(UnsafePickleError, UserError) and issubclass(WeightsFileError, UserError)
    assert issubclass(UnsafeCheckpointError, pickle.UnpicklingError)
    assert issubclass(UnsafeCheckpointError, UnsafePickleError)


# ----------------------------------------------------------------------------- .pth bounds

def _fake_torch(monkeypatch):
    """Modules named torch / torch._utils, only so pickle can write their globals (no torch here)."""
    torch = types.ModuleType('torch')
    utils = types.ModuleType('torch._utils')

    class FloatStorage:
        pass
    FloatStorage.__module__, FloatStorage.__qualname__ = 'torch', 'FloatStorage'

    class LongStorage:
        pass
    LongStorage.__module__, LongStorage.__qualname__ = 'torch', 'LongStorage'

    def _rebuild_tensor_v2(*args):
        raise AssertionError
    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = 'torch._utils', '_rebuild_tensor_v2'
    torch.FloatStorage, torch.LongStorage, torch._utils = FloatStorage, LongStorage, utils
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    monkeypatch.setitem(sys.modules, 'torch', torch)
    monkeypatch.setitem(sys.modules, 'torch._utils', utils)
    return torch, utils


class _Tensor:
    def __init__(self, fake, storage, offset, size, stride, kind='FloatStorage', numel=None):
        self.fake, self.storage, self.offset, self.size, self.stride = fake, storage, offset, size, stride
        self.kind, self.numel = kind, numel

    def __reduce__(self):
        torch, utils = self.fake
        return utils._rebuild_tensor_v2, (_Pid(getattr(torch, self.kind), self.storage, self.numel),
                                          self.offset, self.size, self.stride, False, {})


class _Pid:
    def __init__(self, kind, key, numel):
        self.kind, self.key, self.numel = kind, key, numel


class _TorchPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _Pid):
            return ('storage', obj.kind, obj.key, 'cpu', obj.numel)
        return None


def _write_pth(path, state, storages):
    buf = io.BytesIO()
    _TorchPickler(buf, protocol=2).dump({'model': state})
    _torch_zip(path, buf.getvalue(), storages)
    return str(path)


def test_tensor_views_are_checked_against_their_storage(tmp_path, monkeypatch):
    fake = _fake_torch(monkeypatch)
    four = np.arange(4, dtype=np.float32).tobytes()

    def tensor(*args, **kw):
        return _Tensor(fake, '0', *args, **{'numel': 4, **kw})

    good = _write_pth(tmp_path / 'good.pth', {'a.t': tensor(1, (3,), (1,)), 'a.b': tensor(0, (2, 2), (1, 2)),
                                              'a.z': tensor(0, (0, 9), (9, 1))}, [('0', four)])
    state = load_checkpoint(good)
    np.testing.assert_array_equal(state['a.t'], [1, 2, 3])
    np.testing.assert_array_equal(state['a.b'], [[0, 2], [1, 3]])
    assert state['a.z'].shape == (0, 9)
    cases = [
        ('64 elements', tensor(0, (64,), (1,)), 'reach element 63, past the end of its storage of 4'),
        ('50M elements', tensor(0, (50_000_000,), (1,)), 'past the end of its storage of 4 elements'),
        ('offset past the end', tensor(4, (1,), (1,)), 'reach element 4, past the end'),
        ('strides past the end', tensor(0, (2, 2), (3, 1)), 'reach element 4'),
        ('negative stride', tensor(3, (4,), (-1,)), 'negative or non-integer stride'),
        ('negative offset', tensor(-1, (1,), (1,)), 'offset -1 is not a non-negative integer'),
        ('negative size', tensor(0, (-2,), (1,)), 'negative or non-integer size'),
        ('overflowing shape', tensor(0, (2 ** 62, 2 ** 62), (1, 1)), 'past the end'),
        ('rank mismatch', tensor(0, (2, 2), (1,)), 'differ in length'),
        ('float size', tensor(0, (2.0,), (1,)), 'non-integer size'),
        ('storage of another dtype size', tensor(0, (1,), (1,), kind='LongStorage'),
         'holds 16 bytes, not the 32'),
        ('numel larger than the storage', tensor(0, (1,), (1,), numel=8), 'holds 16 bytes, not the 32'),
        ('missing storage', _Tensor(fake, '9', 0, (1,), (1,), numel=4), 'storage archive/data/9 is missing'),
        ('zero-stride expansion', tensor(0, (2 ** 16, 2 ** 16), (0, 0)), 'expands in memory'),
    ]
    for label, bad, why in cases:
        path = _write_pth(tmp_path / 'bad.pth', {'blocks.0.attn.qkv.weight': bad}, [('0', four)])
        with pytest.raises(WeightsFileError) as info:
            load_checkpoint(path)
        message = str(info.value)
        assert message.startswith(path) and 'model.blocks.0.attn.qkv.weight' in message, (label, message)
        assert why in message, (label, message)


def test_compressed_members_and_bad_byteorder_are_refused(tmp_path, monkeypatch):
    fake = _fake_torch(monkeypatch)
    buf = io.BytesIO()
    _TorchPickler(buf, protocol=2).dump({'w': _Tensor(fake, '0', 0, (4,), (1,), numel=4)})
    _torch_zip(tmp_path / 'deflated.pth', buf.getvalue(), [('0', bytes(16))], compress=zipfile.ZIP_DEFLATED)
    with pytest.raises(WeightsFileError, match='is compressed'):
        load_torch(str(tmp_path / 'deflated.pth'))
    with zipfile.ZipFile(tmp_path / 'order.pth', 'w') as zf:
        zf.writestr('archive/data.pkl', buf.getvalue())
        zf.writestr('archive/byteorder', 'middle')
    with pytest.raises(WeightsFileError, match='neither little nor big'):
        load_torch(str(tmp_path / 'order.pth'))


def test_shared_references_are_resolved_once(tmp_path):
    """A pickle of nested lists sharing one child has 2^60 paths: the walk must not follow them all."""
    node = [np.zeros(1)]
    for _ in range(60):
        node = [node, node]
    _torch_zip(tmp_path / 'dag.pth', pickle.dumps({'x': node}, protocol=2))
    start = time.perf_counter()
    load_torch(str(tmp_path / 'dag.pth'))
    assert time.perf_counter() - start < 2


# ----------------------------------------------------------------------------- fuzzing

def _mutants(blob, rng, count):
    """`count` seeded variations of `blob`: 1 to 4 random bytes changed, or a truncation."""
    for _ in range(count):
        if rng.random() < 0.25:
            yield blob[:rng.randrange(len(blob))]
        else:
            data = bytearray(blob)
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            yield bytes(data)


_PLAIN = (dict, list, tuple, set, frozenset, str, bytes, int, float, complex, bool, type(None),
          np.ndarray, np.generic)


def _plain(obj, depth=0):
    if depth > 50 or not isinstance(obj, _PLAIN):
        return False
    if isinstance(obj, np.ndarray):
        return not obj.dtype.hasobject
    if isinstance(obj, dict):
        return all(_plain(k, depth + 1) and _plain(v, depth + 1) for k, v in obj.items())
    if isinstance(obj, (list, tuple, set, frozenset)):
        return all(_plain(v, depth + 1) for v in obj)
    return True


def _fuzz(tmp_path, name, blob, reader, rng, count):
    """Every mutant loads (into plain values only) or raises WeightsFileError: never another
    exception, a crash or a hang.  Returns (loaded, refused)."""
    path = str(tmp_path / name)
    loaded = refused = 0
    for data in _mutants(blob, rng, count):
        with open(path, 'wb') as f:
            f.write(data)
        try:
            result = reader(path)
        except WeightsFileError:
            refused += 1
            continue
        assert _plain(result), data
        loaded += 1
    return loaded, refused


@pytest.mark.slow
def test_fuzz_pdparams_and_pdopt(trained, tmp_path):
    model, opt, sched = trained
    rng = random.Random(19)
    blobs = {}
    for protocol in (2, 4):
        paddle.save(model.state_dict(), str(tmp_path / 'm.pdparams'), protocol=protocol)
        paddle.save({'optimizer': opt.state_dict(), 'epoch': 3, 'lr': np.float64(0.1)},
                    str(tmp_path / 'o.pdopt'), protocol=protocol)
        blobs[f'model p{protocol}'] = (tmp_path / 'm.pdparams').read_bytes()
        blobs[f'pdopt p{protocol}'] = (tmp_path / 'o.pdopt').read_bytes()
    start, total = time.perf_counter(), {}
    for label, blob in blobs.items():
        total[label] = _fuzz(tmp_path, 'fuzz.pdparams', blob, load_paddle, rng, 600)
    assert sum(r for _, r in total.values()) > 1000   # most mutants are refused, and all cleanly
    assert time.perf_counter() - start < 30
    print('pdparams fuzz (loaded, refused):', total)


@pytest.mark.slow
def test_fuzz_pth_both_formats(tmp_path):
    rng = random.Random(1919)
    expected = load_torch(os.path.join(FORMATS, 'zip_format.pth'))
    start, total = time.perf_counter(), {}
    for name in ('zip_format.pth', 'legacy_format.pth'):
        blob = open(os.path.join(FORMATS, name), 'rb').read()
        total[name] = _fuzz(tmp_path, 'fuzz.pth', blob, load_torch, rng, 1200)
    # in the zip format every member is CRC-checked: whatever loads is exactly the original
    for data in _mutants(open(os.path.join(FORMATS, 'zip_format.pth'), 'rb').read(), random.Random(7), 600):
        (tmp_path / 'z.pth').write_bytes(data)
        try:
            got = load_torch(str(tmp_path / 'z.pth'))
        except WeightsFileError:
            continue
        _assert_same(got, expected)
    assert time.perf_counter() - start < 30
    print('pth fuzz (loaded, refused):', total)


def test_fuzz_struct_fields_of_the_legacy_storages(tmp_path):
    """The legacy format's 8-byte storage sizes, set to extreme values, are checked before reading."""
    blob = open(os.path.join(FORMATS, 'legacy_format.pth'), 'rb').read()
    stream = io.BytesIO(blob)
    for _ in range(5):   # magic, protocol, sys info, object, storage keys
        for _op in pickletools.genops(stream):
            pass
    keys_end = stream.tell()
    for value in (-1, 0, 2 ** 62, 2 ** 31, 25):
        data = blob[:keys_end] + struct.pack('<q', value) + blob[keys_end + 8:]
        (tmp_path / 'l.pth').write_bytes(data)
        with pytest.raises(WeightsFileError, match='claims'):
            load_torch(str(tmp_path / 'l.pth'))


def test_object_state_is_limited_to_plain_attributes(tmp_path):
    """torch's state_dict() pickles its `_metadata` attribute through BUILD: allowed as plain data;
    dunder attributes (`__class__`, `__dict__`) are refused."""
    head = b'\x80\x02ccollections\nOrderedDict\n)R}'
    ok = head + b'X\t\x00\x00\x00_metadata}sb.'
    evil = head + b'X\t\x00\x00\x00__class__ccollections\nOrderedDict\nsb.'
    (tmp_path / 'ok.pdparams').write_bytes(ok)
    assert load_paddle(str(tmp_path / 'ok.pdparams'))._metadata == {}
    (tmp_path / 'evil.pdparams').write_bytes(evil)
    with pytest.raises(WeightsFileError, match='OrderedDict state is not a dict of plain attributes'):
        load_paddle(str(tmp_path / 'evil.pdparams'))


def test_a_pickled_dtype_never_rewrites_numpys_shared_dtypes(tmp_path):
    """`numpy.dtype('f4', False, False)` is NumPy's float32 singleton; BUILD on it with another byte
    order would change float32 for the whole process.  The reader always builds a copy."""
    blob = pickle.dumps(np.dtype('<f4'), protocol=2)
    assert blob.count(b'\x89\x88') == 1 and blob.count(b'X\x01\x00\x00\x00<') == 1
    blob = blob.replace(b'\x89\x88', b'\x89\x89').replace(b'X\x01\x00\x00\x00<', b'X\x01\x00\x00\x00>')
    (tmp_path / 'dtype.pdparams').write_bytes(blob)
    loaded = load_paddle(str(tmp_path / 'dtype.pdparams'))
    assert loaded == np.dtype('>f4') and np.dtype('float32').byteorder in ('=', '<')
