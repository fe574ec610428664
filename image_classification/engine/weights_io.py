"""Read the pickled files users hand us (`.pdparams`, `.pdopt`) without letting them run code.

`paddle.load` is `pickle.load`: a `.pdparams` downloaded from a drive or a chat
group can name any Python callable (`os.system`, `eval`, ...) and the unpickler
calls it while reading.  This module is the one place the repository reads a
Paddle pickle.  Its unpickler resolves only the globals that `paddle.save`
itself writes for state dicts and optimizer states, each replaced by a small
function that accepts exactly the arguments Paddle's writer gives it, and
refuses every other global before anything is called.  The refusal is a
`UnsafePickleError` (a `UserError`) naming the file and the global.

What `paddle.save` writes (paddle/framework/io.py; the same reducers in 2.x and 3.3):
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
  `__setstate__` then checks the raw bytes against shape and dtype); the
  name `numpy.ndarray` yields a token, not the class, so the array
  constructor itself can never be called;
- `numpy.dtype`: the dtype of an array or scalar, of a numeric kind only
  (bool, int, float, complex: an object array's elements are arbitrary
  pickles) and always a fresh copy (see `_numpy_dtype`);
- `numpy.core.multiarray.scalar` / `numpy._core.multiarray.scalar`: a NumPy
  scalar (a float in an LR scheduler's state), built from its raw bytes;
- `_codecs.encode`: pickle protocol 2 has no bytes opcode and writes an
  array's raw bytes as `_codecs.encode(latin-1 text, 'latin1')`; only the
  latin-1 and UTF-8 codecs are accepted;
- `collections.OrderedDict`: a model's `state_dict()` type.

Everything else the files hold (dict, list, tuple, str, bytes, numbers, None,
sets) is built by pickle opcodes that call nothing.  The opcodes that reach
objects another way are restricted too (`RestrictedUnpickler`): BUILD sets the
state only of dtypes, arrays and plain-attribute records, with checked state;
NEWOBJ, persistent ids and the copyreg extension registry are refused.

Not read: Paddle's non-pickle formats (`use_binary_format=True` single-tensor
files, `paddle.jit.save` programs), which `paddle.load` also accepts; no state
dict of this repository or of PaddleViT is stored that way.

A file that is not a Paddle pickle, or is truncated or damaged, raises
`WeightsFileError` (also a `UserError`) naming the file, never another
exception: the reader is fuzzed with byte flips and truncations
(tests/test_weights_io.py).  Tensors come back as NumPy arrays
(`load_paddle(..., tensors=True)`: as Paddle Tensors, where `paddle.load` gives them).
"""
import collections
import os
import pickle
import types

import numpy as np

from .errors import UserError

__all__ = ['WeightsFileError', 'UnsafePickleError', 'RestrictedUnpickler', 'NUMPY_GLOBALS',
           'load_paddle', 'load_state_dict']


class WeightsFileError(UserError, ValueError):
    """A weights / optimizer file that cannot be read: truncated, damaged or not of this format."""


class UnsafePickleError(WeightsFileError, pickle.UnpicklingError):
    """The file's pickle asked for a global outside the allow-list (it could run code)."""


# ----------------------------------------------------------------------------- shared NumPy pieces

class _NdarrayClass:
    """Stands for `numpy.ndarray` where a pickle names it: only as `_reconstruct`'s first argument.

    The real class is not handed out because calling it (`ndarray(shape, dtype, buffer, offset,
    strides)`) would let a pickle build arrays outside the checks below.
    """


_NDARRAY = _NdarrayClass()


def _numpy_reconstruct(cls, shape, dtype_code):
    """NumPy's `_reconstruct(ndarray, (0,), b'b')`: an empty array that BUILD then fills."""
    if cls is not _NDARRAY:
        raise pickle.UnpicklingError(f'array reconstruction of a {type(cls).__name__}, not numpy.ndarray')
    return np.ndarray.__new__(np.ndarray, (0,), np.uint8)


# Element types of weights and optimizer states: bool, integers, floats, complex.  Strings, void,
# structured and object dtypes are refused (an object array holds arbitrary pickles).
_DTYPE_KINDS = 'biufc'


def _numpy_dtype(spec, align=False, copy=False):
    """A fresh dtype of a numeric kind.  Always a copy: with copy=False NumPy returns its shared
    float32 (...) singleton, and the pickle's BUILD would then rewrite it for the whole process."""
    if not isinstance(spec, str) or align not in (False, 0) or copy not in (True, False, 0, 1):
        raise pickle.UnpicklingError(f'numpy.dtype({str(spec)[:40]!r}, ...): not a plain element type')
    dtype = np.dtype(spec, False, True)
    if dtype.kind not in _DTYPE_KINDS:
        raise UnsafePickleError(f'a NumPy {dtype} dtype (kind {dtype.kind!r}): only bool, integer, float '
                                f'and complex arrays are weights (object arrays hold arbitrary pickles)')
    return dtype


def _numpy_scalar(dtype, raw=None):
    if not isinstance(dtype, np.dtype):
        raise pickle.UnpicklingError(f'NumPy scalar of a non-dtype {type(dtype).__name__}')
    if raw is None:
        return dtype.type()
    if isinstance(raw, str):   # a Python 2 pickle read with encoding='latin1'
        raw = raw.encode('latin1')
    if not isinstance(raw, bytes) or len(raw) != dtype.itemsize:
        raise pickle.UnpicklingError(f'NumPy {dtype} scalar from a {type(raw).__name__} of the wrong size')
    return np.frombuffer(raw, dtype=dtype)[0]


_CODECS = {'latin1', 'latin-1', 'iso-8859-1', 'utf-8', 'utf8'}


def _codecs_encode(text, encoding='utf-8'):
    if not isinstance(text, str) or not isinstance(encoding, str) or encoding.lower() not in _CODECS:
        raise pickle.UnpicklingError(f'_codecs.encode with encoding {str(encoding)[:20]!r}: only latin-1 '
                                     f'and UTF-8 occur in weights files')
    return text.encode(encoding)


# How NumPy pickles arrays, dtypes and scalars (1.x writes numpy.core, 2.x numpy._core), and how
# pickle protocol 2 writes bytes.  Shared with the reader of torch files (`engine.torch_reader`).
NUMPY_GLOBALS = {
    ('numpy', 'ndarray'): _NDARRAY,
    ('numpy', 'dtype'): _numpy_dtype,
    ('numpy.core.multiarray', '_reconstruct'): _numpy_reconstruct,
    ('numpy._core.multiarray', '_reconstruct'): _numpy_reconstruct,
    ('numpy.core.multiarray', 'scalar'): _numpy_scalar,
    ('numpy._core.multiarray', 'scalar'): _numpy_scalar,
    ('_codecs', 'encode'): _codecs_encode,
    ('collections', 'OrderedDict'): collections.OrderedDict,
}

_SIMPLE_DTYPE_STATE = (None, None, None, -1, -1, 0)   # numpy's state of a numeric dtype, after version + byte order


def _check_build(inst, state):
    """BUILD (`inst.__setstate__(state)`) only where a weights file needs it, with checked state."""
    if isinstance(inst, np.dtype):
        if not (isinstance(state, tuple) and len(state) == 8 and state[0] == 3 and state[1] in ('<', '>', '|', '=')
                and state[2:] == _SIMPLE_DTYPE_STATE):
            raise pickle.UnpicklingError(f'state {str(state)[:80]} of a {inst} dtype is not a plain element type\'s')
    elif isinstance(inst, np.ndarray):
        if not (isinstance(state, tuple) and len(state) == 5 and isinstance(state[1], tuple)
                and isinstance(state[2], np.dtype) and isinstance(state[4], (bytes, str))):
            raise pickle.UnpicklingError('array state is not (version, shape, dtype, fortran, raw bytes)')
        if inst.size or not all(isinstance(d, int) and d >= 0 for d in state[1]):
            raise pickle.UnpicklingError(f'array state with shape {str(state[1])[:80]}')
    elif isinstance(inst, (types.SimpleNamespace, collections.OrderedDict)):
        # argparse's Namespace in a torch checkpoint; torch's state_dict() carries `_metadata`
        if not (isinstance(state, dict) and all(isinstance(k, str) and not k.startswith('__') for k in state)):
            raise pickle.UnpicklingError(f'{type(inst).__name__} state is not a dict of plain attributes')
    else:
        raise UnsafePickleError(f'refusing to set the state of a {type(inst).__name__} (BUILD opcode)')


class _BoundedFile:
    """A read-only file whose reads never ask for more than is left, so a length field in a damaged
    or hostile pickle cannot make the unpickler allocate more than the file holds."""

    def __init__(self, file):
        self._file = file
        here = file.tell()
        self._size = file.seek(0, os.SEEK_END)
        file.seek(here)

    def read(self, n=-1):
        left = self._size - self._file.tell()
        return self._file.read(left if n is None or n < 0 else min(n, left))

    def readline(self):
        return self._file.readline()

    def readinto(self, buf):
        return self._file.readinto(buf)


class RestrictedUnpickler(pickle._Unpickler):
    """An unpickler that resolves only the globals in `allowed` (`{(module, name): object}`).

    Any other global, and any persistent id unless `persistent_load` is given,
    raises `refusal` (a subclass of UnsafePickleError) naming `source` and the
    global, before anything is called.

    It is pickle's pure-Python unpickler (a dict memo, no C state a damaged
    file could corrupt), with the opcodes that reach objects other than
    through `find_class` restricted: BUILD only on dtypes, arrays and
    namespaces with checked state; NEWOBJ only for argparse's Namespace; the
    copyreg extension registry (EXT1/2/4, whose cache skips `find_class`) and
    protocol 5's pre-allocated BYTEARRAY8 refused.  Weights files use none of
    what is refused.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, allowed, source, refusal=UnsafePickleError, persistent_load=None):
        super().__init__(_BoundedFile(file), encoding='latin1')   # latin1: as paddle.load, for Python 2 pickles
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

    def _load_build(self):
        _check_build(self.stack[-2], self.stack[-1])
        pickle._Unpickler.load_build(self)

    def _load_newobj(self):
        if self.stack[-2] is not types.SimpleNamespace:
            raise self._refusal(f'{self._source}: refusing to create a {type(self.stack[-2]).__name__} '
                                f'object (NEWOBJ opcode)')
        pickle._Unpickler.load_newobj(self)

    def _refuse_opcode(self):
        raise self._refusal(f'{self._source}: refusing pickle opcode (copyreg extension code or '
                            f'BYTEARRAY8/NEWOBJ_EX): weights files have none')

    dispatch[pickle.BUILD[0]] = _load_build
    dispatch[pickle.NEWOBJ[0]] = _load_newobj
    for _op in (pickle.NEWOBJ_EX, pickle.EXT1, pickle.EXT2, pickle.EXT4, pickle.BYTEARRAY8):
        dispatch[_op[0]] = _refuse_opcode
    del _op


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

def _paddle_tensor_as_tensor(pair):
    """`_paddle_tensor`, giving a Paddle Tensor as `paddle.load` does (for `load_paddle(tensors=True)`)."""
    import paddle
    return paddle.to_tensor(_paddle_tensor(pair))


_PADDLE_TENSOR_GLOBALS = dict(_PADDLE_GLOBALS)
_PADDLE_TENSOR_GLOBALS.update({('builtins', 'tuple'): _paddle_tensor_as_tensor,
                               ('__builtin__', 'tuple'): _paddle_tensor_as_tensor})

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


def load_paddle(path, tensors=False):
    """What `paddle.save` wrote to `path`, with every tensor as a NumPy array.

    `tensors=True`: what Paddle pickled as a Tensor (the values of an optimizer's
    state inside a larger dict, such as our `.pdopt`) comes back as a Paddle
    Tensor and NumPy arrays stay arrays, exactly as `paddle.load` returns such
    a file; `set_state_dict` of optimizers keeps some of those values as they are.

    Refuses (UnsafePickleError) any pickle global that Paddle's writer does not
    produce, before calling anything; any other problem with the file is a
    WeightsFileError naming it.  As `paddle.load`, drops the structured-name
    table and joins big arrays that protocol 2/3 files store in pieces.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f'weights file not found: {path}')
    try:
        with open(path, 'rb') as f:
            obj = RestrictedUnpickler(f, _PADDLE_TENSOR_GLOBALS if tensors else _PADDLE_GLOBALS, path).load()
            if f.read(1):   # paddle.save writes one pickle; a second one is never read, so refuse it
                raise WeightsFileError(f'{path}: bytes after the end of the pickle: not a file written by '
                                       f'paddle.save (was something appended to it?)')
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
