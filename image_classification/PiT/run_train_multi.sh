# Train PiT-S from scratch on 8 GPUs (no distillation). Any flag appended overrides: sh run_train_multi.sh -output ./out
CUDA_VISIBLE_DEVICES=0,1,2,3,4,5,6,7 \
python main_multi_gpu.py \
-cfg='./configs/pit_s_224.yaml' \
-dataset='imagenet2012' \
-batch_size=128 \
-data_path='/dataset/imagenet' \
-amp \
"$@"
