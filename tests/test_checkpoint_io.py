"""The torch-free checkpoint reader: both torch formats, views, dtypes, wrappers, hostile pickles."""
import os
import pickle
import zipfile

import numpy as np
import pytest

from engine.torch_reader import UnsafeCheckpointError, load_torch, unwrap_state_dict
from engine.weights import load_checkpoint

FORMATS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fixtures', 'torch_formats')


@pytest.mark.parametrize('name', ['zip_format.pth', 'legacy_format.pth'])
def test_both_torch_formats_read_exactly(name):
    state = load_checkpoint(os.path.join(FORMATS, name))   # unwraps {'model': ...} and 'module.'
    expected = np.load(os.path.join(FORMATS, 'expected.npz'))
    assert sorted(state) == sorted(expected.files)
    for key in expected.files:
        got = state[key].astype(np.float32) if key == 'bf16' else state[key]
        assert got.dtype == expected[key].dtype, key
        np.testing.assert_array_equal(got, expected[key], err_msg=key)
    assert load_torch(os.path.join(FORMATS, name))['epoch'] == 3


class _Evil:
    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


def _torch_like_zip(path, payload):
    with zipfile.ZipFile(path, 'w') as zf:
        zf.writestr('archive/data.pkl', pickle.dumps(payload, protocol=2))
        zf.writestr('archive/version', '3\n')


def test_hostile_pickle_is_refused_without_running(tmp_path):
    evil = _Evil()
    evil.marker = str(tmp_path / 'pwned')
    _torch_like_zip(tmp_path / 'evil.pth', {'model': {'w': evil}})
    with pytest.raises(UnsafeCheckpointError, match=r'refusing to load global (posix|os)\.system'):
        load_checkpoint(str(tmp_path / 'evil.pth'))
    assert not os.path.exists(evil.marker)
    with open(tmp_path / 'legacy_evil.pth', 'wb') as f:   # the legacy stream is guarded too
        f.write(pickle.dumps(evil, protocol=2))
    with pytest.raises(UnsafeCheckpointError):
        load_torch(str(tmp_path / 'legacy_evil.pth'))
    assert not os.path.exists(evil.marker)


def test_safetensors_npz_and_wrappers(tmp_path):
    from safetensors.numpy import save_file
    arrays = {'a.weight': np.arange(6, dtype=np.float32).reshape(2, 3), 'b': np.ones(2, np.int64)}
    save_file(arrays, str(tmp_path / 'w.safetensors'))
    np.savez(tmp_path / 'w.npz', **arrays)
    for name in ('w.safetensors', 'w.npz'):
        state = load_checkpoint(str(tmp_path / name))
        assert sorted(state) == sorted(arrays)
        np.testing.assert_array_equal(state['a.weight'], arrays['a.weight'])
    nested = {'state_dict': {'module.x': np.zeros(2)}, 'optimizer': {}, 'args': None}
    assert list(unwrap_state_dict(nested)) == ['x']
    with pytest.raises(ValueError, match='no state dict found'):
        unwrap_state_dict({'epoch': 3, 'args': {'lr': 1}}, source='ckpt.pth')


def test_not_a_checkpoint(tmp_path):
    (tmp_path / 'junk.pth').write_bytes(pickle.dumps(12345))
    with pytest.raises(ValueError, match='not a torch checkpoint'):
        load_torch(str(tmp_path / 'junk.pth'))
    with pytest.raises(FileNotFoundError):
        load_checkpoint(str(tmp_path / 'missing.pth'))
