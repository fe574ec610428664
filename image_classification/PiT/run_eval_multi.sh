# Evaluate PiT-S on the ImageNet validation set with 8 GPUs.
CUDA_VISIBLE_DEVICES=0,1,2,3,4,5,6,7 \
python main_multi_gpu.py \
-cfg='./configs/pit_s_224.yaml' \
-dataset='imagenet2012' \
-batch_size=256 \
-data_path='/dataset/imagenet' \
-eval \
-pretrained='./pit_s_224.pdparams' \
-amp \
"$@"
