# Evaluate VVT-tiny on the ImageNet validation set with 8 GPUs
# (weights converted from the official checkpoint with port_weights/port.py, see README.md).
CUDA_VISIBLE_DEVICES=0,1,2,3,4,5,6,7 \
python main_multi_gpu.py \
-cfg='./configs/vvt_tiny_224.yaml' \
-dataset='imagenet2012' \
-batch_size=128 \
-data_path='/dataset/imagenet' \
-eval \
-pretrained='./vvt_tiny_224.pdparams' \
-amp \
"$@"
