# Train SP-ViT-S at 224 on ImageNet with Token Labeling, 8 GPUs x 128 (the official
# distributed_train.sh recipe: lr 1.6e-3 at global batch 1024, drop path 0.1, EMA, MixToken).
# Label maps of the training list first (tools/generate_label.py, see README.md), then:
# Any flag appended overrides, e.g. sh run_train_multi.sh -cfg='./configs/spvit_m_224.yaml'
CUDA_VISIBLE_DEVICES=0,1,2,3,4,5,6,7 \
python main_multi_gpu.py \
-cfg='./configs/spvit_s_224.yaml' \
-dataset='imagenet2012' \
-batch_size=128 \
-data_path='/dataset/imagenet' \
-amp \
-token_label_dir='/dataset/imagenet_token_labels' \
"$@"
