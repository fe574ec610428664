# Evaluate PiT-S distilled (output = mean of the class and distillation heads) with 8 GPUs. No teacher is needed.
CUDA_VISIBLE_DEVICES=0,1,2,3,4,5,6,7 \
python main_multi_gpu.py \
-cfg='./configs/pit_s_distilled_224.yaml' \
-dataset='imagenet2012' \
-batch_size=256 \
-data_path='/dataset/imagenet' \
-eval \
-pretrained='./pit_s_distilled_224.pdparams' \
-amp \
"$@"
