# Train VVT-tiny from scratch on 8 GPUs (8 x 80 images, LR 5e-4 x 640 / 512 as the official main.py).
# For small / medium / large change the config (they also clip gradients at 1.0, drop path 0.3).
# Any flag appended overrides: sh run_train_multi.sh -output ./out
CUDA_VISIBLE_DEVICES=0,1,2,3,4,5,6,7 \
python main_multi_gpu.py \
-cfg='./configs/vvt_tiny_224.yaml' \
-dataset='imagenet2012' \
-batch_size=80 \
-data_path='/dataset/imagenet' \
-amp \
"$@"
