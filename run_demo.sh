#!/usr/bin/env bash
# The main job, on any machine with Python 3.9+ and no GPU, no ImageNet, no internet
# beyond PyPI: set up ./.venv, write the handwritten-digits dataset as image files,
# train a small ViT with main_multi_gpu.py as 2 CPU processes, evaluate the saved
# .pdparams with run_eval_multi.sh and print the validation top-1.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$PWD
bash tools/setup_env.sh
export PATH="$ROOT/.venv/bin:$PATH"
DATA=$ROOT/demo_data/digits
OUT=$ROOT/runs/demo
CFG=configs/vit_demo_digits_32.yaml

python tools/make_demo_dataset.py --out "$DATA"
rm -rf "$OUT"
cd image_classification/ViT
start=$(date +%s)
# the launcher itself imports Paddle (which warns "No ccache found") and lists its whole
# configuration at INFO: keep the console to the run's own output (errors still show)
PYTHONWARNINGS="ignore:No ccache found${PYTHONWARNINGS:+,$PYTHONWARNINGS}" \
python -m paddle.distributed.launch --log_level WARNING --nproc_per_node 2 --log_dir "$OUT/launch" \
    main_multi_gpu.py -cfg="$CFG" -data_path="$DATA" -output="$OUT"
echo "training took $(( $(date +%s) - start )) s (2 CPU processes)"
last=$(cat "$OUT/latest.txt")
sh run_eval_multi.sh -cfg="$CFG" -data_path="$DATA" -pretrained="$OUT/$last" -output="$OUT/eval" \
    | tee "$OUT/eval.log"
grep -o 'Validation Acc@1: [0-9.]*' "$OUT/eval.log" | tail -1 | awk '{printf "top-1 on the %s: %.2f%%\n", "digits validation set", $3 * 100}'
