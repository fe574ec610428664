# Fine-tune ViT-B/16 at 384 on ImageNet from Google's ImageNet-21k checkpoint, 4 GPUs
# (SGD, lr 0.03 at global batch 512 = 4 x 64 x accum 2, grad clip 1.0, 8 epochs; see the config).
# First convert the checkpoint (see README.md):
#   python ../../port_weights/port.py --src ViT-B_16.npz --config ./configs/vit_base_patch16_224.yaml \
#       --dst ./vit_base_patch16_224_in21k.pdparams -opts MODEL.NUM_CLASSES 21843
# The 21k head is dropped on load (another NUM_CLASSES) and pos_embed is resized 14x14 -> 24x24.
# Any flag appended overrides: sh run_train_multi.sh -output ./out
CUDA_VISIBLE_DEVICES=0,1,2,3 \
python main_multi_gpu.py \
-cfg='./configs/vit_base_patch16_384.yaml' \
-dataset='imagenet2012' \
-batch_size=64 \
-data_path='/dataset/imagenet' \
-pretrained='./vit_base_patch16_224_in21k.pdparams' \
-amp \
"$@"
