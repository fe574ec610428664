# Train UperNet + LV-ViT-S on ADE20K, 512x512 crops, 160k iterations, 8 GPUs x 2 images
# (TokenLabeling's seg/configs/lvvit/upernet_lvvit_s_512x512_160k_ade20k.py).  The backbone starts
# from an ImageNet classification checkpoint (ported, see port_weights/, or trained here).
# SP-ViT-S: -cfg='./configs/upernet_spvit_s_512x512_160k_ade20k.yaml'.  Any flag appended overrides.
python -m paddle.distributed.launch --devices 0,1,2,3,4,5,6,7 --log_dir ./output/launch \
main_multi_gpu.py \
-cfg='./configs/upernet_lvvit_s_512x512_160k_ade20k.yaml' \
-data_path='/dataset/ADEChallengeData2016' \
-pretrained='./lvvit_s_224.pdparams' \
-output='./output/upernet_lvvit_s_512x512_160k_ade20k' \
"$@"
