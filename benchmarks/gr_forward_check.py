"""Our HSTU and SASRec networks against generative-recommenders' own ``HSTU`` and ``SASRec``
modules, same weights, same inputs: the largest difference of the outputs at the real
positions.

This process (the project's venv) builds small random networks, ours: a
:class:`~recsys_pipeline.models.hstu.HSTUNet`, and a
:class:`~recsys_pipeline.models.sasrec.SASRecNet` in the reference's SASRec setting
(``out_projection``, ``norm_affine=False``, ``final_norm=False``, ``positions="from_start"``:
``conf/generative_recommenders``). It writes their weights and a right-padded batch with
timestamps to a temporary file and runs itself with ``--child`` in the reference venv
(``--gr-python``, with fbgemm-gpu-cpu), which imports the research code **unmodified** from
``--gr-src`` (commit 2e81fab), builds the module as the trainer does
(``LocalEmbeddingModule``, ``LearnablePositionalEmbeddingInputFeaturesPreprocessor``,
``L2NormEmbeddingPostprocessor``, ``DotProductSimilarity``), loads the same weights, and feeds
the batch the way ``movielens_seq_features_from_row`` does (history right padded and followed
by ``gr_output_length + 1`` zero slots, the target's timestamp scattered after the last item).
Dropout off on both sides. Ours is compared after the L2 normalisation that the reference's
output module applies (our HSTU network has it; our SASRec applies it in ``encode``).

Example::

    python benchmarks/gr_forward_check.py --gr-src ../refrun/src/generative-recommenders-2e81fab \\
        --gr-python ../refrun/venv/bin/python
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

OUTPUT_SLOTS = 11  # the reference trainer's gr_output_length + 1
MAXLEN, DIM, N_ITEMS = 20, 16, 50
#: our HSTU parameter name -> the reference module's
NAMES = {
    "item_emb.weight": "_embedding_module._item_emb.weight",
    "pos_emb.weight": "_input_features_preproc._pos_emb.weight",
}
LAYER_NAMES = {
    "uvqk": "_uvqk",
    "out.weight": "_o.weight",
    "out.bias": "_o.bias",
    "bias.pos_w": "_rel_attn_bias._pos_w",
    "bias.ts_w": "_rel_attn_bias._ts_w",
}


def reference_hstu_state(ours: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our HSTU state dict under the reference's parameter names."""
    out = {}
    for name, value in ours.items():
        if name in NAMES:
            out[NAMES[name]] = value
            continue
        _, index, rest = name.split(".", 2)  # layers.<i>.<rest>
        out[f"_hstu._attention_layers.{index}.{LAYER_NAMES[rest]}"] = value
    return out


def reference_sasrec_state(ours: dict[str, torch.Tensor], maxlen: int) -> dict[str, torch.Tensor]:
    """Our SASRec state dict under the reference's names: Q/K/V stacked into
    ``nn.MultiheadAttention``'s ``in_proj``, the feed-forward Linear layers as kernel-1
    ``Conv1d`` weights ``[D, D, 1]``, our position table (``maxlen`` rows) as the first rows of
    theirs (``maxlen + gr_output_length + 1`` rows; the others are never read at a real
    position and stay random)."""
    pos = torch.randn(maxlen + OUTPUT_SLOTS, ours["pos_emb.weight"].shape[1])
    pos[:maxlen] = ours["pos_emb.weight"]
    out = {
        "_embedding_module._item_emb.weight": ours["item_emb.weight"],
        "_input_features_preproc._pos_emb.weight": pos,
    }
    n_blocks = 1 + max(int(k.split(".")[1]) for k in ours if k.startswith("blocks."))
    for i in range(n_blocks):
        b, a, f = f"blocks.{i}.", f"attention_layers.{i}.", f"forward_layers.{i}._conv1d."
        for kind in ("weight", "bias"):
            out[f"{a}in_proj_{kind}"] = torch.cat([ours[f"{b}attn.{x}.{kind}"] for x in "qkv"])
            out[f"{a}out_proj.{kind}"] = ours[f"{b}attn.out.{kind}"]
        for ours_name, conv in (("inner", 0), ("outer", 3)):
            out[f"{f}{conv}.weight"] = ours[f"{b}ffn.{ours_name}.weight"].unsqueeze(-1)
            out[f"{f}{conv}.bias"] = ours[f"{b}ffn.{ours_name}.bias"]
    return out


def child(path: Path, src: Path) -> None:
    """In the reference venv: the reference's outputs for the batch and weights in ``path``."""
    import fbgemm_gpu  # noqa: F401  (registers torch.ops.fbgemm before the reference imports)

    sys.path.insert(0, str(src))
    from generative_recommenders.research.modeling.sequential.embedding_modules import (
        LocalEmbeddingModule,
    )
    from generative_recommenders.research.modeling.sequential.hstu import HSTU
    from generative_recommenders.research.modeling.sequential.input_features_preprocessors import (
        LearnablePositionalEmbeddingInputFeaturesPreprocessor,
    )
    from generative_recommenders.research.modeling.sequential.output_postprocessors import (
        L2NormEmbeddingPostprocessor,
    )
    from generative_recommenders.research.modeling.sequential.sasrec import SASRec
    from generative_recommenders.research.rails.similarities.dot_product_similarity_fn import (
        DotProductSimilarity,
    )

    record = torch.load(path, weights_only=True)
    c = {k: int(v) for k, v in record["config"].items()}
    common: dict[str, Any] = dict(
        max_sequence_len=c["maxlen"], max_output_len=OUTPUT_SLOTS, embedding_dim=c["dim"],
        num_blocks=c["blocks"], num_heads=c["heads"],
        embedding_module=LocalEmbeddingModule(num_items=c["n_items"], item_embedding_dim=c["dim"]),
        similarity_module=DotProductSimilarity(),
        input_features_preproc_module=LearnablePositionalEmbeddingInputFeaturesPreprocessor(
            max_sequence_len=c["maxlen"] + OUTPUT_SLOTS, embedding_dim=c["dim"], dropout_rate=0.2
        ),
        output_postproc_module=L2NormEmbeddingPostprocessor(embedding_dim=c["dim"], eps=1e-6),
        verbose=False,
    )  # fmt: skip
    if c["sasrec"]:
        model: Any = SASRec(ffn_hidden_dim=c["dim"], ffn_activation_fn="relu",
                            ffn_dropout_rate=0.2, **common)  # fmt: skip
        state = reference_sasrec_state(record["weights"], c["maxlen"])
    else:
        model = HSTU(linear_dim=c["dv"], attention_dim=c["dqk"], normalization="rel_bias",
                     linear_config="uvqk", linear_activation="silu", linear_dropout_rate=0.2,
                     attn_dropout_rate=0.0, **common)  # fmt: skip
        state = reference_hstu_state(record["weights"])
    missing = model.load_state_dict(state, strict=False)
    assert not missing.unexpected_keys, missing
    assert not [k for k in missing.missing_keys if not k.endswith("_attn_mask")], missing
    model.eval()
    ids, lengths, ts, target_ts = (record[k] for k in ("ids", "lengths", "ts", "target_ts"))
    batch = ids.shape[0]
    past_ids = torch.cat([ids, torch.zeros(batch, OUTPUT_SLOTS, dtype=ids.dtype)], dim=1)
    past_ts = torch.cat([ts, torch.zeros(batch, OUTPUT_SLOTS, dtype=ts.dtype)], dim=1)
    past_ts.scatter_(1, lengths.view(-1, 1), target_ts.view(-1, 1))
    with torch.no_grad():
        out = model(
            past_lengths=lengths, past_ids=past_ids,
            past_embeddings=model.get_item_embeddings(past_ids),
            past_payloads={"timestamps": past_ts},
        )  # fmt: skip
    torch.save({"out": out[:, : ids.shape[1]].contiguous()}, path.with_suffix(".ref.pt"))


def _random_batch() -> tuple[torch.Tensor, ...]:
    """Right-padded item ids (1-based, 0 = padding) ``[4, MAXLEN]``, lengths, timestamps and
    the targets' timestamps."""
    generator = torch.Generator().manual_seed(1)
    lengths = torch.tensor([MAXLEN, 7, 1, 13])
    ids = torch.zeros(4, MAXLEN, dtype=torch.long)
    ts = torch.zeros(4, MAXLEN, dtype=torch.long)
    target_ts = torch.zeros(4, dtype=torch.long)
    for row, n in enumerate(lengths.tolist()):
        ids[row, :n] = torch.randint(1, N_ITEMS + 1, (n,), generator=generator)
        stamps = torch.sort(torch.randint(0, 10**7, (n + 1,), generator=generator)).values
        ts[row, :n], target_ts[row] = stamps[:n], stamps[n]
    return ids, lengths, ts, target_ts


def _reference_output(args: argparse.Namespace, net: torch.nn.Module, config: dict) -> Any:
    ids, lengths, ts, target_ts = _random_batch()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "batch.pt"
        torch.save({"weights": net.state_dict(), "ids": ids, "lengths": lengths, "ts": ts,
                    "target_ts": target_ts, "config": config}, path)  # fmt: skip
        subprocess.run([args.gr_python, __file__, "--child", str(path), "--gr-src",
                        str(Path(args.gr_src).resolve())], check=True)  # fmt: skip
        return torch.load(path.with_suffix(".ref.pt"), weights_only=True)["out"]


def _perturbed(net: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():  # large random weights: a wrong formula shows
        for w in net.parameters():
            w.add_(torch.randn_like(w) * 0.3)
    return net.eval()


def _worst(ours: torch.Tensor, reference: torch.Tensor, lengths: torch.Tensor, left: bool) -> float:
    """Largest difference at the real positions (ours left or right padded)."""
    width = ours.shape[1]
    worst = 0.0
    for row, n in enumerate(lengths.tolist()):
        mine = ours[row, width - n :] if left else ours[row, :n]
        worst = max(worst, (mine - reference[row, :n]).abs().max().item())
    return worst


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gr-src", default=os.environ.get("HSTU_GR_SRC"))
    p.add_argument("--gr-python", default=os.environ.get("HSTU_GR_PYTHON"))
    p.add_argument("--model", choices=["hstu", "sasrec", "both"], default="both")
    p.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args.child, Path(args.gr_src))
        return 0
    if not (args.gr_src and args.gr_python):
        print("need --gr-src and --gr-python (or HSTU_GR_SRC / HSTU_GR_PYTHON)")
        return 1
    from recsys_pipeline.models.hstu import HSTUNet, HSTUParams
    from recsys_pipeline.models.sasrec import SASRecNet, SASRecParams
    from recsys_pipeline.training.losses import l2_normalize
    from recsys_pipeline.training.sequences import PAD

    ids, lengths, ts, target_ts = _random_batch()
    worst = 0.0
    base = {"maxlen": MAXLEN, "dim": DIM, "blocks": 2, "n_items": N_ITEMS}
    for heads, dqk, dv in ((1, 16, 16), (2, 8, 12)) if args.model != "sasrec" else ():
        params = HSTUParams(maxlen=MAXLEN, hidden_units=DIM, num_blocks=2, num_heads=heads,
                            dqk=dqk, dv=dv, output_slots=OUTPUT_SLOTS)  # fmt: skip
        torch.manual_seed(0)
        net = _perturbed(HSTUNet(N_ITEMS, params))
        config = base | {"heads": heads, "dqk": dqk, "dv": dv, "sasrec": 0}
        reference = _reference_output(args, net, config)
        items = torch.where(ids > 0, ids - 1, torch.full_like(ids, PAD))
        query = torch.cat([ts[:, 1:], torch.zeros(4, 1, dtype=ts.dtype)], dim=1)
        query[torch.arange(4), lengths - 1] = target_ts  # the next item's time; last: target's
        with torch.no_grad():
            diff = _worst(net(items, ts, query), reference, lengths, left=False)
        worst = max(worst, diff)
        print(f"HSTU heads {heads}, dqk {dqk}, dv {dv}: max |ours - reference| at real "
              f"positions {diff:.2e}")  # fmt: skip
    for heads in (1, 2) if args.model != "hstu" else ():
        params = SASRecParams(maxlen=MAXLEN, hidden_units=DIM, num_blocks=2, num_heads=heads,
                              out_projection=True, norm_affine=False, final_norm=False,
                              positions="from_start", init="gr", l2_norm=True)  # fmt: skip
        torch.manual_seed(0)
        net = _perturbed(SASRecNet(N_ITEMS, params))
        reference = _reference_output(args, net, base | {"heads": heads, "sasrec": 1})
        items = torch.full_like(ids, PAD)  # ours: left padded, 0-based
        for row, n in enumerate(lengths.tolist()):
            items[row, MAXLEN - n :] = ids[row, :n] - 1
        with torch.no_grad():
            diff = _worst(l2_normalize(net(items)), reference, lengths, left=True)
        worst = max(worst, diff)
        print(f"SASRec heads {heads}: max |ours - reference| at real positions {diff:.2e}")
    print("OK" if worst < 1e-5 else "DIFFERENT")
    return 0 if worst < 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
