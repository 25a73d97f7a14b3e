"""Chapter 04, Captions and guidance: the common mistakes of its exercises, each written out as the
wrong answer it gives (see `minidiff.course.mistakes`)."""

import jax
import jax.numpy as jnp


GUIDANCE = {
    "guidance applied to the unconditional branch: that moves away from the caption; "
    "start from the unconditional output and add guidance times (conditional - unconditional)":
        lambda conditional, unconditional, guidance: conditional + guidance * (unconditional - conditional),
    "only the conditional output is scaled: guidance x conditional is not an extrapolation":
        lambda conditional, unconditional, guidance: guidance * conditional,
    "the unconditional output is not subtracted: unconditional + guidance (conditional - unconditional)":
        lambda conditional, unconditional, guidance: unconditional + guidance * conditional,
}


def _attention_weights(q, k, mask, scale: bool = True, keys_axis: int = -1, masked: bool = True):
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / (jnp.sqrt(q.shape[-1]) if scale else 1.0)
    if masked:
        logits = jnp.where(mask[:, None, None, :], logits, -1e30)
    return jax.nn.softmax(logits, axis=keys_axis)


ATTENTION = {
    "no 1 / sqrt(d): without it the logits grow with the head width and the softmax saturates":
        lambda q, k, v, mask: jnp.einsum("bhqk,bkhd->bqhd", _attention_weights(q, k, mask, scale=False), v),
    "the mask is ignored: the padding after the caption's last word is attended to":
        lambda q, k, v, mask: jnp.einsum("bhqk,bkhd->bqhd", _attention_weights(q, k, mask, masked=False), v),
    "the softmax runs over the queries (image positions), not the keys (the words each position reads)":
        lambda q, k, v, mask: jnp.einsum("bhqk,bkhd->bqhd", _attention_weights(q, k, mask, keys_axis=-2), v),
}

BEST_GUIDANCE = {
    "that is the guidance of the lowest adherence, not the highest":
        lambda adherence_at, guidances: min(guidances, key=adherence_at),
}
