"""Notebook helpers: show the package's own source, and the ipywidgets explorers.

Sections, in the order the notebooks meet them:

- every notebook: ``show_source`` renders a function or class of ``ppo_lesson`` as highlighted
  code, so a notebook explains the tested code instead of copying it;
- 01: ``attention_weights``, ``attention_panels`` and ``attention_explorer``;
- 04: ``clip_explorer``, ``gae_explorer`` and ``beta_explorer`` (their maths in ``toys.py``);
- 02, 03, 05: ``live_plot`` (a training callback that redraws a curve in place), ``show_table``,
  ``source_location`` (``ppo_lesson/ppo.py:123`` of a function or of one of its lines),
  ``next_token_distribution`` and ``sampling_explorer``.

Each explorer returns a widget whose figure is redrawn when a control moves. Executed headless
(nbconvert, nbval) it draws its first state once and needs nothing else; its display data also
carries that first figure as a PNG, which static viewers show instead of the widget."""

from __future__ import annotations

import base64
import inspect
import io
import math
import textwrap
from pathlib import Path

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch
from IPython.display import Markdown, display

from . import CHECKOUT, toys
from .model import MultiHeadAttention, Seq2SeqTransformer, shift_right, top_k_filter
from .plots import objective, pretraining, transformer
from .ppo import clipped_surrogate_loss
from .task import BOS_ID, EOS, STOI, SYMBOLS, VOCAB, decode, encode, encode_numbers, gold_scores

# ---- every notebook: the package's own source ----------------------------------------------


def show_source(obj) -> Markdown:
    """The source of a ``ppo_lesson`` function, class or method as a highlighted code block, under a
    header that says where it lives (``ppo_lesson/ppo.py:97`` and its name).

    Returns an ``IPython.display.Markdown`` object: the last line of a cell displays it."""
    try:
        source = textwrap.dedent(inspect.getsource(obj))
    except (TypeError, OSError) as err:
        raise TypeError(f"obj: expected a function, class or method defined in a file, got {obj!r}") from err
    return Markdown(f"`{source_location(obj)}` `{obj.__qualname__}`\n\n```python\n{source.rstrip()}\n```")


class Explorer(widgets.VBox):
    """Controls above a figure that is redrawn whenever a control moves.

    A notebook viewed without a kernel (GitHub, nbviewer) cannot run a widget, so the explorer's
    display data also carries its first figure as a PNG: a live JupyterLab shows the widget, a
    static page shows the picture of its initial state."""

    def __init__(self, children, first_png: bytes):
        super().__init__(children)
        self._first_png = first_png

    def _repr_mimebundle_(self, **kwargs):
        data = super()._repr_mimebundle_(**kwargs)
        data["text/plain"] = "Explorer (a live kernel moves it; this picture is its initial state)"
        data["image/png"] = base64.b64encode(self._first_png).decode("ascii")
        return data


def _explorer(draw, controls: dict, columns: int = 4) -> Explorer:
    """Controls above an Output that shows ``draw(**values)`` (a Figure), redrawn on every change."""
    out = widgets.Output()

    def refresh(change=None):
        with out:
            out.clear_output(wait=True)
            fig = draw(**{name: control.value for name, control in controls.items()})
            display(fig)
            plt.close(fig)
        return fig

    for control in controls.values():
        control.observe(refresh, names="value")
    first = io.BytesIO()
    refresh().savefig(first, format="png", bbox_inches="tight")
    boxes = list(controls.values())
    rows = [widgets.HBox(boxes[i : i + columns]) for i in range(0, len(boxes), columns)]
    return Explorer([*rows, out], first.getvalue())


# ---- 01: attention maps ----------------------------------------------------------------------

ATTENTION_KINDS = ("encoder self-attention", "decoder self-attention", "cross-attention")


@torch.no_grad()
def attention_weights(model: Seq2SeqTransformer, src, tgt_in) -> dict[str, list[torch.Tensor]]:
    """Attention weights of one teacher-forced pass, per kind (``ATTENTION_KINDS``) and layer.

    src: (B, S), tgt_in: (B, T). Encoder self-attention maps are (B, H, S, S), decoder
    self-attention (B, H, T, T), cross-attention (B, H, T, S). Uses ``MultiHeadAttention.keep_weights``."""
    modules = {
        "encoder self-attention": [layer.self_attn for layer in model.encoder],
        "decoder self-attention": [layer.self_attn for layer in model.decoder],
        "cross-attention": [layer.cross_attn for layer in model.decoder],
    }
    attentions = [m for m in model.modules() if isinstance(m, MultiHeadAttention)]
    for m in attentions:
        m.keep_weights = True
    try:
        model(src, tgt_in)
        return {kind: [m.last_weights for m in mods] for kind, mods in modules.items()}
    finally:
        for m in attentions:
            m.keep_weights, m.last_weights = False, None


def attention_panels(model: Seq2SeqTransformer, number: int, answer: str, layer: int = 0, kinds=ATTENTION_KINDS):
    """Panels for ``transformer.plot_attention_maps``: the weights (heads, queries, keys) of one
    (source number, answer) pair at ``layer``, teacher-forced, with token labels."""
    if not 0 <= layer < min(len(model.encoder), len(model.decoder)):
        raise ValueError(f"layer: expected an int in [0, {min(len(model.encoder), len(model.decoder))}), got {layer}")
    src = encode_numbers([number]).to(model.device)
    tgt_in = shift_right(torch.tensor([encode(answer)], device=model.device))
    weights = attention_weights(model.eval(), src, tgt_in)
    src_labels = [VOCAB[i] for i in src[0].tolist()]
    tgt_labels = [VOCAB[i] for i in tgt_in[0].tolist()]
    labels = {
        "encoder self-attention": (src_labels, src_labels),
        "decoder self-attention": (tgt_labels, tgt_labels),
        "cross-attention": (tgt_labels, src_labels),
    }
    return [(f"{kind} L{layer}", weights[kind][layer][0], *labels[kind]) for kind in kinds]


def attention_explorer(model: Seq2SeqTransformer, number: int = 27, answer: str = "9+9+9"):
    """Type a source number and an answer; pick the attention kind and layer; see every head."""
    n_layers = min(len(model.encoder), len(model.decoder))
    controls = {
        "number": widgets.BoundedIntText(value=number, min=0, max=10**6, description="N"),
        "answer": widgets.Text(value=answer, description="answer", continuous_update=False),
        "kind": widgets.Dropdown(options=ATTENTION_KINDS, value="cross-attention", description="attention"),
        "layer": widgets.IntSlider(value=0, min=0, max=n_layers - 1, description="layer"),
    }

    def draw(number, answer, kind, layer):
        try:
            panels = attention_panels(model, number, answer, layer, kinds=(kind,))
        except ValueError as err:
            fig, ax = plt.subplots(figsize=(6, 1))
            ax.axis("off")
            ax.text(0, 0.5, f"cannot draw: {err}", color="tab:red", va="center")
            return fig
        return transformer.plot_attention_maps(panels, title=f"N = {number}, answer {answer!r}")

    return _explorer(draw, controls, columns=2)


# ---- 04: the clipped objective -------------------------------------------------------------


def clip_gradient(ratio: float, advantage: float, clip_eps: float) -> float:
    """d L^CLIP / d r at one token, by autograd through ``ppo.clipped_surrogate_loss``
    (the loss is -L^CLIP, so the sign is flipped back)."""
    log_ratio = torch.tensor([[math.log(ratio)]], requires_grad=True)
    loss = clipped_surrogate_loss(log_ratio, torch.zeros(1, 1), torch.tensor([[advantage]]), torch.ones(1, 1), clip_eps)
    loss.backward()
    return -log_ratio.grad.item() / ratio + 0.0  # d/dr = d/dlog r * dlog r/dr; + 0.0 turns -0.0 into 0.0


def clip_explorer(clip_eps: float = 0.2, advantage: float = 1.0, ratio: float = 1.3):
    """Sliders for clip_eps, the advantage A and a ratio r: L^CLIP against r, with the gradient at r."""
    controls = {
        "clip_eps": widgets.FloatSlider(value=clip_eps, min=0.05, max=0.5, step=0.01, description="clip_eps"),
        "advantage": widgets.FloatSlider(value=advantage, min=-2.0, max=2.0, step=0.1, description="advantage A"),
        "ratio": widgets.FloatSlider(value=ratio, min=0.05, max=1.95, step=0.05, description="ratio r"),
    }

    def draw(clip_eps, advantage, ratio):
        fig = objective.plot_clip_objective(clip_eps, advantages=(advantage,))
        ax = fig.axes[0]
        value = min(ratio * advantage, min(max(ratio, 1 - clip_eps), 1 + clip_eps) * advantage)
        grad = clip_gradient(ratio, advantage, clip_eps)
        ax.plot([ratio], [value], "D", color="black", ms=8, label=f"r = {ratio:.3g}: dL/dr = {grad:.3g}")
        ax.legend(fontsize=8, loc="lower left" if advantage < 0 else "upper left")
        return fig

    return _explorer(draw, controls, columns=3)


# ---- 02, 03, 05: live training curves, tables, source lines, the sampling explorer -------------


def live_plot(plot_fn, every: int = 1, **kwargs):
    """A training callback (``callback=`` of the trainers) that redraws ``plot_fn(history, **kwargs)``
    in place in the cell's output: on the first call, then on every ``every``-th call."""
    state = {"calls": 0, "handle": None}

    def callback(history):
        state["calls"] += 1
        if state["calls"] > 1 and state["calls"] % every:
            return
        fig = plot_fn(history, **kwargs)
        if state["handle"] is None:
            state["handle"] = display(fig, display_id=True)
        else:
            state["handle"].update(fig)
        plt.close(fig)  # shown by the display handle only, not again when the cell ends

    return callback


def show_table(rows: list[dict], floatfmt: str = ".3g") -> None:
    """Display rows (dicts with the same keys) as a Markdown table; floats are written with ``floatfmt``."""
    if not rows:
        raise ValueError("rows: expected at least one row, got an empty list")
    columns = list(rows[0])

    def cell(value):
        return format(value, floatfmt) if isinstance(value, float) else str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(cell(row[c]) for c in columns) + " |" for row in rows]
    display(Markdown("\n".join(lines)))


def source_location(obj, contains: str | None = None) -> str:
    """Where a function or class of the package is defined, as ``ppo_lesson/ppo.py:123`` (its
    ``def`` or ``class`` line); with ``contains``, the first line of its source holding that text
    (a ValueError if none does)."""
    obj = inspect.unwrap(obj)  # a decorated function (``torch.no_grad``) lives where it is written
    lines, start = inspect.getsourcelines(obj)
    if contains is None:
        found = (i for i, line in enumerate(lines) if line.lstrip().startswith(("def ", "class ", "async def ")))
    else:
        found = (i for i, line in enumerate(lines) if contains in line)
    offset = next(found, None)
    if offset is None:
        raise ValueError(f"contains: {contains!r} does not occur in the source of {obj.__qualname__}")
    path = Path(inspect.getsourcefile(obj)).resolve().relative_to(CHECKOUT)
    return f"{path.as_posix()}:{start + offset}"


@torch.no_grad()
def next_token_distribution(
    policy: Seq2SeqTransformer, number: int, prefix: str = "", temperature: float = 1.0, top_k: int = 0
) -> dict[str, float]:
    """{token: probability} of the policy's next token for the source ``number`` after the answer
    ``prefix``, with temperature and top-k applied as ``Seq2SeqTransformer.generate`` applies them."""
    if not temperature > 0:
        raise ValueError(f"temperature: expected a positive float, got {temperature}")
    src = encode_numbers([number]).to(policy.device)
    tgt_in = torch.tensor([[BOS_ID, *encode(prefix, add_eos=False)]], device=policy.device)
    logits = policy.eval()(src, tgt_in)[0, -1] / temperature
    probs = top_k_filter(logits, top_k).softmax(-1)
    return {("EOS" if token == EOS else token): probs[STOI[token]].item() for token in (EOS, *SYMBOLS)}


def sampling_explorer(policy: Seq2SeqTransformer, cfg, n_samples: int = 10):
    """Sliders for the source N, the temperature and top-k, and a prefix box: the policy's
    next-token distribution after the prefix, and ``n_samples`` answers sampled with those settings
    (a fixed seed, so only the settings change them) with their gold scores."""
    controls = {
        "number": widgets.IntSlider(value=27, min=cfg.task.min_number, max=cfg.task.max_number, description="N"),
        "temperature": widgets.FloatSlider(value=1.0, min=0.1, max=3.0, step=0.1, description="temperature"),
        "top_k": widgets.IntSlider(value=0, min=0, max=len(SYMBOLS) + 1, description="top_k (0: off)"),
        "prefix": widgets.Text(value="", description="prefix", placeholder="e.g. 9+9+", continuous_update=False),
    }

    def draw(number, temperature, top_k, prefix):
        try:
            probs = next_token_distribution(policy, number, prefix, temperature, top_k)
        except ValueError as err:
            fig, ax = plt.subplots(figsize=(6, 1))
            ax.axis("off")
            ax.text(0, 0.5, f"cannot draw: {err}", color="tab:red", va="center")
            return fig
        src = encode_numbers([number] * n_samples).to(policy.device)
        gen = torch.Generator(device=policy.device).manual_seed(0)
        out = policy.generate(src, cfg.task.max_target_len, temperature=temperature, top_k=top_k, generator=gen)
        gold = gold_scores(src, out.tokens, out.mask, cfg.task).tolist()
        samples = ["sampled answers (gold):"] + [f"{decode(t):<16} {g:+.3g}" for t, g in zip(out.tokens.cpu(), gold)]
        title = f"N = {number}, prefix {prefix!r}: next token at temperature {temperature:g}, top_k {top_k}"
        return pretraining.plot_next_token_distributions({"p": list(probs.values())}, list(probs), title, samples)

    return _explorer(draw, controls, columns=2)


# ---- 04: GAE on one episode, and the KL-regularized optimum (maths and figures in toys.py) ----------


def gae_explorer(tokens, rewards, values, gamma: float = 1.0, lam: float = 0.95, critic_error: float = 0.0):
    """Sliders for gamma, lambda and a critic error (added to V with a fixed sign pattern): delta_t and
    A_t of one episode. rewards, values: (T,) one entry per token of ``tokens``."""
    error_pattern = torch.tensor([(-1.0) ** t for t in range(len(tokens))])  # +1, -1, +1, ...: a fixed critic error
    controls = {
        "gamma": widgets.FloatSlider(value=gamma, min=0.5, max=1.0, step=0.01, description="gamma"),
        "lam": widgets.FloatSlider(value=lam, min=0.0, max=1.0, step=0.05, description="lambda"),
        "critic_error": widgets.FloatSlider(value=critic_error, min=0.0, max=1.0, step=0.05, description="V error"),
    }

    def draw(gamma, lam, critic_error):
        noisy_values = torch.as_tensor(values, dtype=torch.float32) + critic_error * error_pattern
        return toys.plot_gae_terms(tokens, rewards, noisy_values, gamma, lam)

    return _explorer(draw, controls, columns=3)


def beta_explorer(labels, ref_probs, rewards, beta: float = 0.5):
    """A log-scale slider for beta: pi_ref and the optimum pi* ~ pi_ref exp(r / beta) over a few answers,
    with E_pi*[r] and KL(pi* || pi_ref) against beta."""
    slider = widgets.FloatLogSlider(value=beta, base=10, min=-2, max=2, step=0.1, description="beta")
    return _explorer(lambda beta: toys.plot_tilt(labels, ref_probs, rewards, beta), {"beta": slider}, columns=1)
