# Fine-tune PiT-B distilled at 384 from its 224 weights (pos_embed resized 31x31 -> 53x53 on load), 8 GPUs,
# still distilling from RegNetY-16GF (the teacher sees the same 384 crops).
CUDA_VISIBLE_DEVICES=0,1,2,3,4,5,6,7 \
python main_multi_gpu.py \
-cfg='./configs/pit_b_distilled_384.yaml' \
-dataset='imagenet2012' \
-batch_size=32 \
-data_path='/dataset/imagenet' \
-pretrained='./pit_b_distilled_224.pdparams' \
-teacher_model_path='./regnety_160.pdparams' \
-amp \
"$@"
