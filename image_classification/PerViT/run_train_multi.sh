# Train PerViT-T from scratch on 8 GPUs x 128 images (the official recipe; for S / M use
# configs/pervit_small_224.yaml / pervit_medium_224.yaml, which carry their weight decay,
# warmup and drop path). Any flag appended overrides: sh run_train_multi.sh -output ./out
CUDA_VISIBLE_DEVICES=0,1,2,3,4,5,6,7 \
python main_multi_gpu.py \
-cfg='./configs/pervit_tiny_224.yaml' \
-dataset='imagenet2012' \
-batch_size=128 \
-data_path='/dataset/imagenet' \
-amp \
"$@"
