# Evaluate ViT-B/16 at 384 on the ImageNet validation set with 4 GPUs, from Google's
# fine-tuned checkpoint converted first (see README.md):
#   python ../../port_weights/port.py --src imagenet21k+imagenet2012_ViT-B_16.npz \
#       --config ./configs/vit_base_patch16_384.yaml --dst ./vit_base_patch16_384.pdparams
CUDA_VISIBLE_DEVICES=0,1,2,3 \
python main_multi_gpu.py \
-cfg='./configs/vit_base_patch16_384.yaml' \
-dataset='imagenet2012' \
-batch_size=64 \
-data_path='/dataset/imagenet' \
-eval \
-pretrained='./vit_base_patch16_384.pdparams' \
-amp \
"$@"
