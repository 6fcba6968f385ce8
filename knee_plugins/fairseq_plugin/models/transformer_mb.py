"""``--arch transformer_mb``: the multi-branch attentive Transformer (MAT; Fan et al. 2020).

Every encoder self-attention, decoder self-attention and encoder-decoder attention holds N
independent :class:`~fairseq.modules.MultiheadAttention` branches, merged by the paper's average

    MultiBranch(x) = 1/N · Σ_i  m_i / (1 − ρ) · Attn_i(x),   m_i ~ Bernoulli(1 − ρ)  (training)
    MultiBranch(x) = 1/N · Σ_i  Attn_i(x)                                             (inference)

where ``ρ`` is ``--branch-dropout`` and the masks ``m_i`` are drawn once per branch per layer call
(shared by the whole batch) — "drop-branch". The expectation of the training output is the
inference output. When every branch is dropped (probability ρ^N) the sub-layer adds nothing and
only its residual path remains (then post-norm, as usual). The position-wise FFN can have branches
too (``--encoder-pffn-branches``/``--decoder-pffn-branches``, merged the same way with
``--pffn-branch-dropout``); ``--join-pffn`` makes each FFN branch a whole fc1 → activation → fc2
block, otherwise fc1 and fc2 are each merged on their own, as in the authors' code.

The layers are fairseq 0.12's own ``TransformerEncoderLayerBase``/``TransformerDecoderLayerBase``
with their attention (and fc1/fc2) builders overridden, so everything else — post/pre-norm,
dropouts, incremental decoding, beam search — is fairseq's. Each branch is a separate
``MultiheadAttention`` with its own incremental-state id, so every branch keeps its own cache.
Parameter names: ``...self_attn.branches.<i>.k_proj.weight``, ``...fc1.branches.<i>.weight``
(see :mod:`knee_plugins.fairseq_plugin.mat_init` for proximal initialisation). The released code
merged with an extra factor 1/N (``mean(dropout(fill(1/N)) · outputs)``); see docs/mat.md.
"""

from __future__ import annotations

import argparse
from typing import Dict, List, Optional, Sequence, Tuple, cast

import torch
import torch.nn as nn
from fairseq.distributed import fsdp_wrap
from fairseq.models import register_model, register_model_architecture
from fairseq.models.transformer import TransformerDecoderBase, TransformerEncoderBase
from fairseq.models.transformer.transformer_legacy import TransformerModel, base_architecture
from fairseq.modules import MultiheadAttention, transformer_layer
from fairseq.modules.checkpoint_activations import checkpoint_wrapper
from fairseq.modules.quant_noise import quant_noise
from torch import Tensor

BRANCH_OPTIONS = (
    "encoder_branches",
    "decoder_branches",
    "encoder_pffn_branches",
    "decoder_pffn_branches",
    "branch_dropout",
    "pffn_branch_dropout",
    "join_pffn",
)


def branch_weights(
    num_branches: int, dropout: float, training: bool, device: torch.device, dtype: torch.dtype
) -> Tensor:
    """The weight of each branch in the merge: ``m_i / (N (1 − p))`` in training (drop-branch,
    one Bernoulli draw per branch), ``1 / N`` otherwise."""
    if training and dropout > 0:
        keep = torch.rand(num_branches, device=device) >= dropout
        return keep.to(dtype) / (num_branches * (1.0 - dropout))
    return torch.full((num_branches,), 1.0 / num_branches, device=device, dtype=dtype)


def merge_branches(outputs: Sequence[Tensor], weights: Tensor) -> Tensor:
    """``Σ_i weights[i] · outputs[i]`` (exact for one branch of weight 1: ``x · 1.0 == x``)."""
    merged = outputs[0] * weights[0]
    for output, weight in zip(outputs[1:], weights[1:], strict=False):
        merged = merged + output * weight
    return merged


class MultiBranchAttention(nn.Module):
    """N ``MultiheadAttention`` branches behind ``MultiheadAttention``'s own call signature,
    merged with drop-branch. Attention weights, when asked for, are merged like the outputs."""

    def __init__(self, branches: Sequence[nn.Module], branch_dropout: float) -> None:
        super().__init__()
        if not branches:
            raise ValueError("MultiBranchAttention needs at least one branch")
        self.branches = nn.ModuleList(branches)
        self.branch_dropout = branch_dropout
        first = self.branches[0]
        self.embed_dim = first.embed_dim
        self.num_heads = first.num_heads
        self.head_dim = first.head_dim

    def forward(
        self,
        query: Tensor,
        key: Optional[Tensor],
        value: Optional[Tensor],
        key_padding_mask: Optional[Tensor] = None,
        incremental_state: Optional[Dict[str, Dict[str, Optional[Tensor]]]] = None,
        need_weights: bool = True,
        static_kv: bool = False,
        attn_mask: Optional[Tensor] = None,
        before_softmax: bool = False,
        need_head_weights: bool = False,
    ) -> Tuple[Tensor, Optional[Tensor]]:
        if before_softmax:
            raise NotImplementedError("transformer_mb: before_softmax is not supported by multi-branch attention")
        results = [
            branch(
                query,
                key,
                value,
                key_padding_mask=key_padding_mask,
                incremental_state=incremental_state,
                need_weights=need_weights,
                static_kv=static_kv,
                attn_mask=attn_mask,
                need_head_weights=need_head_weights,
            )
            for branch in self.branches
        ]
        weights = branch_weights(len(results), self.branch_dropout, self.training, query.device, query.dtype)
        output = merge_branches([r[0] for r in results], weights)
        attn = None
        if all(r[1] is not None for r in results):
            attn = merge_branches([r[1] for r in results], weights.to(results[0][1].dtype))
        return output, attn

    def _get_input_buffer(
        self, incremental_state: Optional[Dict[str, Dict[str, Optional[Tensor]]]]
    ) -> Dict[str, Optional[Tensor]]:
        """The first branch's cache (fairseq's layers only test it for ``prev_key``)."""
        return cast(MultiheadAttention, self.branches[0])._get_input_buffer(incremental_state)

    def _set_input_buffer(
        self,
        incremental_state: Optional[Dict[str, Dict[str, Optional[Tensor]]]],
        buffer: Dict[str, Optional[Tensor]],
    ):
        """Give every branch the same cache (fairseq's ``prev_self_attn_state`` path)."""
        for branch in self.branches:
            incremental_state = cast(MultiheadAttention, branch)._set_input_buffer(incremental_state, dict(buffer))
        return incremental_state


class BranchedFFNInput(nn.Module):
    """fc1 of the FFN branches. Joined (``--join-pffn``): the branches' hidden vectors side by
    side, so that the activation and its dropout act on each branch separately and
    :class:`BranchedFFNOutput` merges whole fc1 → fc2 branches. Not joined: the merged fc1."""

    def __init__(self, branches: Sequence[nn.Module], branch_dropout: float, join: bool) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)
        self.branch_dropout = branch_dropout
        self.join = join

    def forward(self, x: Tensor) -> Tensor:
        outputs = [branch(x) for branch in self.branches]
        if self.join:
            return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-1)
        weights = branch_weights(len(outputs), self.branch_dropout, self.training, x.device, x.dtype)
        return merge_branches(outputs, weights)


class BranchedFFNOutput(nn.Module):
    """fc2 of the FFN branches, merged with drop-branch. Joined: branch i reads its own slice of
    the joined hidden vector."""

    def __init__(self, branches: Sequence[nn.Module], branch_dropout: float, join: bool) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)
        self.branch_dropout = branch_dropout
        self.join = join

    def forward(self, x: Tensor) -> Tensor:
        if self.join:
            chunks = x.chunk(len(self.branches), dim=-1)
            outputs = [branch(chunk) for branch, chunk in zip(self.branches, chunks, strict=False)]
        else:
            outputs = [branch(x) for branch in self.branches]
        weights = branch_weights(len(outputs), self.branch_dropout, self.training, x.device, x.dtype)
        return merge_branches(outputs, weights)


class _BranchSettings:
    """The branch options one layer reads from the model config."""

    def __init__(self, cfg, side: str) -> None:
        self.attention_branches = int(getattr(cfg, f"{side}_branches"))
        self.ffn_branches = int(getattr(cfg, f"{side}_pffn_branches"))
        self.branch_dropout = float(cfg.branch_dropout)
        self.ffn_branch_dropout = float(cfg.pffn_branch_dropout)
        self.join_ffn = bool(cfg.join_pffn)


def _ffn_branches(
    settings: _BranchSettings, input_dim: int, output_dim: int, q_noise: float, qn_block_size: int
) -> List[nn.Module]:
    return [
        quant_noise(nn.Linear(input_dim, output_dim), p=q_noise, block_size=qn_block_size)
        for _ in range(settings.ffn_branches)
    ]


class _BranchedFFN:
    """The FFN builders both layers share: ``fc1``/``fc2`` with the layer's FFN branches."""

    _branches: _BranchSettings

    def build_fc1(self, input_dim, output_dim, q_noise, qn_block_size):
        s = self._branches
        return BranchedFFNInput(
            _ffn_branches(s, input_dim, output_dim, q_noise, qn_block_size), s.ffn_branch_dropout, s.join_ffn
        )

    def build_fc2(self, input_dim, output_dim, q_noise, qn_block_size):
        s = self._branches
        return BranchedFFNOutput(
            _ffn_branches(s, input_dim, output_dim, q_noise, qn_block_size), s.ffn_branch_dropout, s.join_ffn
        )


class TransformerMBEncoderLayer(_BranchedFFN, transformer_layer.TransformerEncoderLayerBase):
    """fairseq's encoder layer with multi-branch self-attention and FFN."""

    def __init__(self, cfg, return_fc: bool = False) -> None:
        self._branches = _BranchSettings(cfg, "encoder")
        super().__init__(cfg, return_fc=return_fc)

    def build_self_attention(self, embed_dim, cfg):
        build = super().build_self_attention
        return MultiBranchAttention(
            [build(embed_dim, cfg) for _ in range(self._branches.attention_branches)], self._branches.branch_dropout
        )


class TransformerMBDecoderLayer(_BranchedFFN, transformer_layer.TransformerDecoderLayerBase):
    """fairseq's decoder layer with multi-branch self-attention, encoder attention and FFN."""

    def __init__(
        self, cfg, no_encoder_attn: bool = False, add_bias_kv: bool = False, add_zero_attn: bool = False
    ) -> None:
        self._branches = _BranchSettings(cfg, "decoder")
        if self._branches.ffn_branches > 1 and self._branches.join_ffn and getattr(cfg, "scale_fc", False):
            raise ValueError("transformer_mb: --scale-fc does not combine with joined FFN branches (--join-pffn)")
        super().__init__(cfg, no_encoder_attn=no_encoder_attn, add_bias_kv=add_bias_kv, add_zero_attn=add_zero_attn)

    def build_self_attention(self, embed_dim, cfg, add_bias_kv=False, add_zero_attn=False):
        build = super().build_self_attention
        return MultiBranchAttention(
            [
                build(embed_dim, cfg, add_bias_kv=add_bias_kv, add_zero_attn=add_zero_attn)
                for _ in range(self._branches.attention_branches)
            ],
            self._branches.branch_dropout,
        )

    def build_encoder_attention(self, embed_dim, cfg):
        build = super().build_encoder_attention
        return MultiBranchAttention(
            [build(embed_dim, cfg) for _ in range(self._branches.attention_branches)], self._branches.branch_dropout
        )


def _wrap_layer(layer: nn.Module, cfg) -> nn.Module:
    """Activation checkpointing and FSDP wrapping, as fairseq's encoder/decoder do for theirs."""
    checkpoint = cfg.checkpoint_activations
    if checkpoint:
        layer = checkpoint_wrapper(layer, offload_to_cpu=cfg.offload_activations)
    return fsdp_wrap(layer, min_num_params=cfg.min_params_to_wrap if not checkpoint else 0)


class TransformerMBEncoder(TransformerEncoderBase):
    def build_encoder_layer(self, cfg):
        return _wrap_layer(TransformerMBEncoderLayer(cfg, return_fc=self.return_fc), cfg)


class TransformerMBDecoder(TransformerDecoderBase):
    def build_decoder_layer(self, cfg, no_encoder_attn=False):
        return _wrap_layer(TransformerMBDecoderLayer(cfg, no_encoder_attn), cfg)


def _branch_count(value: str) -> int:
    try:
        count = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of branches >= 1, got {value!r}") from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"expected a number of branches >= 1, got {count}")
    return count


def _probability(value: str) -> float:
    try:
        p = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a probability in [0, 1), got {value!r}") from None
    if not 0.0 <= p < 1.0:
        raise argparse.ArgumentTypeError(f"expected a probability in [0, 1), got {p:g}")
    return p


@register_model("transformer_mb")
class TransformerMBModel(TransformerModel):
    """The multi-branch attentive Transformer (MAT): fairseq's ``transformer`` whose attention
    sub-layers (and optionally FFNs) are averages of independent branches with drop-branch."""

    @classmethod
    def hub_models(cls):
        return {}

    @classmethod
    def add_args(cls, parser):
        super().add_args(parser)
        parser.add_argument(
            "--encoder-branches",
            type=_branch_count,
            metavar="N",
            help="attention branches in every encoder layer (N_a in the MAT paper)",
        )
        parser.add_argument(
            "--decoder-branches",
            type=_branch_count,
            metavar="N",
            help="attention branches (self and encoder attention) in every decoder layer",
        )
        parser.add_argument(
            "--encoder-pffn-branches",
            "--encoder-ffn-branches",
            dest="encoder_pffn_branches",
            type=_branch_count,
            metavar="N",
            help="FFN branches in every encoder layer (default: --encoder-branches)",
        )
        parser.add_argument(
            "--decoder-pffn-branches",
            "--decoder-ffn-branches",
            dest="decoder_pffn_branches",
            type=_branch_count,
            metavar="N",
            help="FFN branches in every decoder layer (default: --decoder-branches)",
        )
        parser.add_argument(
            "--branch-dropout",
            type=_probability,
            metavar="P",
            help="drop-branch: probability of dropping a whole attention branch in training; "
            "kept branches are scaled by 1/(1-P) (rho in the MAT paper)",
        )
        parser.add_argument(
            "--pffn-branch-dropout",
            "--ffn-branch-dropout",
            dest="pffn_branch_dropout",
            type=_probability,
            metavar="P",
            help="drop-branch probability of the FFN branches (default: --branch-dropout; "
            "with one FFN branch this drops the whole FFN sub-layer)",
        )
        parser.add_argument(
            "--join-pffn",
            "--join-ffn",
            dest="join_pffn",
            action="store_true",
            help="each FFN branch is a whole fc1-activation-fc2 block (the MAT README's "
            "setting); otherwise fc1 and fc2 are merged separately",
        )
        parser.add_argument(
            "--no-join-pffn",
            "--no-join-ffn",
            dest="join_pffn",
            action="store_false",
            help="merge fc1 and fc2 branches separately (the released code's default)",
        )

    @classmethod
    def build_model(cls, args, task):
        base_architecture_mb(args)
        validate_branch_args(args)
        return super().build_model(args, task)

    @classmethod
    def build_encoder(cls, cfg, src_dict, embed_tokens):
        return TransformerMBEncoder(cfg, src_dict, embed_tokens)

    @classmethod
    def build_decoder(cls, cfg, tgt_dict, embed_tokens):
        return TransformerMBDecoder(cfg, tgt_dict, embed_tokens, no_encoder_attn=cfg.no_cross_attention)


def validate_branch_args(args) -> None:
    """Raise ``ValueError`` naming the option when a branch option is out of range."""
    for name in ("encoder_branches", "decoder_branches", "encoder_pffn_branches", "decoder_pffn_branches"):
        value = getattr(args, name)
        if isinstance(value, bool) or int(value) != value or value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be a whole number >= 1, got {value!r}")
    for name in ("branch_dropout", "pffn_branch_dropout"):
        value = getattr(args, name)
        if not 0.0 <= float(value) < 1.0:
            raise ValueError(f"--{name.replace('_', '-')} must lie in [0, 1), got {value!r}")


def _set_default(args, name: str, value) -> None:
    if getattr(args, name, None) is None:
        setattr(args, name, value)


@register_model_architecture("transformer_mb", "transformer_mb")
def base_architecture_mb(args):
    """fairseq's ``transformer`` (base) with the released code's branch defaults: 4 attention
    branches, as many FFN branches merged separately, drop-branch 0.1."""
    _set_default(args, "encoder_branches", 4)
    _set_default(args, "decoder_branches", 4)
    _set_default(args, "encoder_pffn_branches", args.encoder_branches)
    _set_default(args, "decoder_pffn_branches", args.decoder_branches)
    _set_default(args, "branch_dropout", 0.1)
    _set_default(args, "pffn_branch_dropout", args.branch_dropout)
    _set_default(args, "join_pffn", False)
    base_architecture(args)


def _paper_setting(
    args, *, embed_dim: int, ffn_dim: int, heads: int, branches: int, branch_dropout: float, dropout: float
) -> None:
    for side in ("encoder", "decoder"):
        _set_default(args, f"{side}_embed_dim", embed_dim)
        _set_default(args, f"{side}_ffn_embed_dim", ffn_dim)
        _set_default(args, f"{side}_attention_heads", heads)
        _set_default(args, f"{side}_layers", 6)
        _set_default(args, f"{side}_branches", branches)
        _set_default(args, f"{side}_pffn_branches", 1)
    _set_default(args, "branch_dropout", branch_dropout)
    _set_default(args, "join_pffn", True)
    _set_default(args, "dropout", dropout)
    base_architecture_mb(args)


@register_model_architecture("transformer_mb", "transformer_mb_mat_iwslt_de_en")
def transformer_mb_mat_iwslt_de_en(args):
    """The MAT paper's IWSLT'14 De-En model (its README, 35.70 BLEU): 6+6 layers, d 256, FFN 2048,
    4 heads, 3 attention branches, drop-branch 0.3, one joined FFN branch, dropout 0.3."""
    _paper_setting(args, embed_dim=256, ffn_dim=2048, heads=4, branches=3, branch_dropout=0.3, dropout=0.3)


@register_model_architecture("transformer_mb", "transformer_mb_mat_wmt_en_de")
def transformer_mb_mat_wmt_en_de(args):
    """The MAT paper's WMT'14 model (its README, 29.90 BLEU En-De with proximal init): 6+6
    layers, d 512, FFN 12288, 16 heads, 2 attention branches, drop-branch 0.2, one joined FFN
    branch, dropout 0.3."""
    _paper_setting(args, embed_dim=512, ffn_dim=12288, heads=16, branches=2, branch_dropout=0.2, dropout=0.3)


@register_model_architecture("transformer_mb", "transformer_mb_vaswani_wmt_en_de_big")
def transformer_mb_vaswani_wmt_en_de_big(args):
    """fairseq's ``transformer_vaswani_wmt_en_de_big`` dimensions with the branch defaults of
    ``transformer_mb``."""
    for side in ("encoder", "decoder"):
        _set_default(args, f"{side}_embed_dim", 1024)
        _set_default(args, f"{side}_ffn_embed_dim", 4096)
        _set_default(args, f"{side}_attention_heads", 16)
    _set_default(args, "dropout", 0.3)
    base_architecture_mb(args)
