# Train ViT-S/16 (DeiT-S size) from scratch on ImageNet with DeiT's recipe, 4 GPUs
# (AdamW, lr 5e-4 x 1024 / 512, 300 epochs, RandAugment, mixup/cutmix, drop path 0.1).
# Any flag appended overrides: sh run_train_scratch_multi.sh -cfg='./configs/vit_tiny_patch16_224.yaml'
CUDA_VISIBLE_DEVICES=0,1,2,3 \
python main_multi_gpu.py \
-cfg='./configs/vit_small_patch16_224.yaml' \
-dataset='imagenet2012' \
-batch_size=256 \
-data_path='/dataset/imagenet' \
-amp \
"$@"
