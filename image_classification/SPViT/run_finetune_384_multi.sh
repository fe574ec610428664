# Fine-tune SP-ViT-S at 384 from a 224 checkpoint, 8 GPUs x 32 (the official
# distributed_fine_tune.sh: lr 5e-6 constant, weight decay 1e-8, token labels on the 24x24 grid).
# -pretrained loads the 224 weights and resizes pos_embed 14x14 -> 24x24 (bicubic); the
# spatial-prior parameters are functions of the patch offset and need no resizing.
CUDA_VISIBLE_DEVICES=0,1,2,3,4,5,6,7 \
python main_multi_gpu.py \
-cfg='./configs/spvit_s_384.yaml' \
-dataset='imagenet2012' \
-batch_size=32 \
-data_path='/dataset/imagenet' \
-pretrained='./spvit_s_224.pdparams' \
-amp \
-token_label_dir='/dataset/imagenet_token_labels' \
"$@"
