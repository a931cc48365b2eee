"""Figures of notebook 01 (the Transformer): embeddings, positional encodings, masks, attention maps, the KV cache."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import torch

from .style import style_axes


def _token_axes(ax, queries, keys, fontsize=8):
    """Label the columns of a (queries, keys) image with the key tokens and its rows with the query tokens."""
    ax.set_xticks(range(len(keys)), list(keys), fontsize=fontsize)
    ax.set_yticks(range(len(queries)), list(queries), fontsize=fontsize)


def plot_embeddings(weight, labels, title: str = "Token embeddings"):
    """An embedding table (vocabulary x d_model) as a heat map, and the cosine similarity
    between every pair of token vectors."""
    weight = torch.as_tensor(weight, dtype=torch.float32)
    unit = weight / weight.norm(dim=1, keepdim=True).clamp(min=1e-8)
    fig, (ax_w, ax_c) = plt.subplots(1, 2, figsize=(13, 4), constrained_layout=True, width_ratios=(2, 1))
    limit = float(weight.abs().max())
    image = ax_w.imshow(weight, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
    ax_w.set_yticks(range(len(labels)), list(labels))
    ax_w.set_xlabel("embedding dimension")
    ax_w.set_ylabel("token")
    ax_w.set_title(f"{title}: one learned vector per token")
    fig.colorbar(image, ax=ax_w, label="value")
    image = ax_c.imshow(unit @ unit.T, cmap="RdBu", vmin=-1, vmax=1)
    _token_axes(ax_c, labels, labels)
    ax_c.tick_params(axis="x", rotation=90)
    ax_c.set_xlabel("token")
    ax_c.set_ylabel("token")
    ax_c.set_title("Cosine similarity between tokens")
    fig.colorbar(image, ax=ax_c, label="cosine similarity")
    return fig


def plot_positional_encoding(table, dims=(0, 1, 6, 7, 20, 21)):
    """The sinusoidal position table (positions x dimensions) as a heat map, a few of its
    dimensions as curves over positions, and the dot product between every pair of positions."""
    table = torch.as_tensor(table, dtype=torch.float32)
    fig, (ax_map, ax_dims, ax_sim) = plt.subplots(1, 3, figsize=(15, 4), constrained_layout=True)
    image = ax_map.imshow(table.T, cmap="RdBu", vmin=-1, vmax=1, aspect="auto", origin="lower")
    ax_map.set_xlabel("position (token index)")
    ax_map.set_ylabel("embedding dimension")
    ax_map.set_title("Sinusoidal positional encodings")
    fig.colorbar(image, ax=ax_map, label="value")
    for d in dims:
        kind = "sin" if d % 2 == 0 else "cos"
        ax_dims.plot(
            table[:, d],
            label=f"dim {d} ({kind}, wavelength {2 * math.pi * 10000 ** ((d - d % 2) / table.size(1)):.3g})",
        )
    ax_dims.set_xlabel("position (token index)")
    ax_dims.set_ylabel("value")
    ax_dims.set_title("Low dimensions turn fast, high ones slowly")
    ax_dims.legend(fontsize=7, loc="lower left")
    style_axes(ax_dims)
    image = ax_sim.imshow(table @ table.T, cmap="viridis", origin="lower")
    ax_sim.set_xlabel("position j")
    ax_sim.set_ylabel("position i")
    ax_sim.set_title("Dot product p_i . p_j depends on i - j")
    fig.colorbar(image, ax=ax_sim, label="dot product")
    return fig


def plot_masks(panels):
    """Attention masks as images, one panel per (title, mask, query_labels, key_labels); mask is a
    (queries, keys) bool tensor, True (white) where a query may look at a key."""
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.8), squeeze=False, constrained_layout=True)
    for ax, (title, mask, queries, keys) in zip(axes.flat, panels):
        ax.imshow(torch.as_tensor(mask).float(), cmap="gray", vmin=0, vmax=1)
        _token_axes(ax, queries, keys)
        ax.set_xlabel("key (looked at)")
        ax.set_ylabel("query (looking)")
        ax.set_title(title, fontsize=10)
    fig.suptitle("Attention masks: white = may attend, black = blocked (score set to -inf before the softmax)")
    return fig


def plot_attention_maps(panels, title: str = "Attention weights"):
    """Heat maps of attention weights: one row per (title, weights, query_labels, key_labels) with
    weights of shape (heads, queries, keys), one column per head. Each row sums to 1."""
    n_heads = max(torch.as_tensor(w).size(0) for _, w, _, _ in panels)
    fig, axes = plt.subplots(
        len(panels), n_heads, figsize=(2.9 * n_heads + 1, 2.7 * len(panels)), squeeze=False, constrained_layout=True
    )
    image = None
    for row, (name, weights, queries, keys) in enumerate(panels):
        weights = torch.as_tensor(weights, dtype=torch.float32)
        for head in range(n_heads):
            ax = axes[row, head]
            if head >= weights.size(0):
                ax.axis("off")
                continue
            image = ax.imshow(weights[head], cmap="viridis", vmin=0, vmax=1)
            _token_axes(ax, queries, keys, fontsize=7)
            ax.set_title(f"{name}, head {head}", fontsize=9)
            if head == 0:
                ax.set_ylabel("query")
            if row == len(panels) - 1:
                ax.set_xlabel("key")
    fig.colorbar(image, ax=axes, shrink=0.8, label="attention weight (rows sum to 1)")
    fig.suptitle(title)
    return fig


def plot_kv_cache_speed(rows: list[dict]):
    """Generation time with and without the KV cache against the answer length, from the rows of
    ``bench.bench_generation`` (length, batch, seconds_cache, seconds_no_cache)."""
    lengths = [r["length"] for r in rows]
    fig, (ax_s, ax_t) = plt.subplots(1, 2, figsize=(11, 3.8), constrained_layout=True)
    for key, label, color in (
        ("seconds_no_cache", "without cache", "tab:red"),
        ("seconds_cache", "with KV cache", "tab:blue"),
    ):
        seconds = [r[key] for r in rows]
        ax_s.plot(lengths, seconds, "o-", color=color, label=label)
        ax_t.plot(lengths, [1000 * s / n for s, n in zip(seconds, lengths)], "o-", color=color, label=label)
    ax_s.set_ylabel(f"seconds to generate a batch of {rows[0]['batch']}")
    speedup = rows[-1]["seconds_no_cache"] / rows[-1]["seconds_cache"]
    ax_s.set_title(f"Total time (speed-up at {lengths[-1]} tokens: {speedup:.1f}x)")
    ax_t.set_ylabel("milliseconds per generated token (whole batch)")
    ax_t.set_title("Average time per token: flat with the cache, growing without")
    for ax in (ax_s, ax_t):
        ax.set_xlabel("answer length (tokens)")
        ax.set_ylim(bottom=0)
    style_axes(ax_s, ax_t, legend="normal")
    return fig
