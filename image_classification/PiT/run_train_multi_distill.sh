# Train PiT-S distilled on 8 GPUs, hard distillation from RegNetY-16GF (settings in the config's TRAIN section).
# The teacher: port DeiT's regnety_160-a5fe301d.pth first (see README), or pass another -teacher_model_path.
CUDA_VISIBLE_DEVICES=0,1,2,3,4,5,6,7 \
python main_multi_gpu.py \
-cfg='./configs/pit_s_distilled_224.yaml' \
-dataset='imagenet2012' \
-batch_size=128 \
-data_path='/dataset/imagenet' \
-teacher_model_path='./regnety_160.pdparams' \
-amp \
"$@"
