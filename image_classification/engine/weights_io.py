"""Read the pickled files users hand us (`.pdparams`, `.pdopt`) without letting them run code.

`paddle.load` is `pickle.load`: a `.pdparams` downloaded from a drive or a chat
group can name any Python callable (`os.system`, `eval`, ...) and the unpickler
calls it while reading.  This module is the one place the repository reads a
Paddle pickle.  Its unpickler resolves only the globals that `paddle.save`
itself writes for state dicts and optimizer states, each replaced by a small
function that accepts exactly the arguments Paddle's writer gives it, and
refuses every other global before anything is called.  The refusal is a
`UnsafePickleError` (a `UserError`) naming the file and the global.

What `paddle.save` writes (paddle/framework/io.py, Paddle 2.1 to 3.3):
- a state dict (every value a Tensor, or a dict without Tensors):
  `_legacy_save` pickles a plain dict `{name: numpy array}` plus the entry
  `StructuredToParameterName@@` (`{name: framework parameter name}`); with
  pickle protocol 2 or 3 every array above 1 GB is cut into 1-D pieces
  `name@@.0`, `name@@.1`, ... described by the entry `UnpackBigParamInfor@@`
  (`{name: {'OriginShape': shape, 'slices': [piece names]}}`), because those
  protocols cannot hold an object above 4 GB;
- anything else (our `.pdopt`: optimizer state, scheduler state, epoch, ...):
  `_pickle_save` with a reducer per Paddle type: a Tensor becomes
  `tuple((tensor.name, numpy array))`, a DenseTensor
  `eval('data', {'data': numpy array})`.

So the allowed globals are:
- `builtins.tuple`: only as Paddle's Tensor reducer; the (name, array) pair
  must hold a str and an array, and the array is returned (what
  `paddle.load(..., return_numpy=True)` gives);
- `builtins.eval`: only as Paddle's DenseTensor reducer; the expression must be
  the string 'data' and the namespace `{'data': array}`, so nothing is ever
  evaluated: the array is returned;
- `numpy.core.multiarray._reconstruct` / `numpy._core.multiarray._reconstruct`
  and `numpy.ndarray`: how NumPy pickles an array (an empty array whose
  `__setstate__` then checks the raw bytes against shape and dtype);
- `numpy.dtype`: the dtype of an array or scalar; object dtypes are refused
  (an object array is not a weight, and its elements are arbitrary pickles);
- `numpy.core.multiarray.scalar` / `numpy._core.multiarray.scalar`: a NumPy
  scalar (a float in an LR scheduler's state), built from its raw bytes;
- `_codecs.encode`: pickle protocol 2 has no bytes opcode and writes an
  array's raw bytes as `_codecs.encode(latin-1 text, 'latin1')`; only the
  latin-1 and UTF-8 codecs are accepted;
- `collections.OrderedDict`: a model's `state_dict()` type.

Everything else the files hold (dict, list, tuple, str, bytes, numbers, None,
sets) is built by pickle opcodes that call nothing.  Persistent ids and the
copyreg extension registry go through the same refusal.

A file that is not a Paddle pickle, or is truncated or damaged, raises
`WeightsFileError` (also a `UserError`) naming the file, never another
exception: the reader is fuzzed with byte flips and truncations
(tests/test_weights_io.py).  Tensors come back as NumPy arrays; callers turn
them into Paddle tensors where Paddle wants them.
"""
import collections
import os
import pickle

import numpy as np

from .errors import UserError

__all__ = ['WeightsFileError', 'UnsafePickleError', 'RestrictedUnpickler', 'NUMPY_GLOBALS',
           'load_paddle', 'load_state_dict']


class WeightsFileError(UserError, ValueError):
    """A weights / optimizer file that cannot be read: truncated, damaged or not of this format."""


class UnsafePickleError(WeightsFileError, pickle.UnpicklingError):
    """The file's pickle asked for a global outside the allow-list (it could run code)."""


# ----------------------------------------------------------------------------- shared NumPy pieces

def _numpy_reconstruct(cls, shape, dtype_code):
    """NumPy's `_reconstruct(ndarray, (0,), b'b')`: an empty array filled by `__setstate__`."""
    if cls is not np.ndarray:
        raise pickle.UnpicklingError(f'array reconstruction of {cls!r}, not numpy.ndarray')
    return np.ndarray.__new__(np.ndarray, (0,), np.uint8)


def _numpy_dtype(spec, align=False, copy=False):
    dtype = np.dtype(spec, align, copy)
    if dtype.hasobject:
        raise UnsafePickleError(f'a NumPy object dtype ({dtype}): object arrays hold arbitrary '
                                f'pickles and are never weights')
    return dtype


def _numpy_scalar(dtype, raw=None):
    if not isinstance(dtype, np.dtype):
        raise pickle.UnpicklingError(f'NumPy scalar of a non-dtype {type(dtype).__name__}')
    if raw is None:
        return dtype.type()
    if not isinstance(raw, bytes) or len(raw) != dtype.itemsize:
        raise pickle.UnpicklingError(f'NumPy {dtype} scalar from {len(raw) if isinstance(raw, bytes) else raw!r} '
                                     f'bytes, needs {dtype.itemsize}')
    return np.frombuffer(raw, dtype=dtype)[0]


_CODECS = {'latin1', 'latin-1', 'iso-8859-1', 'utf-8', 'utf8'}


def _codecs_encode(text, encoding='utf-8'):
    if not isinstance(text, str) or not isinstance(encoding, str) or encoding.lower() not in _CODECS:
        raise pickle.UnpicklingError(f'_codecs.encode with encoding {encoding!r}: only latin-1 and UTF-8 '
                                     f'occur in weights files')
    return text.encode(encoding)


# How NumPy pickles arrays, dtypes and scalars (1.x writes numpy.core, 2.x numpy._core), and how
# pickle protocol 2 writes bytes.  Shared with port_weights' reader of torch files.
NUMPY_GLOBALS = {
    ('numpy', 'ndarray'): np.ndarray,
    ('numpy', 'dtype'): _numpy_dtype,
    ('numpy.core.multiarray', '_reconstruct'): _numpy_reconstruct,
    ('numpy._core.multiarray', '_reconstruct'): _numpy_reconstruct,
    ('numpy.core.multiarray', 'scalar'): _numpy_scalar,
    ('numpy._core.multiarray', 'scalar'): _numpy_scalar,
    ('_codecs', 'encode'): _codecs_encode,
    ('collections', 'OrderedDict'): collections.OrderedDict,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals in `allowed` (`{(module, name): object}`).

    Any other global, and any persistent id unless `persistent_load` is given,
    raises `refusal` (a subclass of UnsafePickleError) naming `source` and the
    global, before anything is called.
    """

    def __init__(self, file, allowed, source, refusal=UnsafePickleError, persistent_load=None):
        super().__init__(file, encoding='latin1')   # what paddle.load passes, for Python 2 pickles
        self._allowed = allowed
        self._source = source
        self._refusal = refusal
        self._persistent = persistent_load

    def find_class(self, module, name):
        try:
            return self._allowed[(module, name)]
        except (KeyError, TypeError):
            raise self._refusal(
                f'{self._source}: refusing to load global {module}.{name}: only tensors, arrays and '
                f'plain containers are allowed in a weights file (a pickle that imports anything else '
                f'could run code while being read; see SECURITY.md)') from None

    def persistent_load(self, pid):
        if self._persistent is None:
            raise self._refusal(f'{self._source}: refusing persistent id {str(pid)[:80]!r}: '
                                f'a Paddle weights file has none')
        return self._persistent(pid)


# ----------------------------------------------------------------------------- Paddle's format

def _paddle_tensor(pair):
    """Paddle's Tensor reducer `tuple((name, array))`: the array."""
    if (not isinstance(pair, tuple) or len(pair) != 2 or not isinstance(pair[0], str)
            or not isinstance(pair[1], np.ndarray)):
        raise UnsafePickleError(f'global builtins.tuple called on something other than Paddle\'s '
                                f'(tensor name, array) pair ({type(pair).__name__})')
    return pair[1]


def _paddle_dense_tensor(expression, namespace=None, *rest):
    """Paddle's DenseTensor reducer `eval('data', {'data': array})`: the array, nothing evaluated."""
    if (expression != 'data' or rest or not isinstance(namespace, dict) or list(namespace) != ['data']
            or not isinstance(namespace['data'], np.ndarray)):
        raise UnsafePickleError(f'global builtins.eval called on {str(expression)[:80]!r}: only Paddle\'s '
                                f"eval('data', {{'data': array}}) is accepted, and it is not evaluated")
    return namespace['data']


_PADDLE_GLOBALS = dict(NUMPY_GLOBALS)
_PADDLE_GLOBALS.update({
    ('builtins', 'tuple'): _paddle_tensor,
    ('__builtin__', 'tuple'): _paddle_tensor,   # a pickle written by Python 2 (Paddle 1.x/2.0)
    ('builtins', 'eval'): _paddle_dense_tensor,
    ('__builtin__', 'eval'): _paddle_dense_tensor,
})

_NAME_TABLE = 'StructuredToParameterName@@'
_BIG_PARAMS = 'UnpackBigParamInfor@@'   # sic: Paddle's spelling


def _join_big_params(obj, source):
    """Undo `_unpack_saved_dict`: glue the 1-D pieces of each big array back to its shape."""
    info = obj.pop(_BIG_PARAMS)
    if not isinstance(info, dict):
        raise WeightsFileError(f'{source}: {_BIG_PARAMS} is a {type(info).__name__}, not a dict')
    for key, entry in info.items():
        try:
            shape, pieces = tuple(int(d) for d in entry['OriginShape']), list(entry['slices'])
        except Exception:
            raise WeightsFileError(f'{source}: {_BIG_PARAMS}[{key!r}] is not {{OriginShape, slices}}') from None
        arrays = [obj.get(p) for p in pieces]
        if not pieces or any(not isinstance(a, np.ndarray) or a.ndim != 1 for a in arrays):
            raise WeightsFileError(f'{source}: the pieces of the big array {key!r} are missing or not 1-D arrays')
        if len({a.dtype for a in arrays}) != 1:
            raise WeightsFileError(f'{source}: the pieces of the big array {key!r} differ in dtype')
        if any(d < 0 for d in shape) or sum(a.size for a in arrays) != int(np.prod(shape, dtype=object)):
            raise WeightsFileError(f'{source}: the pieces of the big array {key!r} do not add up to its '
                                   f'shape {shape}')
        for piece in pieces:
            del obj[piece]
        obj[key] = np.concatenate(arrays).reshape(shape)


def load_paddle(path):
    """What `paddle.save` wrote to `path`, with every tensor as a NumPy array.

    Refuses (UnsafePickleError) any pickle global that Paddle's writer does not
    produce, before calling anything; any other problem with the file is a
    WeightsFileError naming it.  As `paddle.load`, drops the structured-name
    table and joins big arrays that protocol 2/3 files store in pieces.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f'weights file not found: {path}')
    try:
        with open(path, 'rb') as f:
            obj = RestrictedUnpickler(f, _PADDLE_GLOBALS, path).load()
        if isinstance(obj, dict):
            obj.pop(_NAME_TABLE, None)
            if _BIG_PARAMS in obj:
                _join_big_params(obj, path)
    except UnsafePickleError as e:
        if str(e).startswith(path):
            raise
        raise UnsafePickleError(f'{path}: refusing to load: {e}') from None
    except WeightsFileError:
        raise
    except Exception as e:   # truncated, damaged, not a pickle: any of a dozen exception types
        raise WeightsFileError(f'{path}: not a readable Paddle weights file written by paddle.save '
                               f'({type(e).__name__}: {str(e)[:200]})') from None
    return obj


def load_state_dict(path):
    """`{name: np.ndarray}` from a `.pdparams`: a model's state dict (PaddleViT's layout too).

    A file holding anything else (a whole training checkpoint, a non-array
    value) is a WeightsFileError that says what was found.
    """
    state = load_paddle(path)
    if not isinstance(state, dict):
        raise WeightsFileError(f'{path}: expected a state dict {{name: array}}, found a {type(state).__name__}')
    out = collections.OrderedDict()
    for key, value in state.items():
        if isinstance(value, np.generic):
            value = np.asarray(value)
        if not isinstance(key, str) or not isinstance(value, np.ndarray):
            raise WeightsFileError(
                f'{path}: expected a state dict {{name: array}}, but entry {str(key)[:80]!r} is a '
                f'{type(value).__name__} (is this a training checkpoint rather than weights? '
                f'top-level keys: {sorted(map(str, state))[:10]})')
        out[key] = value
    return out
