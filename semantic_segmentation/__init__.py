"""Semantic segmentation on the shared engine: UperNet over any family's per-block features.

PaddleViT keeps segmentation in its own top-level folder; this is that folder
for this repository's families.  The recipe is TokenLabeling's `seg/` (UperNet
with LV-ViT-S, which the SP-ViT README's segmentation table reuses), written in
Paddle on `engine/` (config, checkpoints, logging, distributed) rather than on
PaddleSeg, whose last release does not run on Paddle 3.3 / numpy 2 (README).

    config.py      the segmentation keys, on top of the backbone family's config
    backbone.py    a classification model as a feature extractor (+ loading its weights)
    neck.py        the side-layer neck: one stride-16 map per tap -> strides 4 / 8 / 16 / 16
    heads.py       UPerHead (PPM + FPN) and FCNHead
    segmentor.py   backbone + neck + heads: losses, whole / slide / multi-scale+flip inference
    transforms.py  MMSegmentation 0.x's ADE20K pipelines
    ade20k.py      the ADE20K folder layout (and the synthetic set in the same layout)
    metrics.py     confusion matrix -> mIoU / aAcc / per-class IoU
    schedule.py    poly LR with linear warmup (mmcv's)
    train.py       the iteration-based run (train, evaluate, resume) behind main_*_gpu.py / run_*.sh
    make_synthetic_dataset.py, chance.py, run_demo.sh
                   the demo: a synthetic set in the ADE20K layout, its chance levels, the run
    benchmark.py   parameters, FLOPs and CPU latency (README figures)
"""
