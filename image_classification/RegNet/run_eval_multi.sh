# Evaluate RegNetY-16GF (DeiT's teacher) on the ImageNet validation set with 8 GPUs.
CUDA_VISIBLE_DEVICES=0,1,2,3,4,5,6,7 \
python main_multi_gpu.py \
-cfg='./configs/regnety_160.yaml' \
-dataset='imagenet2012' \
-batch_size=128 \
-data_path='/dataset/imagenet' \
-eval \
-pretrained='./regnety_160.pdparams' \
-amp \
"$@"
