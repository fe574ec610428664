"""tools/benchmark.py: its table parses, its figures are positive, memory grows with resolution."""
import json
import os
import subprocess
import sys

import pytest

from conftest import FIXTURES, REPO
from tools.benchmarking.report import memory_growth

TOOL = os.path.join(REPO, 'tools', 'benchmark.py')
MINI_CFG = os.path.join(FIXTURES, 'vvt_mini', 'vvt_mini.yaml')
# wider than the golden mini so activations, not allocator noise, dominate the working memory
WIDER = ['-opts', 'MODEL.EMBED_DIMS', '[32, 64, 96, 128]', 'MODEL.MLP_RATIOS', '[8, 8, 4, 4]']


def run_tool(*args):
    proc = subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def table_rows(text):
    """Rows of the markdown table in `text` as dicts keyed by the header."""
    lines = [line for line in text.splitlines() if line.startswith('|')]
    header = [c.strip() for c in lines[0].strip('|').split('|')]
    assert set(lines[1].replace('|', '')) == {'-'}
    return [dict(zip(header, (c.strip() for c in line.strip('|').split('|')))) for line in lines[2:]]


@pytest.mark.slow
def test_eval_and_train_figures(tmp_path):
    out = run_tool('-cfg', MINI_CFG, '--batch_size', '4', '--mode', 'both', '--warmup', '1',
                   '--iters', '2', '--threads', '1', '--json', str(tmp_path / 'r.json'))
    rows = table_rows(out)
    assert [(r['model'], r['mode']) for r in rows] == [('vvt_mini', 'eval'), ('vvt_mini', 'train')]
    for r in rows:
        assert r['image size'] == '64' and r['batch'] == '4'
        assert float(r['img/s']) > 0 and float(r['peak MB']) > 0
        assert float(r['params (M)']) == pytest.approx(0.14, abs=0.005)   # 135,890
    saved = json.loads((tmp_path / 'r.json').read_text())
    assert saved[0]['to_static'] is False and saved[0]['threads'] == 1
    # a train step holds activations, gradients and AdamW moments: it needs more than inference
    assert saved[1]['work MB'] > saved[0]['work MB']
    # the saved measurements print the same table again
    assert table_rows(run_tool('--load_json', str(tmp_path / 'r.json'))) == rows


@pytest.mark.slow
def test_sweep_memory_grows_with_resolution(tmp_path):
    plot = tmp_path / 'sweep.png'
    out = run_tool('-cfg', MINI_CFG, *WIDER, '--sweep', '128,256,512', '--batch_size', '2',
                   '--mode', 'eval', '--warmup', '1', '--iters', '1', '--no_to_static',
                   '--plot', str(plot))
    rows = table_rows(out)
    assert [int(r['image size']) for r in rows] == [128, 256, 512]
    work = [float(r['work MB']) for r in rows]
    assert work[0] < work[1] < work[2], work
    assert work[2] > 4 * work[0], work          # 16x the tokens
    assert 'memory ~ tokens^' in out
    assert plot.stat().st_size > 1000 and plot.read_bytes()[:4] == b'\x89PNG'


@pytest.mark.slow
def test_a_failing_measurement_is_reported_not_fatal():
    # a measurement that dies (here: out of time) is a row of the table, and the run goes on
    proc = subprocess.run([sys.executable, TOOL, '-cfg', MINI_CFG, '--mode', 'eval', '--iters', '1',
                           '--warmup', '1', '--timeout', '0.5'], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert 'failed:' in proc.stdout and 'timed out' in proc.stdout


@pytest.mark.slow
def test_a_config_error_stops_with_its_message():
    # a user error is the same for every job: one message, exit status 2 (as every entry point)
    proc = subprocess.run([sys.executable, TOOL, '-cfg', MINI_CFG, '-opts', 'MODEL.NO_SUCH_KEY', '1',
                           '--mode', 'eval', '--iters', '1', '--warmup', '1'],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == \
        'benchmark.py: error: -opts: config key MODEL.NO_SUCH_KEY does not exist'
    assert 'Traceback' not in proc.stderr


def test_memory_growth_slope():
    rows = [{'model': 'm', 'mode': 'eval', 'image size': s, 'work MB': 10 * (s / 100) ** 2}
            for s in (100, 200, 400)]
    rows += [{'model': 'q', 'mode': 'eval', 'image size': s, 'work MB': 10 * (s / 100) ** 4}
             for s in (100, 200, 400)]
    text = memory_growth(rows)
    assert 'm eval: work memory x16.0 for x16.0 tokens' in text and 'tokens^1.00' in text
    assert 'q eval: work memory x256.0' in text and 'tokens^2.00' in text


@pytest.mark.slow
def test_train_step_of_models_without_plain_logits(tmp_path):
    """Token labeling's dense output and a distilled pair are trained on their class logits."""
    spvit = os.path.join(REPO, 'image_classification', 'SPViT', 'configs', 'spvit_s_224.yaml')
    out = run_tool('-cfg', spvit, '-opts', 'DATA.IMAGE_SIZE', '32', 'MODEL.EMBED_DIM', '24', 'MODEL.DEPTH', '2',
                   'MODEL.NUM_HEADS', '2', 'MODEL.LOCAL_UP_TO_LAYER', '1', 'MODEL.NUM_CLASSES', '3',
                   '--batch_size', '2', '--mode', 'train', '--warmup', '1', '--iters', '1', '--threads', '1')
    rows = table_rows(out)
    assert len(rows) == 1 and float(rows[0]['img/s']) > 0, out
    pit = os.path.join(REPO, 'image_classification', 'PiT', 'configs', 'pit_ti_distilled_224.yaml')
    out = run_tool('-cfg', pit, '-opts', 'DATA.IMAGE_SIZE', '32', 'MODEL.NUM_CLASSES', '3',
                   '--batch_size', '2', '--mode', 'train', '--warmup', '1', '--iters', '1', '--threads', '1')
    rows = table_rows(out)
    assert len(rows) == 1 and float(rows[0]['img/s']) > 0, out


@pytest.mark.slow       # two benchmark runs, each with its measuring child process
def test_by_name_and_by_file_measure_the_same_model():
    pit = os.path.join(REPO, 'image_classification', 'PiT', 'configs', 'pit_ti_224.yaml')
    small = ['-opts', 'MODEL.DEPTH', '[1, 1, 1]', 'MODEL.NUM_CLASSES', '3', '--image_size', '32',
             '--batch_size', '2', '--mode', 'eval', '--warmup', '1', '--iters', '1', '--threads', '1']
    by_name, by_file = (table_rows(run_tool(*how, *small)) for how in (['-model', 'pit_ti_224'], ['-cfg', pit]))
    assert len(by_name) == 1 and by_name[0]['image size'] == '32'
    for column in ('model', 'image size', 'params (M)'):
        assert by_name[0][column] == by_file[0][column], column


@pytest.mark.slow       # a child process reading images through two DataLoaders
def test_loader_against_the_paddlevit_pipeline(tmp_path):
    from test_engine_run import make_dataset
    root = make_dataset(str(tmp_path / 'data'), n_train=8, n_val=1, size=40)
    out = run_tool('--loader', '-model', 'vit_tiny_patch16_224', '-opts', 'DATA.REPEATED_AUG', '0',
                   '--data_path', root, '--image_size', '32',
                   '--workers', '0', '--batch_size', '2', '--batches', '2', '--threads', '1')
    rows = table_rows(out)
    assert [r['loader'] for r in rows] == ['engine.data (build_dataset + build_dataloader)',
                                           'PIL + paddle.vision.transforms, as PaddleViT']
    assert all(float(r['img/s']) > 0 for r in rows)
    assert f'images under {root}' in out and 'engine / PaddleViT: ' in out


@pytest.mark.slow       # a child process that exports the model and builds a predictor
def test_inference_through_the_exported_model(tmp_path):
    out = run_tool('-cfg', MINI_CFG, '--mode', 'eval', '--inference', '--batch_size', '2', '--warmup', '1',
                   '--iters', '1', '--threads', '1', '--json', str(tmp_path / 'r.json'))
    rows = table_rows(out)
    assert len(rows) == 1 and float(rows[0]['img/s']) > 0, out
    saved = json.loads((tmp_path / 'r.json').read_text())[0]
    assert saved['inference'] is True and saved['onednn'] in (True, False)
    assert 'eval through Paddle Inference' in out


@pytest.mark.slow       # a child process that exports the model with the fused kernels and runs it
def test_exported_with_the_cpu_kernels_is_its_own_path(tmp_path):
    """--cpu_kernels: the graph of export_model.py --cpu_kernels, run on plain kernels (predict's
    rule for it), reported as its own path; ONNX Runtime cannot run it."""
    out = run_tool('-cfg', MINI_CFG, '--mode', 'exported', '--cpu_kernels', '--batch_size', '2', '--warmup', '1',
                   '--iters', '1', '--threads', '1', '--json', str(tmp_path / 'r.json'))
    saved = json.loads((tmp_path / 'r.json').read_text())[0]
    assert saved['mode'] == 'exported --cpu_kernels' and saved['cpu_kernels'] is True, out
    assert saved['onednn'] is False and saved['img/s'] > 0
    proc = subprocess.run([sys.executable, TOOL, '-cfg', MINI_CFG, '--mode', 'exported', '--cpu_kernels',
                           '--backend', 'onnxruntime'], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and 'only Paddle Inference runs, not --backend onnxruntime' in proc.stderr


@pytest.mark.slow       # traces the model to count its FLOPs
def test_flop_rate_is_twice_the_counted_macs_per_second_against_a_measured_sgemm(monkeypatch):
    """--flop_rate: GFLOP/s = 2 x the FLOPs the papers count (multiply-accumulates) x img/s, held
    against the better of Paddle's and numpy's sgemm rate measured on the spot."""
    import paddle
    from engine.families import build_from_config
    from engine.flops import count_flops
    from tools.benchmarking import flop_rate
    _, model = build_from_config(MINI_CFG)
    per_image, rate = flop_rate.model_gflops(model, 64, images_per_second=10.0)
    assert per_image == count_flops(model, 64) / 1e9 > 0
    assert rate == pytest.approx(2 * per_image * 10.0)
    monkeypatch.setattr(flop_rate, 'SGEMM_SIZE', 256)          # small: the rate only needs to be real
    rates = flop_rate.sgemm_gflops(paddle)
    assert set(rates) == {'paddle', 'numpy'} and all(r > 0.1 for r in rates.values())
