# Evaluate PerViT-T on the ImageNet validation set with 8 GPUs. Add -visualize to also save the
# learned position-based attention under <output>/vis/ (and -visualize_image img.jpg for one image).
CUDA_VISIBLE_DEVICES=0,1,2,3,4,5,6,7 \
python main_multi_gpu.py \
-cfg='./configs/pervit_tiny_224.yaml' \
-dataset='imagenet2012' \
-batch_size_eval=192 \
-data_path='/dataset/imagenet' \
-eval \
-pretrained='./pervit_tiny_224.pdparams' \
-amp \
"$@"
