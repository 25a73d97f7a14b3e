"""The same network in PyTorch, built from HF diffusers (UNet2DConditionModel, PixArtTransformer2DModel): the
benchmark's peer.

Readers who do not use minidiff would build a text-to-image model from
diffusers, so `minidiff bench --pytorch` times that, on the same device, in the
same run. This module needs the `bench` extra (`pip install "minidiff[bench]"`,
PyTorch and diffusers); nothing else in minidiff imports it.

"The same network" is meant exactly. `diffusers_unet` configures
UNet2DConditionModel as minidiff's U-Net (same levels, residual blocks with
scale-shift conditioning, spatial transformers with self- and cross-attention
and a GEGLU feed-forward, a resblock-attention-resblock middle), and
`unet_state_dict` translates minidiff's parameters into diffusers' names and
layouts; the tests check that both then compute the same output. The caption
encoder is PyTorch's own pre-norm `nn.TransformerEncoder` of the same size
(its attention projections carry biases, a few hundred parameters more).

minidiff's DiT is PixArt-α's architecture, so its peer is diffusers'
PixArtTransformer2DModel (`diffusers_dit`, `dit_state_dict`), with one
addition, `PeerDiT`: PixArt-α conditions its adaptive norms on the noise level
alone, minidiff's DiT on the pooled caption too, so the peer runs PixArt's own
modules in PixArt's order and adds a linear map of the pooled caption to the
embedded noise level, as minidiff does.

The peer trains as minidiff does, from the same `TrainConfig`: v-prediction with minidiff's loss
weighting, caption dropout, AdamW with gradient clipping, and an EMA of its weights.
"""

import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import PixArtTransformer2DModel, UNet2DConditionModel
from flax import nnx

from minidiff.captions import PAD
from minidiff.corruption import loss_weight, network_time, snr
from minidiff.denoiser import UNetConfig
from minidiff.dit import DiTConfig
from minidiff.loop import TrainConfig
from minidiff.model import ModelConfig


def diffusers_unet(c: UNetConfig) -> UNet2DConditionModel:
    """UNet2DConditionModel with minidiff's architecture; it runs on space-to-depth patches, like minidiff's.

    The one difference: diffusers has no `modulated_output_norm` (a Linear and a scale-and-shift, under
    1 % of the parameters and FLOPs of any preset), so its last GroupNorm is always plain."""
    if min(c.widths) < c.groups:
        raise ValueError(f"diffusers uses {c.groups} GroupNorm groups everywhere; widths {c.widths} are too narrow")
    sizes = [c.image_size // c.patch_size // 2**i for i in range(len(c.widths))]
    attend = [size in c.attention_resolutions for size in sizes]
    if c.in_channels != c.out_channels:
        raise ValueError("the peer U-Net is shown x_t alone: in_channels must equal out_channels")
    patch_channels = c.patch_size**2 * c.out_channels
    return UNet2DConditionModel(
        sample_size=sizes[0], in_channels=patch_channels, out_channels=patch_channels,
        flip_sin_to_cos=False, freq_shift=0,  # minidiff's sinusoids: [sin, cos], frequencies 10000^(-i/half)
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attend),
        mid_block_type="UNetMidBlock2DCrossAttn",
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attend)),
        block_out_channels=c.widths, layers_per_block=c.blocks_per_level, downsample_padding=1,
        act_fn="silu", norm_num_groups=c.groups, norm_eps=1e-6,
        cross_attention_dim=c.caption_dim,
        attention_head_dim=c.heads,  # diffusers' historical name for the number of heads
        use_linear_projection=True,
        resnet_time_scale_shift="scale_shift",
        time_embedding_dim=c.cond_dim,
        class_embed_type="simple_projection", projection_class_embeddings_input_dim=c.caption_dim,  # pooled caption
    )


# --- minidiff's parameters under diffusers' names ---------------------------------


def _linear(prefix, p):
    out = {f"{prefix}.weight": p["kernel"].T}  # (in, out) -> (out, in)
    if "bias" in p:
        out[f"{prefix}.bias"] = p["bias"]
    return out


def _conv(prefix, p):
    return {f"{prefix}.weight": p["kernel"].transpose(3, 2, 0, 1), f"{prefix}.bias": p["bias"]}  # HWIO -> OIHW


def _norm(prefix, p):
    return {f"{prefix}.weight": p["scale"], f"{prefix}.bias": p["bias"]}


def _resblock(prefix, p):
    out = {**_norm(f"{prefix}.norm1", p["norm1"]), **_conv(f"{prefix}.conv1", p["conv1"]),
           **_linear(f"{prefix}.time_emb_proj", p["cond"]), **_norm(f"{prefix}.norm2", p["norm2"]),
           **_conv(f"{prefix}.conv2", p["conv2"])}
    if "skip" in p:
        out |= _conv(f"{prefix}.conv_shortcut", p["skip"])
    return out


def _attention(prefix, p):
    k, v = np.split(p["to_kv"]["kernel"], 2, axis=-1)
    return {**_linear(f"{prefix}.to_q", p["to_q"]), **_linear(f"{prefix}.to_k", {"kernel": k}),
            **_linear(f"{prefix}.to_v", {"kernel": v}), **_linear(f"{prefix}.to_out.0", p["out"])}


def _transformer(prefix, p):
    block = f"{prefix}.transformer_blocks.0"
    return {**_norm(f"{prefix}.norm", p["norm"]), **_linear(f"{prefix}.proj_in", p["project_in"]),
            **_norm(f"{block}.norm1", p["norm_self"]), **_attention(f"{block}.attn1", p["self_attention"]),
            **_norm(f"{block}.norm2", p["norm_cross"]), **_attention(f"{block}.attn2", p["cross_attention"]),
            **_norm(f"{block}.norm3", p["norm_mlp"]), **_linear(f"{block}.ff.net.0.proj", p["mlp_in"]),
            **_linear(f"{block}.ff.net.2", p["mlp_out"]), **_linear(f"{prefix}.proj_out", p["project_out"])}


def _level(prefix, p):
    out = {}
    for i, block in p["resblocks"].items():
        out |= _resblock(f"{prefix}.resnets.{i}", block)
    for i, block in p.get("attentions", {}).items():
        out |= _transformer(f"{prefix}.attentions.{i}", block)
    return out


def unet_state_dict(unet) -> dict[str, torch.Tensor]:
    """minidiff's `UNet` parameters as a state dict for `diffusers_unet(unet.config)`."""
    if unet.config.modulated_output_norm:
        raise ValueError("diffusers' UNet2DConditionModel has a plain GroupNorm before its last conv: "
                         "build the U-Net with modulated_output_norm=False to copy it over")
    p = _numpy_tree(nnx.to_pure_dict(nnx.state(unet, nnx.Param)))
    out = {**_linear("time_embedding.linear_1", p["cond_in"]), **_linear("time_embedding.linear_2", p["cond_out"]),
           **_linear("class_embedding", p["caption_to_cond"]), **_conv("conv_in", p["stem"]),
           **_norm("conv_norm_out", p["out_norm"]), **_conv("conv_out", p["out"])}
    for i, level in p["down"].items():
        out |= _level(f"down_blocks.{i}", level)
    for i, conv in p["downsamplers"].items():
        out |= _conv(f"down_blocks.{i}.downsamplers.0.conv", conv)
    for i, level in p["up"].items():
        out |= _level(f"up_blocks.{i}", level)
    for i, conv in p["upsamplers"].items():
        out |= _conv(f"up_blocks.{i}.upsamplers.0.conv", conv)
    middle = p["middle"]
    out |= _resblock("mid_block.resnets.0", middle["resblock1"]) | _resblock("mid_block.resnets.1", middle["resblock2"])
    out |= _transformer("mid_block.attentions.0", middle["attention"])
    return {name: torch.tensor(np.asarray(value)) for name, value in out.items()}


def diffusers_dit(c: DiTConfig) -> PixArtTransformer2DModel:
    """PixArtTransformer2DModel with minidiff's DiT architecture (all but the pooled caption: see `PeerDiT`)."""
    return PixArtTransformer2DModel(
        num_attention_heads=c.heads, attention_head_dim=c.width // c.heads, in_channels=c.in_channels,
        out_channels=c.out_channels, num_layers=c.depth, cross_attention_dim=c.width,
        attention_bias=False,  # minidiff's query, key and value projections have no bias
        sample_size=c.image_size, patch_size=c.patch_size, interpolation_scale=1, use_additional_conditions=False,
        caption_channels=c.caption_dim,
    )


def dit_state_dict(dit) -> dict[str, torch.Tensor]:
    """minidiff's `DiT` parameters as a state dict for `PeerDiT(dit.config)`."""
    c = dit.config
    p = _numpy_tree(nnx.to_pure_dict(nnx.state(dit, nnx.Param)))
    patch = p["patch_in"]["kernel"].reshape(c.patch_size, c.patch_size, c.in_channels, c.width)  # rows of (py, px, c)
    half = c.frequency_dim // 2  # diffusers' sinusoids come as [cos, sin], minidiff's as [sin, cos]
    time_in = {"kernel": np.concatenate([p["time_in"]["kernel"][half:], p["time_in"]["kernel"][:half]]),
               "bias": p["time_in"]["bias"]}
    out = {"transformer.pos_embed.proj.weight": patch.transpose(3, 2, 0, 1), "transformer.pos_embed.proj.bias":
           p["patch_in"]["bias"], **_linear("transformer.adaln_single.emb.timestep_embedder.linear_1", time_in),
           **_linear("transformer.adaln_single.emb.timestep_embedder.linear_2", p["time_out"]),
           **_linear("caption_to_cond", p["caption_to_cond"]),
           **_linear("transformer.caption_projection.linear_1", p["caption_in"]),
           **_linear("transformer.caption_projection.linear_2", p["caption_out"]),
           **_linear("transformer.adaln_single.linear", p["modulation"]),
           "transformer.scale_shift_table": p["out_table"], **_linear("transformer.proj_out", p["out"])}
    for i, block in p["blocks"].items():
        prefix = f"transformer.transformer_blocks.{i}"
        out |= {f"{prefix}.scale_shift_table": block["table"], **_attention(f"{prefix}.attn1", block["self_attention"]),
                **_attention(f"{prefix}.attn2", block["cross_attention"]),
                **_linear(f"{prefix}.ff.net.0.proj", block["mlp_in"]), **_linear(f"{prefix}.ff.net.2", block["mlp_out"])}
    return {name: torch.tensor(np.ascontiguousarray(value)) for name, value in out.items()}


class PeerDiT(torch.nn.Module):
    """diffusers' PixArtTransformer2DModel, its forward pass written out to add the pooled caption to the
    conditioning (PixArt-α's is the noise level alone). (B, C, H, W) in and out, PyTorch's layout."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.transformer = diffusers_dit(config)
        self.caption_to_cond = torch.nn.Linear(config.caption_dim, config.width)

    def forward(self, xt, timesteps, tokens, keep, pooled):
        m, (batch, _, height, width), p = self.transformer, xt.shape, self.transformer.config.patch_size
        h = m.pos_embed(xt)  # (B, N, D): the patches and their positions
        cond = m.adaln_single.emb(timesteps, None, None, batch_size=batch, hidden_dtype=h.dtype)
        cond = cond + self.caption_to_cond(pooled)
        modulation = m.adaln_single.linear(F.silu(cond))
        context = m.caption_projection(tokens)
        padding = ((1 - keep.to(h.dtype)) * -10000.0)[:, None]  # as PixArtTransformer2DModel.forward turns the mask
        for block in m.transformer_blocks:
            h = block(h, encoder_hidden_states=context, encoder_attention_mask=padding, timestep=modulation)
        shift, scale = (m.scale_shift_table[None] + cond[:, None]).chunk(2, dim=1)
        h = m.proj_out(m.norm_out(h) * (1 + scale) + shift)
        h = h.reshape(batch, height // p, width // p, p, p, -1)
        return torch.einsum("nhwpqc->nchpwq", h).reshape(batch, -1, height, width)


def _numpy_tree(tree):
    return {k: _numpy_tree(v) if isinstance(v, dict) else np.asarray(v) for k, v in tree.items()}


# --- The whole peer, and its training step -----------------------------------------


class PeerTextToImage(torch.nn.Module):
    """Caption encoder + diffusers U-Net or DiT, on (B, C, H, W) images: PyTorch's layout."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        t = config.text
        self.backbone, self.patch_size = config.backbone, config.denoiser.patch_size
        self.token_embedding = torch.nn.Embedding(t.vocab_size, t.dim)
        self.position_embedding = torch.nn.Parameter(0.02 * torch.randn(t.max_length, t.dim))
        layer = torch.nn.TransformerEncoderLayer(t.dim, t.heads, 4 * t.dim, dropout=0.0, activation="gelu",
                                                 batch_first=True, norm_first=True)
        self.encoder = torch.nn.TransformerEncoder(layer, t.depth, norm=torch.nn.LayerNorm(t.dim),
                                                   enable_nested_tensor=False)
        self.denoiser = diffusers_unet(config.denoiser) if config.backbone == "unet" else PeerDiT(config.denoiser)

    def forward(self, xt, timesteps, token_ids):
        keep = token_ids != PAD
        tokens = self.token_embedding(token_ids) + self.position_embedding[: token_ids.shape[1]]
        tokens = self.encoder(tokens, src_key_padding_mask=~keep)
        if self.backbone == "dit":
            return self.denoiser(xt, timesteps, tokens, keep, tokens[:, 0])
        out = self.denoiser(F.pixel_unshuffle(xt, self.patch_size), timesteps, encoder_hidden_states=tokens,
                            class_labels=tokens[:, 0], encoder_attention_mask=keep.float()).sample
        return F.pixel_shuffle(out, self.patch_size)


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def benchmark_peer(config: ModelConfig, train_config: TrainConfig, x0: np.ndarray, token_ids: np.ndarray,
                   empty_ids: np.ndarray, steps: int = 10, sampling: bool = True) -> dict:
    """Train images/s (median over `steps` after two warm-up steps) and DDIM-20 guided sampling images/s.

    `x0` is (B, H, W, C) in [-1, 1] as minidiff's step takes it; the batch is the same, and so are the
    noise schedule, the time the network is told, caption dropout, loss weighting, gradient clipping,
    weight decay, EMA and precision. The peer is trained by diffusion and predicts v, as minidiff's
    presets do.
    """
    process = config.process
    if process.kind != "diffusion" or process.prediction != "v":
        raise ValueError(f"the PyTorch peer is trained by diffusion and predicts v; this model is a {process.kind} "
                         f"model predicting {process.prediction}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=train_config.precision == "bfloat16")
    torch.manual_seed(0)
    model = PeerTextToImage(config).to(device)
    ema = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.AdamW(model.parameters(), lr=train_config.learning_rate,
                                  weight_decay=train_config.weight_decay)
    # Per training step t: alpha_bar, the network time as diffusers' timestep embedding reads it (minidiff's
    # U-Net scales its time by 1000 the same way), and the loss weight.
    schedule = process.noise_schedule()
    steps_of_schedule = np.arange(schedule.num_timesteps)
    alpha_bar = torch.tensor(np.array(schedule.alpha_bar), device=device)
    timesteps = torch.tensor(1000 * np.asarray(network_time(steps_of_schedule, schedule.num_timesteps)), device=device)
    weights = torch.tensor(np.asarray(loss_weight(process.loss_weighting, "v", snr(schedule.alpha_bar),
                                                  process.min_snr_gamma)), device=device)
    x0 = torch.tensor(np.array(x0), device=device).permute(0, 3, 1, 2)
    ids = torch.tensor(np.array(token_ids), device=device, dtype=torch.long)
    empty = torch.tensor(np.array(empty_ids), device=device, dtype=torch.long)
    batch = x0.shape[0]

    def train_step():
        t = torch.randint(0, len(alpha_bar), (batch,), device=device)
        ab = alpha_bar[t].view(-1, 1, 1, 1)
        eps = torch.randn_like(x0)
        xt = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
        target = ab.sqrt() * eps - (1 - ab).sqrt() * x0  # v
        dropped = torch.where(torch.rand(batch, 1, device=device) < config.caption_dropout, empty[None], ids)
        with autocast:
            out = model(xt, timesteps[t], dropped).float()
        loss = (weights[t] * ((out - target) ** 2).mean((1, 2, 3))).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train_config.grad_clip)
        optimizer.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, list(model.parameters()), 1 - train_config.ema_decay)

    def synchronise():
        if device.type == "cuda":
            torch.cuda.synchronize()

    times = []
    for step in range(steps + 2):
        start = time.perf_counter()
        train_step()
        synchronise()
        times.append(time.perf_counter() - start)
    step_seconds = statistics.median(times[2:])
    result = {"peer_parameters": count_parameters(model), "peer_step_s": step_seconds,
              "peer_train_images_per_s": batch / step_seconds}
    if sampling:
        sample = lambda: ddim_guided(model, alpha_bar, timesteps, ids, empty, x0.shape, autocast)
        sample()
        synchronise()
        start = time.perf_counter()
        sample()
        synchronise()
        result["peer_sample_images_per_s"] = batch / (time.perf_counter() - start)
    if device.type == "cuda":
        result["peer_peak_memory_gb"] = torch.cuda.max_memory_allocated() / 1e9
    return result


@torch.no_grad()
def ddim_guided(model, alpha_bar, timesteps, ids, empty, shape, autocast, sampling_steps: int = 20,
                guidance: float = 3.0):
    """Deterministic DDIM with classifier-free guidance: the conditional and unconditional passes as one batch."""
    batch = shape[0]
    steps = torch.linspace(len(alpha_bar) - 1, 0, sampling_steps, device=ids.device).round().long()
    both_ids = torch.cat([ids, empty[None].expand(batch, -1)])
    x = torch.randn(shape, device=ids.device)
    for i, t in enumerate(steps):
        with autocast:
            v_cond, v_uncond = model(torch.cat([x, x]), timesteps[t].expand(2 * batch), both_ids).float().chunk(2)
        v = v_uncond + guidance * (v_cond - v_uncond)
        ab = alpha_bar[t]
        x0 = ab.sqrt() * x - (1 - ab).sqrt() * v
        eps = (1 - ab).sqrt() * x + ab.sqrt() * v
        ab_next = alpha_bar[steps[i + 1]] if i + 1 < sampling_steps else torch.ones((), device=x.device)
        x = ab_next.sqrt() * x0 + (1 - ab_next).sqrt() * eps
    return x
