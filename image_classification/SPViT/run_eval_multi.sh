# Evaluate SP-ViT-S at 224 on the ImageNet validation set with 4 GPUs (resize 248 bicubic,
# center crop 224, as the official validate.py). Convert the official checkpoint first:
#   python ../../port_weights/port.py --src SP-ViT-S-224.pth.tar \
#       --config ./configs/spvit_s_224.yaml --dst ./spvit_s_224.pdparams
CUDA_VISIBLE_DEVICES=0,1,2,3 \
python main_multi_gpu.py \
-cfg='./configs/spvit_s_224.yaml' \
-dataset='imagenet2012' \
-batch_size=64 \
-data_path='/dataset/imagenet' \
-eval \
-pretrained='./spvit_s_224.pdparams' \
-amp \
"$@"
