# Evaluate a trained UperNet on the ADE20K validation set with 8 GPUs: slide inference
# (crop 512, stride 341), single scale.  Multi-scale + flip (the README's second figure):
#   sh run_eval_multi.sh -opts SEG.TEST.SCALES '[0.5,0.75,1.0,1.25,1.5,1.75]' SEG.TEST.FLIP True
python -m paddle.distributed.launch --devices 0,1,2,3,4,5,6,7 --log_dir ./output/launch_eval \
main_multi_gpu.py \
-cfg='./configs/upernet_lvvit_s_512x512_160k_ade20k.yaml' \
-data_path='/dataset/ADEChallengeData2016' \
-eval \
-pretrained='./output/upernet_lvvit_s_512x512_160k_ade20k/upernet_lvvit_s_512x512_160k_ade20k-Best.pdparams' \
-output='./output/eval' \
"$@"
