"""Parts of the random architectures that several families share (the SD VAE, CLIP-L and CLIP-G, their tiny
versions), for `random_pipeline` and model/random_weights.py."""

CLIP_IDS = dict(vocab_size=49408, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407)
CLIP_L = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    hidden_act="quick_gelu",
    projection_dim=768,
)
CLIP_G = dict(
    hidden_size=1280,
    intermediate_size=5120,
    num_hidden_layers=32,
    num_attention_heads=20,
    hidden_act="gelu",
    projection_dim=1280,
)
TINY_CLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, projection_dim=32)

SD_VAE = dict(  # SD 1.x/2.x's and SDXL's VAE (SD 3's has 16 latent channels)
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
)
TINY_VAE_SHAPE = dict(  # three levels of small widths: seconds on a CPU
    block_out_channels=(32, 64, 64),
    layers_per_block=1,
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    norm_num_groups=8,
)
