#!/usr/bin/env bash
# The segmentation demo, on a machine with no GPU and no ADE20K: write the synthetic shapes set
# (make_synthetic_dataset.py, ADE20K layout), train the demo UperNet + SP-ViT as 2 CPU processes,
# evaluate the saved .pdparams with run_eval_multi.sh's entry point, and print the validation mIoU
# beside two chance levels measured on the same set (every pixel the most frequent class; a
# uniformly random class per pixel).  Needs the environment of tools/setup_env.sh (../.venv).
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(cd .. && pwd)
export PATH="$ROOT/.venv/bin:$PATH"
export PYTHONPATH="$ROOT:$ROOT/image_classification${PYTHONPATH:+:$PYTHONPATH}"
export GLOG_minloglevel=1 PYTHONWARNINGS="ignore:No ccache found${PYTHONWARNINGS:+,$PYTHONWARNINGS}"
DATA=$ROOT/demo_data/shapes
OUT=$ROOT/runs/seg_demo
CFG=configs/upernet_spvit_demo_shapes.yaml

python make_synthetic_dataset.py --out "$DATA"
rm -rf "$OUT"
start=$(date +%s)
python -m paddle.distributed.launch --log_level WARNING --nproc_per_node 2 --log_dir "$OUT/launch" \
    main_multi_gpu.py -cfg="$CFG" -data_path="$DATA" -output="$OUT" "$@"
echo "training took $(( $(date +%s) - start )) s (2 CPU processes)"
last=$(cat "$OUT/latest.txt")
python main_single_gpu.py -cfg="$CFG" -data_path="$DATA" -eval -pretrained="$OUT/$last" -output="$OUT/eval" \
    | tee "$OUT/eval.log"
python -m semantic_segmentation.chance -cfg="$CFG" -data_path="$DATA"
