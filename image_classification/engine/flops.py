"""A model's parameters and FLOPs, counted as the papers' tables report them (the command line
is tools/flops.py; semantic_segmentation/benchmark.py counts its segmentors with it too).

One multiply-accumulate (MAC) is one FLOP, as in the DeiT, PiT, timm and
fvcore tables.  Counted: every product of one forward pass on a 1 x 3 x S x S
image, from the real shapes of the traced graph:

- convolutions, grouped and depthwise included: output elements x (C_in /
  groups) x kernel area; transposed convolutions: input elements x (C_out /
  groups) x kernel area;
- matmul (Linear layers, `@`, `paddle.matmul`), bmm, addmm, einsum: output
  elements x the contracted length (einsum: the product of all index sizes);
- attention: q k^T and attn v are the matmuls above; fused attention kernels
  count the same B x heads x N x M x (d_qk + d_v).

Not counted: bias additions, normalisation, activations, softmax, pooling,
interpolation and other element-wise work (under 1% for these models; fvcore
adds norms, hence its third digit can be higher).  An op this counter does not
know but whose name says it multiplies (conv, matmul, gemm, attention, ...)
is an error, never a silent zero.

Two totals are printed, because published tables use both conventions:
`FLOPs` counts everything above (DeiT/ViT, the official PiT README: pit_s
2.9G); `layers-only` counts only products of the image's features with a
weight, i.e. Conv and Linear layers, which is what `paddle.flops`, ptflops
and other module-hook counters measure and what PaddleViT's PiT table (pit_s
2.4G) and PerViT's paper use: it leaves out attention's q k^T and attn v.

Products that do not depend on the image (a position bias computed from
parameters alone, say) are not counted in either total: they can be computed
once, as the official PerViT does before counting.  A factor computed from
parameters alone (a standardised conv weight) still makes a product a layer.

How: `paddle.jit.to_static` traces the model in eval mode into a static
program with the fixed input shape, and the ops of that program (sub-blocks
included) are read with their shapes; which values depend on the image is
followed op by op.  The model itself is left unchanged.

Parameters are counted as PyTorch counts them: every parameter except the
BatchNorm running mean and variance, which Paddle stores as non-trainable
parameters and PyTorch as buffers.
"""
import re
import warnings
from collections import Counter

import numpy as np
import paddle
from paddle.static import InputSpec

__all__ = ['count_flops', 'count_params', 'flops_by_op', 'op_costs', 'by_op', 'trace_program']

# Op names (without `pd_op.`) that multiply matrices; anything matching this
# that `_op_macs` does not handle stops the count.
_MAC_LIKE = re.compile(r'conv|matmul|gemm|attn|attention|einsum|bmm|addmm|^fc$|^linear$|^mv$|^dot$|tensordot')


def _prod(values):
    return int(np.prod([int(v) for v in values], dtype=np.int64)) if len(values) else 1


def _shape(op, index):
    shape = list(op.operand_source(index).shape)
    if any(int(d) < 0 for d in shape):
        raise ValueError(f'{op.name()}: operand {index} has a dynamic shape {shape}')
    return shape


def _out_numel(op, index=0):
    shape = list(op.result(index).shape)
    if any(int(d) < 0 for d in shape):
        raise ValueError(f'{op.name()}: result {index} has a dynamic shape {shape}')
    return _prod(shape)


def _einsum_macs(op):
    """Product of every index size of a two-operand einsum (0 for one operand)."""
    combine = op.operand_source(0).get_defining_op()
    shapes = [list(combine.operand_source(i).shape) for i in range(combine.num_operands())]
    equation = op.attrs()['equation'].replace(' ', '')
    inputs = equation.split('->')[0].split(',')
    if len(inputs) == 1:
        return 0
    if len(inputs) != 2:
        raise NotImplementedError(f'einsum with {len(inputs)} operands ({equation!r}) is not counted')
    spare = iter(c for c in 'ABCDEFGHIJKLMNOPQRSTUVWXYZ' if c not in equation)
    ellipsis = [next(spare) for _ in range(max(len(s) for s in shapes))]
    sizes = {}
    for term, shape in zip(inputs, shapes):
        if '...' in term:
            covered = len(shape) - (len(term) - 3)
            term = term.replace('...', ''.join(ellipsis[len(ellipsis) - covered:]))
        for letter, size in zip(term, shape):
            sizes[letter] = max(sizes.get(letter, 1), int(size))
    return _prod(list(sizes.values()))


def _attention_macs(op):
    """Fused attention on q [B, N, H, d], k [B, M, H, d], v [B, M, H, d_v]."""
    b, n, h, d = _shape(op, 0)
    m = _shape(op, 1)[1]
    dv = _shape(op, 2)[3]
    return b * h * n * m * (d + dv)


def _op_macs(op):
    """Multiply-accumulates of one static-graph op (0 for ops that do not multiply matrices)."""
    name = op.name().split('.', 1)[-1].rstrip('_')
    if name in ('conv2d', 'depthwise_conv2d', 'conv3d'):
        return _out_numel(op) * _prod(_shape(op, 1)[1:])          # weight [C_out, C_in/g, k...]
    if name in ('conv2d_transpose', 'depthwise_conv2d_transpose', 'conv3d_transpose'):
        return _prod(_shape(op, 0)) * _prod(_shape(op, 1)[1:])    # weight [C_in, C_out/g, k...]
    if name == 'matmul':
        x = _shape(op, 0)
        transpose_x = op.attrs().get('transpose_x', False)
        k = x[0] if len(x) == 1 else (x[-2] if transpose_x else x[-1])
        return _out_numel(op) * k
    if name in ('bmm', 'mv'):
        return _out_numel(op) * _shape(op, 0)[-1]
    if name == 'addmm':                                           # input + x @ y
        return _out_numel(op) * _shape(op, 1)[-1]
    if name == 'dot':
        return _prod(_shape(op, 0))
    if name == 'einsum':
        return _einsum_macs(op)
    if name in ('flash_attn', 'memory_efficient_attention'):
        return _attention_macs(op)
    if _MAC_LIKE.search(name):
        raise NotImplementedError(f'tools/flops.py does not know how to count op {op.name()!r}; '
                                  'add it to _op_macs')
    return 0


def _tensor_inputs(op):
    """The operand values of `op`, with the list operands (`builtin.combine`) expanded."""
    values = []
    for i in range(op.num_operands()):
        value = op.operand_source(i)
        source = value.get_defining_op()
        if source is not None and source.name() == 'builtin.combine':
            values += [source.operand_source(j) for j in range(source.num_operands())]
        else:
            values.append(value)
    return values


def _walk(block, costs, dependent):
    """Append (op name, MACs, kind) for each multiplying op of `block`, in program order.

    `dependent` collects the ids of the values computed from the input image.
    kind: 'layer' when one factor does not depend on the image (a weight, even
    if transformed as in weight standardisation), 'activation' when all do
    (attention's q k^T), 'constant' when none does (work that could be done
    once, e.g. position biases computed from parameters only).
    """
    for op in block.ops:
        name = op.name()
        inputs = [v.get_defining_op() is None or v.id in dependent for v in _tensor_inputs(op)]
        if name in ('pd_op.if', 'pd_op.while'):
            warnings.warn(f'the traced model has control flow ({name}): every branch is counted once')
        has_blocks = False
        for sub in op.blocks():
            has_blocks = True
            _walk(sub, costs, dependent)
        if name == 'pd_op.data' or any(inputs) or has_blocks:
            dependent.update(r.id for r in op.results())
        macs = _op_macs(op)
        if macs:
            kind = 'activation' if all(inputs) else 'layer' if any(inputs) else 'constant'
            costs.append((name, macs, kind))


def trace_program(model, image_size, batch_size=1):
    """The static program of `model` in eval mode on a fixed [batch, 3, S, S] input."""
    modes = [(layer, layer.training) for layer in model.sublayers(include_self=True)]
    model.eval()
    try:
        spec = InputSpec([batch_size, 3, image_size, image_size], 'float32', name='x')
        static_forward = paddle.jit.to_static(model.forward, input_spec=[spec], full_graph=True)
        return static_forward.concrete_program.main_program
    finally:
        for layer, training in modes:
            layer.training = training


def op_costs(model, image_size):
    """[(op name, MACs, kind)] for each multiplying op of one forward pass (kinds: see _walk)."""
    program = trace_program(model, image_size)   # kept alive while its blocks are read
    costs = []
    _walk(program.global_block(), costs, set())
    return costs


def by_op(costs, layers_only=False):
    """{op name: MACs} summed from `op_costs`' list; image-independent products left out."""
    kinds = ('layer',) if layers_only else ('layer', 'activation')
    totals = Counter()
    for name, macs, kind in costs:
        if kind in kinds:
            totals[name] += macs
    return dict(totals)


def flops_by_op(model, image_size, layers_only=False):
    """{static op name: FLOPs} of one forward pass on a 1 x 3 x S x S image (see count_flops)."""
    return by_op(op_costs(model, image_size), layers_only)


def count_flops(model, image_size, layers_only=False):
    """FLOPs (1 MAC = 1 FLOP) of one forward pass on a 1 x 3 x S x S image.

    `layers_only=True` counts only products with a weight (Conv and Linear
    layers), the convention of `paddle.flops`, ptflops and PaddleViT's tables,
    which leaves out attention's q k^T and attn v.  Products that do not
    depend on the image are never counted.
    """
    return sum(flops_by_op(model, image_size, layers_only).values())


def count_params(model):
    """Parameters as PyTorch counts them (BatchNorm running statistics excluded)."""
    stats = set()
    for layer in model.sublayers(include_self=True):
        if isinstance(layer, paddle.nn.layer.norm._BatchNormBase):
            stats.update(id(p) for p in (layer._mean, layer._variance))
    return sum(_prod(p.shape) for p in model.parameters() if id(p) not in stats)
