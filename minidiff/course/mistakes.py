"""The common mistakes of the chapters' exercises, each written out as the wrong answer it gives.

`exercises.check` runs them on the exercise's inputs: an answer whose output
matches one is told, in the learner's terms, which mistake it made, instead of
only that its values differ. One dictionary per exercise, in the chapters'
order; each maps the mistake, in words, to a function with the exercise's
arguments that makes it.
"""

import jax
import jax.numpy as jnp
import numpy as np

from minidiff.captions import BOS, PAD
from minidiff.corruption import cosine_alpha_bar
from minidiff.text_encoders.bag_of_words import masked_mean
from minidiff.text_encoders.masked_language_model import CHOSEN_RATE, REPLACED_BY_MASK, REPLACED_BY_RANDOM


def per_image(values):
    """(B,) -> (B, 1, 1, 1): one value per image, broadcast over its pixels."""
    return jnp.reshape(values, (-1, 1, 1, 1))


# --- 01 Destroying images -----------------------------------------------------------

Q_SAMPLE = {
    "the square roots are missing: x0 is scaled by sqrt(alpha_bar), eps by sqrt(1 - alpha_bar)":
        lambda x0, alpha_bar, eps: per_image(alpha_bar) * x0 + (1 - per_image(alpha_bar)) * eps,
    "alpha_bar and 1 - alpha_bar are swapped: alpha_bar is the signal left, so it scales x0":
        lambda x0, alpha_bar, eps: jnp.sqrt(1 - per_image(alpha_bar)) * x0 + jnp.sqrt(per_image(alpha_bar)) * eps,
}

SNR_CROSSING = {
    "one step early: that is the last step with SNR >= 1, not the first with SNR < 1":
        lambda schedule: jnp.argmax(schedule.alpha_bar < 0.5) - 1,
    "step 0, where SNR is still above 1: the SNR starts high and falls; find where SNR < 1 first holds "
    "(and mind that SNR is alpha_bar / (1 - alpha_bar), signal over noise)":
        lambda schedule: jnp.argmax((1 - schedule.alpha_bar) / schedule.alpha_bar < 1),
}

ALPHA_BAR = {
    "a beta where 1 - beta belongs: alpha_bar is the product of 1 - beta_s, the signal each step keeps":
        lambda beta: jnp.cumprod(beta),
    "a sum where the product belongs: each step scales what the steps before it left":
        lambda beta: 1 - jnp.cumsum(beta),
    "one minus the product of the betas: take the product of (1 - beta_s)":
        lambda beta: 1 - jnp.cumprod(beta),
}

# --- 02 Learning to denoise -----------------------------------------------------------

V_TARGET = {
    "x0 and eps are swapped: v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0":
        lambda x0, eps, alpha_bar: jnp.sqrt(per_image(alpha_bar)) * x0 - jnp.sqrt(1 - per_image(alpha_bar)) * eps,
    "the square roots are missing":
        lambda x0, eps, alpha_bar: per_image(alpha_bar) * eps - (1 - per_image(alpha_bar)) * x0,
}

X0_FROM_EPS = {
    "divided by alpha_bar where its square root belongs":
        lambda xt, eps, alpha_bar: (xt - jnp.sqrt(1 - per_image(alpha_bar)) * eps) / per_image(alpha_bar),
    "the noise is subtracted without its scale sqrt(1 - alpha_bar)":
        lambda xt, eps, alpha_bar: (xt - eps) / jnp.sqrt(per_image(alpha_bar)),
    "not divided by sqrt(alpha_bar): x_t - sqrt(1 - alpha_bar) eps is sqrt(alpha_bar) x0, not x0":
        lambda xt, eps, alpha_bar: xt - jnp.sqrt(1 - per_image(alpha_bar)) * eps,
}

# --- 03 From noise to images -----------------------------------------------------------

DDIM_STEP = {
    "the weights of alpha_bar_t, where the step starts: x_s is made with alpha_bar_s, where it goes":
        lambda xt, x0, eps, alpha_bar_t, alpha_bar_s: jnp.sqrt(alpha_bar_t) * x0 + jnp.sqrt(1 - alpha_bar_t) * eps,
    "the square roots are missing":
        lambda xt, x0, eps, alpha_bar_t, alpha_bar_s: alpha_bar_s * x0 + (1 - alpha_bar_s) * eps,
    "x0 and eps are swapped: sqrt(alpha_bar_s) scales the clean image":
        lambda xt, x0, eps, alpha_bar_t, alpha_bar_s: jnp.sqrt(alpha_bar_s) * eps + jnp.sqrt(1 - alpha_bar_s) * x0,
}

EPS_FROM_X0 = {
    "divided by 1 - alpha_bar where its square root belongs":
        lambda xt, x0, alpha_bar: (xt - jnp.sqrt(per_image(alpha_bar)) * x0) / (1 - per_image(alpha_bar)),
    "x0 is subtracted without its scale sqrt(alpha_bar)":
        lambda xt, x0, alpha_bar: (xt - x0) / jnp.sqrt(1 - per_image(alpha_bar)),
    "alpha_bar and 1 - alpha_bar are swapped":
        lambda xt, x0, alpha_bar: (xt - jnp.sqrt(1 - per_image(alpha_bar)) * x0) / jnp.sqrt(per_image(alpha_bar)),
}

TIMESTEPS = {
    "counting up: sampling starts from the noisiest step, T - 1, and walks down to 0":
        lambda num_train_steps, num_steps: np.round(np.linspace(0, num_train_steps - 1, num_steps)).astype(np.int32),
    "from T down to 1: the steps are numbered 0 to T - 1":
        lambda num_train_steps, num_steps: np.round(np.linspace(num_train_steps, 1, num_steps)).astype(np.int32),
    "truncated, not rounded: astype(int) cuts 713.6 to 713, where the nearest step is 714":
        lambda num_train_steps, num_steps: np.linspace(num_train_steps - 1, 0, num_steps).astype(np.int32),
}

# --- 04 Captions and guidance -----------------------------------------------------------

GUIDANCE = {
    "guidance applied to the unconditional branch: that moves away from the caption; "
    "start from the unconditional output and add scale times (conditional - unconditional)":
        lambda conditional, unconditional, scale: conditional + scale * (unconditional - conditional),
    "only the conditional output is scaled: scale x conditional is not an extrapolation":
        lambda conditional, unconditional, scale: scale * conditional,
    "the unconditional output is not subtracted: unconditional + scale (conditional - unconditional)":
        lambda conditional, unconditional, scale: unconditional + scale * conditional,
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
    "that is the scale of the lowest adherence, not the highest":
        lambda adherence_at, scales: min(scales, key=adherence_at),
}

# --- 05 What the words mean -----------------------------------------------------------

MASKED_MEAN = {
    "the padding is averaged in: leave out the positions where the mask is False":
        lambda x, mask: jnp.mean(x, axis=1),
    "divided by the full length L: divide by the number of the caption's tokens, the mask's sum":
        lambda x, mask: masked_mean(x, mask) * jnp.sum(mask, axis=1, keepdims=True) / x.shape[1],
    "BOS is left out: the mean is over every token the mask keeps, BOS included":
        lambda x, mask: masked_mean(x, mask.at[:, 0].set(False)),
}


def _mask_words(key, token_ids, vocab_size, mask_id, words_only=True, below=True, keep_some=True, first_word=4):
    choose_key, how_key, word_key = jax.random.split(key, 3)
    draws = jax.random.uniform(choose_key, token_ids.shape)
    chosen = draws < CHOSEN_RATE if below else draws >= CHOSEN_RATE
    if words_only:
        chosen = chosen & (token_ids != PAD) & (token_ids != BOS)
    how = jax.random.uniform(how_key, token_ids.shape) if keep_some else jnp.zeros(token_ids.shape)  # 0: <mask>
    random_words = jax.random.randint(word_key, token_ids.shape, first_word, vocab_size)
    corrupted = jnp.where(chosen & (how < REPLACED_BY_MASK), mask_id, token_ids)
    random = chosen & (how >= REPLACED_BY_MASK) & (how < REPLACED_BY_MASK + REPLACED_BY_RANDOM)
    return jnp.where(random, random_words, corrupted), chosen


MASK_WORDS = {
    "padding and BOS are chosen too: only words are hidden and predicted":
        lambda key, token_ids, vocab_size, mask_id: _mask_words(key, token_ids, vocab_size, mask_id, words_only=False),
    "85 % of the words are chosen: a word is chosen where its draw is below 0.15":
        lambda key, token_ids, vocab_size, mask_id: _mask_words(key, token_ids, vocab_size, mask_id, below=False),
    "every chosen word becomes <mask>: 10 % of them become a random word, and 10 % stay as they are":
        lambda key, token_ids, vocab_size, mask_id: _mask_words(key, token_ids, vocab_size, mask_id, keep_some=False),
    "the random words are drawn from id 0: ids 0 to 3 are PAD, BOS, <unk> and <mask>, no words; draw from 4":
        lambda key, token_ids, vocab_size, mask_id: _mask_words(key, token_ids, vocab_size, mask_id, first_word=0),
}


def _colours_score(read, pairs, own_if=all, swapped_if=all, also_swapped=False, reverse=False):
    got = [(r["body_colour"], r["wing_colour"]) for r in read]
    own = [own_if((g[0] == a[0], g[1] == a[1])) or (also_swapped and g == a[::-1]) for g, a in zip(got, pairs)]
    swapped = [swapped_if((g[0] == a[1], g[1] == a[0])) for g, a in zip(got, pairs)]
    return (float(np.mean(swapped)), float(np.mean(own))) if reverse else (float(np.mean(own)), float(np.mean(swapped)))


SWAPPED_COLOURS_SCORE = {
    "a bird with one part right counts as right: both parts must have their own colours":
        lambda read, pairs: _colours_score(read, pairs, own_if=any),
    "a swapped bird counts as right: the body must have the first colour word, the wings the second":
        lambda read, pairs: _colours_score(read, pairs, also_swapped=True),
    "a bird counts as swapped when one part has the other's colour: both colours must have traded places":
        lambda read, pairs: _colours_score(read, pairs, swapped_if=any),
    "the two fractions are the wrong way round: first the birds with their own colours, then the swapped ones":
        lambda read, pairs: _colours_score(read, pairs, reverse=True),
}

# --- 06 Flowers and birds -----------------------------------------------------------


def _bird_crop(width, height, box, longer: bool = True, enlarge: float = 1.5, inside: bool = True):
    x, y, w, h = box
    side = int(round(min((max(w, h) if longer else min(w, h)) * enlarge, width, height)))
    left, top = x + w / 2 - side / 2, y + h / 2 - side / 2
    if inside:
        left, top = np.clip(left, 0, width - side), np.clip(top, 0, height - side)
    left, top = int(round(left)), int(round(top))
    return left, top, left + side, top + side


SQUARE_CROP = {
    "the box's shorter side where its longer side belongs: the square must hold the whole bird":
        lambda width, height, box: _bird_crop(width, height, box, longer=False),
    "the square is not shifted to stay inside the photo":
        lambda width, height, box: _bird_crop(width, height, box, inside=False),
    "the box is not enlarged by 1.5: the bird then fills the crop to its edges":
        lambda width, height, box: _bird_crop(width, height, box, enlarge=1.0),
}

MIRROR = {
    "upside down: axis 1 holds the rows; left to right is axis 2, the columns":
        lambda images: images[:, ::-1],
    "the colour channels are reversed (RGB became BGR), not the columns":
        lambda images: images[..., ::-1],
    "the order of the images in the batch is reversed, not each image":
        lambda images: images[::-1],
}

TRUNCATED_FRACTION = {
    "the BOS token is forgotten: a caption takes one token more than its words":
        lambda captions, max_length: np.mean([len(c.split()) > max_length for c in captions]),
    "a caption of exactly max_length tokens fits: only longer ones are cut":
        lambda captions, max_length: np.mean([len(c.split()) + 1 >= max_length for c in captions]),
}

# --- 07 How good, how fast -----------------------------------------------------------


def _frechet_parts(a, b):
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    eigenvalues = np.linalg.eigvals(cov_a @ cov_b)
    trace_root = np.sqrt(np.clip(eigenvalues.real, 0, None)).sum()
    return mu_a - mu_b, cov_a, cov_b, trace_root


def _frechet(a, b, square_means: bool = True, root: bool = True, twice: bool = True):
    mean_gap, cov_a, cov_b, trace_root = _frechet_parts(a, b)
    means = np.sum(mean_gap**2) if square_means else np.linalg.norm(mean_gap)
    cross = trace_root if root else np.trace(cov_a @ cov_b)
    return means + np.trace(cov_a) + np.trace(cov_b) - (2 if twice else 1) * cross


FRECHET_DISTANCE = {
    "the distance between the means is not squared: ||mu_a - mu_b||^2":
        lambda a, b: _frechet(a, b, square_means=False),
    "the square root of Sigma_a Sigma_b is missing in the cross term":
        lambda a, b: _frechet(a, b, root=False),
    "the cross term is subtracted once: it is 2 tr((Sigma_a Sigma_b)^1/2)":
        lambda a, b: _frechet(a, b, twice=False),
}


def _mean_kl(p, reverse: bool = False):
    marginal = p.mean(0, keepdims=True)
    if reverse:
        return np.mean(np.sum(marginal * (np.log(marginal) - np.log(p)), axis=1))
    return np.mean(np.sum(p * (np.log(p) - np.log(marginal)), axis=1))


INCEPTION_SCORE = {
    "the exp is missing: that is the mean KL divergence, the log of the score":
        lambda p: _mean_kl(p),
    "the KL divergence the wrong way round: KL(p(y|x) || p(y)), each image's prediction first":
        lambda p: np.exp(_mean_kl(p, reverse=True)),
}


def _mmd(x, y, drop_diagonals: bool = True, cross_weight: float = 2.0):
    k = lambda a, b: (a @ b.T / a.shape[1] + 1) ** 3  # noqa: E731
    within = []
    for z in (x, y):
        kzz, n = k(z, z), len(z)
        within.append((kzz.sum() - np.trace(kzz)) / (n * (n - 1)) if drop_diagonals else kzz.mean())
    return within[0] + within[1] - cross_weight * k(x, y).mean()


MMD_SQUARED = {
    "the diagonals are kept: k(x, x) of an image with itself biases the estimate upwards":
        lambda x, y: _mmd(x, y, drop_diagonals=False),
    "the cross term is subtracted once: it is twice the mean of k over pairs across the sets":
        lambda x, y: _mmd(x, y, cross_weight=1.0),
}

# --- 08 Small first, then sharp -----------------------------------------------------------


def _augment_wrong(images, level, eps, square_roots: bool = True, level_is_alpha_bar: bool = False):
    alpha_bar = (level if level_is_alpha_bar else cosine_alpha_bar(level))[:, None, None, None]
    if square_roots:
        return jnp.sqrt(alpha_bar) * images + jnp.sqrt(1 - alpha_bar) * eps
    return alpha_bar * images + (1 - alpha_bar) * eps


AUGMENT = {
    "the square roots are missing": lambda images, level, eps: _augment_wrong(images, level, eps, square_roots=False),
    "the level used as alpha_bar: the level is a time, alpha_bar = cosine_alpha_bar(level)":
        lambda images, level, eps: _augment_wrong(images, level, eps, level_is_alpha_bar=True),
}


def _threshold_wrong(x0_pred, divide: bool = True, floor: bool = True, per_image_s: bool = True):
    values = jnp.abs(x0_pred).reshape(len(x0_pred), -1) if per_image_s else jnp.abs(x0_pred).reshape(1, -1)
    s = jnp.percentile(values, 99.5, axis=1)
    s = (jnp.maximum(s, 1.0) if floor else s)[:, None, None, None]
    clipped = jnp.clip(x0_pred, -s, s)
    return clipped / s if divide else clipped


DYNAMIC_THRESHOLD = {
    "clipped to [-s, s] but not divided by s: the image leaves [-1, 1]":
        lambda x0_pred: _threshold_wrong(x0_pred, divide=False),
    "s is not floored at 1: an image already inside [-1, 1] gets stretched":
        lambda x0_pred: _threshold_wrong(x0_pred, floor=False),
    "one s for the whole batch: each image gets its own":
        lambda x0_pred: _threshold_wrong(x0_pred, per_image_s=False),
}


def _squared_errors(images, reference):
    return np.mean((np.asarray(images, np.float64) - reference) ** 2, axis=(1, 2, 3))


PSNR = {
    "the PSNR of the batch's mean squared error: take each image's PSNR, then their mean":
        lambda images, reference: float(10 * np.log10(255.0**2 / _squared_errors(images, reference).mean())),
    "255 is not squared: PSNR = 10 log10(255^2 / MSE)":
        lambda images, reference: float(np.mean(10 * np.log10(255.0 / _squared_errors(images, reference)))),
}

# --- 09 Latent diffusion -----------------------------------------------------------

SAMPLE_POSTERIOR = {
    "exp(log_variance) is the variance: the standard deviation is exp(log_variance / 2)":
        lambda mean, log_variance, key: mean + jnp.exp(log_variance) * jax.random.normal(key, mean.shape),
    "the log-variance used as the standard deviation":
        lambda mean, log_variance, key: mean + log_variance * jax.random.normal(key, mean.shape),
}

KL = {
    "the mean over positions where the sum belongs":
        lambda mean, log_variance: 0.5 * jnp.mean(mean**2 + jnp.exp(log_variance) - 1.0 - log_variance, axis=(1, 2, 3)),
    "the factor 1/2 is missing":
        lambda mean, log_variance: jnp.sum(mean**2 + jnp.exp(log_variance) - 1.0 - log_variance, axis=(1, 2, 3)),
    "the - 1 is missing: the KL divergence of N(0, I) from itself must be 0":
        lambda mean, log_variance: 0.5 * jnp.sum(mean**2 + jnp.exp(log_variance) - log_variance, axis=(1, 2, 3)),
}

LATENT_SCALE = {
    "the standard deviation itself: the scale divides by it, so that the latents have unit variance":
        lambda latents: np.std(latents),
    "one over the variance: the scale is one over the standard deviation":
        lambda latents: 1.0 / np.var(latents),
}

# --- 10 Transformers and flows -----------------------------------------------------------

INTERPOLATE = {
    "t and 1 - t are swapped: at t = 0 the path is at the data, at t = 1 at the noise":
        lambda x0, eps, t: per_image(t) * x0 + (1 - per_image(t)) * eps,
}

HEUN_STEP = {
    "Euler's step, without the correction: average the velocities at both ends":
        lambda velocity_at, x, velocity, t, s: x + (s - t) * velocity,
    "the trial's velocity alone: Heun averages it with the velocity at the start":
        lambda velocity_at, x, velocity, t, s: x + (s - t) * velocity_at(x + (s - t) * velocity, s),
    "the trial's velocity is asked at time t: the trial point lies at time s":
        lambda velocity_at, x, velocity, t, s: x + (s - t) * 0.5 * (velocity + velocity_at(x + (s - t) * velocity, t)),
}

LOGIT_NORMAL_TIMES = {
    "the sigmoid is missing: normal draws are not times in (0, 1)":
        lambda key, batch: jax.random.normal(key, (batch,)),
    "uniform times: logit-normal times crowd the middle, where the flow is hardest to learn":
        lambda key, batch: jax.random.uniform(key, (batch,)),
}

# --- 11 Scaling up -----------------------------------------------------------

MFU = {
    "the time multiplies where it divides: achieved FLOP/s is FLOPs per step over seconds per step":
        lambda flops, seconds, peak, devices: flops * seconds / (peak * devices),
    "the peak of one device: each device of the mesh adds its own peak":
        lambda flops, seconds, peak, devices: flops / seconds / peak,
    "a percentage: MFU is asked for as a fraction between 0 and 1":
        lambda flops, seconds, peak, devices: 100 * flops / seconds / (peak * devices),
}

BFLOAT16 = {
    "truncated, not rounded: keeping the top 16 bits rounds every value toward zero":
        lambda x: (np.asarray(x, np.float32).view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32),
}

ROWS_OF_DEVICE = {
    "every device holds the whole batch: data parallelism splits its rows":
        lambda batch_size, num_devices, device: (0, batch_size),
    "the stop is the last row: as in Python's slices, it is one past it":
        lambda batch_size, num_devices, device: (device * (batch_size // num_devices),
                                                 (device + 1) * (batch_size // num_devices) - 1),
}
