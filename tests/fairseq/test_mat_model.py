"""transformer_mb (MAT): equivalence with fairseq's transformer, drop-branch, incremental
decoding with beam search, proximal initialisation — all in-process on tiny models."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from fairseq import options
from fairseq.data import Dictionary
from fairseq.sequence_generator import SequenceGenerator
from fairseq.tasks.translation import TranslationTask

import knee_plugins.fairseq_plugin  # noqa: F401  (registers transformer_mb)
from knee_plugins.fairseq_plugin import mat_init
from knee_plugins.fairseq_plugin.models.transformer_mb import MultiBranchAttention

TINY = [
    "--encoder-layers",
    "2",
    "--decoder-layers",
    "2",
    "--encoder-embed-dim",
    "16",
    "--decoder-embed-dim",
    "16",
    "--encoder-ffn-embed-dim",
    "32",
    "--decoder-ffn-embed-dim",
    "32",
    "--encoder-attention-heads",
    "2",
    "--decoder-attention-heads",
    "2",
    "--share-all-embeddings",
    "--dropout",
    "0",
]
ONE_BRANCH = [
    "--encoder-branches",
    "1",
    "--decoder-branches",
    "1",
    "--encoder-pffn-branches",
    "1",
    "--decoder-pffn-branches",
    "1",
    "--branch-dropout",
    "0",
]


@pytest.fixture(scope="module")
def dictionary() -> Dictionary:
    d = Dictionary()
    for i in range(40):
        d.add_symbol(f"w{i}")
    return d


def build(dictionary: Dictionary, *args: str):
    parser = options.get_training_parser()
    parsed = options.parse_args_and_arch(
        parser, ["DATA", "--task", "translation", "-s", "de", "-t", "en", *TINY, *args]
    )
    return TranslationTask(parsed, dictionary, dictionary).build_model(parsed)


def batch(dictionary: Dictionary, seed: int = 0, bsz: int = 3, src_len: int = 7, tgt_len: int = 5):
    generator = torch.Generator().manual_seed(seed)
    src = torch.randint(dictionary.nspecial, len(dictionary), (bsz, src_len), generator=generator)
    src[0, :2] = dictionary.pad()  # left-padded source, as fairseq batches it
    lengths = (src != dictionary.pad()).sum(1)
    prev = torch.randint(dictionary.nspecial, len(dictionary), (bsz, tgt_len), generator=generator)
    prev[:, 0] = dictionary.eos()
    return src, lengths, prev


def logits(model, src, lengths, prev):
    return model(src, lengths, prev)[0]


def sides(value: int) -> dict[str, int]:
    return {"encoder": value, "decoder": value}


@pytest.mark.parametrize("join", ["--join-pffn", "--no-join-pffn"])
def test_one_branch_equals_transformer(dictionary, join):
    torch.manual_seed(0)
    plain = build(dictionary, "--arch", "transformer")
    multi = build(dictionary, "--arch", "transformer_mb", *ONE_BRANCH, join)
    multi.load_state_dict(mat_init.branch_state_dict(plain.state_dict(), sides(1), sides(1)))
    assert sum(p.numel() for p in plain.parameters()) == sum(p.numel() for p in multi.parameters())
    src, lengths, prev = batch(dictionary)
    for training in (True, False):
        plain.train(training)
        multi.train(training)
        expected, got = logits(plain, src, lengths, prev), logits(multi, src, lengths, prev)
        assert torch.equal(expected, got), f"train={training}: max diff {(expected - got).abs().max()}"
    plain.train()
    multi.train()
    logits(plain, src, lengths, prev).logsumexp(-1).sum().backward()
    logits(multi, src, lengths, prev).logsumexp(-1).sum().backward()
    plain_grads = mat_init.branch_state_dict({n: p.grad for n, p in plain.named_parameters()}, sides(1), sides(1))
    for name, parameter in multi.named_parameters():
        assert torch.equal(parameter.grad, plain_grads[name]), name


@pytest.mark.parametrize("join", ["--join-pffn", "--no-join-pffn"])
def test_several_branches_forward_backward(dictionary, join):
    torch.manual_seed(0)
    model = build(
        dictionary,
        "--arch",
        "transformer_mb",
        "--encoder-branches",
        "3",
        "--decoder-branches",
        "2",
        "--encoder-pffn-branches",
        "2",
        "--decoder-pffn-branches",
        "3",
        "--branch-dropout",
        "0.3",
        join,
    )
    layer = model.decoder.layers[0]
    assert len(model.encoder.layers[0].self_attn.branches) == 3
    assert len(layer.self_attn.branches) == 2 and len(layer.encoder_attn.branches) == 2
    assert len(layer.fc1.branches) == 3 and len(layer.fc2.branches) == 3
    src, lengths, prev = batch(dictionary, bsz=4, src_len=6, tgt_len=8)
    model.train()
    out = logits(model, src, lengths, prev)
    assert out.shape == (4, 8, len(dictionary))
    out.logsumexp(-1).mean().backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.shape == parameter.shape, name


def test_drop_branch_only_in_training(dictionary):
    torch.manual_seed(0)
    model = build(
        dictionary,
        "--arch",
        "transformer_mb",
        "--encoder-branches",
        "3",
        "--decoder-branches",
        "3",
        "--branch-dropout",
        "0.5",
    )
    src, lengths, prev = batch(dictionary)
    model.eval()
    assert torch.equal(logits(model, src, lengths, prev), logits(model, src, lengths, prev))
    model.train()
    assert not torch.equal(logits(model, src, lengths, prev), logits(model, src, lengths, prev))


def test_drop_branch_draws_one_mask_per_call_and_keeps_the_expectation():
    """Every training call must equal Σ m_i / (N (1 − ρ)) · branch_i for one mask m shared by the
    whole batch; masks drawn with P(keep) = 1 − ρ; the eval output is the plain average. A merge
    with the released code's extra 1/N, or an average over the kept branches only, fails here."""
    torch.manual_seed(0)
    n, rho, calls = 3, 0.4, 2000

    class Branch(torch.nn.Module):
        """A cheap stand-in with MultiheadAttention's call signature (the merge is under test)."""

        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(8, 8)
            self.embed_dim, self.num_heads, self.head_dim = 8, 2, 4

        def forward(self, query, key, value, **kwargs):
            return self.proj(query), None

    branches = [Branch() for _ in range(n)]
    merged = MultiBranchAttention(branches, rho)
    x = torch.randn(5, 4, 8)
    with torch.no_grad():
        outputs = torch.stack([b(x, x, x)[0] for b in branches])
        merged.eval()
        assert torch.allclose(merged(x, x, x)[0], outputs.mean(0), atol=1e-6)
        merged.train()
        masks = torch.tensor(list(itertools.product((0.0, 1.0), repeat=n)))
        candidates = torch.einsum("mn,n...->m...", masks, outputs) / (n * (1 - rho))
        kept = torch.zeros(n)
        total = torch.zeros_like(outputs[0])
        all_dropped = 0
        for _ in range(calls):
            out = merged(x, x, x)[0]
            matches = ((candidates - out).abs().flatten(1).amax(1) < 1e-6).nonzero().flatten()
            assert len(matches) == 1, "a training output is not one mask's rescaled sum"
            kept += masks[matches[0]]
            all_dropped += int(masks[matches[0]].sum() == 0)
            total += out
    sd = math.sqrt(rho * (1 - rho) / calls)
    assert ((kept / calls - (1 - rho)).abs() < 5 * sd).all(), kept / calls
    expected_all_dropped = rho**n * calls
    assert abs(all_dropped - expected_all_dropped) < 5 * math.sqrt(expected_all_dropped)
    # mean of the outputs vs the eval average: each weight's mean has sd ≈ sd / (N (1 − ρ))
    tolerance = 5 * sd / (1 - rho) * outputs.abs().sum(0) / n
    assert ((total / calls - outputs.mean(0)).abs() <= tolerance + 1e-6).all()


def test_incremental_decoding_equals_full_decoding(dictionary):
    torch.manual_seed(0)
    model = build(
        dictionary,
        "--arch",
        "transformer_mb",
        "--encoder-branches",
        "3",
        "--decoder-branches",
        "3",
        "--encoder-pffn-branches",
        "2",
        "--decoder-pffn-branches",
        "2",
        "--join-pffn",
        "--branch-dropout",
        "0.3",
    )
    model.eval()
    src, lengths, prev = batch(dictionary, tgt_len=6)
    with torch.no_grad():
        encoder_out = model.encoder(src, src_lengths=lengths)
        full = model.decoder(prev, encoder_out=encoder_out)[0]
        state: dict = {}
        steps = [
            model.decoder(prev[:, : t + 1], encoder_out=encoder_out, incremental_state=state)[0]
            for t in range(prev.size(1))
        ]
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)
    buffers = [key for key in state if key.endswith("attn_state")]
    branches = sum(len(layer.self_attn.branches) + len(layer.encoder_attn.branches) for layer in model.decoder.layers)
    assert len(buffers) == branches, "every branch keeps its own cache"


def test_beam_search_scores_match_teacher_forcing(dictionary):
    """Beam search reorders every branch's cache: each hypothesis' positional scores must equal
    a full (non-incremental) forward pass over it."""
    torch.manual_seed(1)
    model = build(
        dictionary,
        "--arch",
        "transformer_mb",
        "--encoder-branches",
        "2",
        "--decoder-branches",
        "3",
        "--branch-dropout",
        "0.3",
    )
    model.eval()
    src, lengths, _ = batch(dictionary, seed=3, bsz=2)
    generator = SequenceGenerator([model], dictionary, beam_size=4, max_len_b=6, min_len=3)
    with torch.no_grad():
        hypotheses = generator.forward({"net_input": {"src_tokens": src, "src_lengths": lengths}})
        for index, beam in enumerate(hypotheses):
            for hypothesis in beam:
                tokens = hypothesis["tokens"]
                prev = torch.cat([tokens.new_tensor([dictionary.eos()]), tokens[:-1]])[None]
                lprobs = model.get_normalized_probs(
                    model(src[index : index + 1], lengths[index : index + 1], prev), log_probs=True
                )[0]
                expected = lprobs.gather(-1, tokens[:, None]).squeeze(-1)
                assert torch.allclose(hypothesis["positional_scores"], expected, atol=1e-4)


@pytest.mark.parametrize("source_arch", ["transformer", "transformer_mb"])
def test_proximal_init_keeps_the_outputs(dictionary, source_arch):
    torch.manual_seed(0)
    phase1 = build(dictionary, "--arch", source_arch, *(ONE_BRANCH if source_arch == "transformer_mb" else []))
    phase2 = build(
        dictionary,
        "--arch",
        "transformer_mb",
        "--encoder-branches",
        "3",
        "--decoder-branches",
        "3",
        "--encoder-pffn-branches",
        "2",
        "--decoder-pffn-branches",
        "2",
        "--join-pffn",
        "--branch-dropout",
        "0",
    )
    phase2.load_state_dict(mat_init.branch_state_dict(phase1.state_dict(), sides(3), sides(2)))
    src, lengths, prev = batch(dictionary)
    for training in (False, True):
        phase1.train(training)
        phase2.train(training)
        assert torch.allclose(logits(phase1, src, lengths, prev), logits(phase2, src, lengths, prev), atol=1e-5)


def test_bad_branch_options_name_the_option(dictionary):
    with pytest.raises(SystemExit):
        build(dictionary, "--arch", "transformer_mb", "--encoder-branches", "0")
    with pytest.raises(SystemExit):
        build(dictionary, "--arch", "transformer_mb", "--branch-dropout", "1")
    model = build(
        dictionary,
        "--arch",
        "transformer_mb",
        "--encoder-branches",
        "2",
        "--decoder-branches",
        "2",
        "--branch-dropout",
        "0",
    )
    with pytest.raises(ValueError, match="several branches"):
        mat_init.branch_state_dict(model.state_dict(), sides(3), sides(1))
    with pytest.raises(ValueError, match="--encoder-branches"):
        mat_init.proximal_init(
            {"model": {}, "cfg": {"model": {"arch": "transformer_mb"}}}, encoder_branches=0, decoder_branches=2
        )


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--branches", "3", "--encoder-branches", "0"], "--encoder-branches must be >= 1, got 0"),
        (["--branches", "0"], "--branches must be >= 1, got 0"),
        (["--branches", "3", "--decoder-branches", "0"], "--decoder-branches must be >= 1, got 0"),
    ],
)
def test_mat_init_refuses_zero_branches_instead_of_falling_back_to_branches(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit):
        mat_init.parse_args([str(tmp_path / "a.pt"), str(tmp_path / "b.pt"), *argv, "--dry-run"])
    assert message in capsys.readouterr().err


def test_mat_init_takes_each_side_from_its_own_option_else_from_branches(tmp_path):
    args = mat_init.parse_args(["a.pt", "b.pt", "--branches", "3", "--encoder-branches", "2", "--dry-run"])
    assert (args.encoder_branches, args.decoder_branches) == (2, 3)


def _architecture_args(arch: str):
    from fairseq.models import ARCH_CONFIG_REGISTRY

    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, ["data", "--task", "translation", "--arch", arch])
    ARCH_CONFIG_REGISTRY[arch](args)
    return args


@pytest.mark.parametrize(
    "arch, embed, ffn, heads, branches, branch_dropout",
    [
        ("transformer_mb_mat_iwslt_de_en", 256, 2048, 4, 3, 0.3),
        ("transformer_mb_mat_wmt_en_de", 512, 12288, 16, 2, 0.2),
    ],
)
def test_the_mat_readme_models_have_their_own_names_and_settings(arch, embed, ffn, heads, branches, branch_dropout):
    """The released code's names (transformer_mb_iwslt_de_en, ..._wmt_en_de) are other models there:
    the plugin does not register them, so a command written for that code fails instead of training
    another model; the plugin's names build the MAT README's settings."""
    from fairseq.models import ARCH_MODEL_REGISTRY

    assert "transformer_mb_iwslt_de_en" not in ARCH_MODEL_REGISTRY
    assert "transformer_mb_wmt_en_de" not in ARCH_MODEL_REGISTRY
    args = _architecture_args(arch)
    assert (args.encoder_embed_dim, args.encoder_ffn_embed_dim, args.encoder_attention_heads) == (embed, ffn, heads)
    assert (args.decoder_embed_dim, args.decoder_ffn_embed_dim, args.decoder_attention_heads) == (embed, ffn, heads)
    assert args.encoder_branches == args.decoder_branches == branches and args.branch_dropout == branch_dropout
    assert args.encoder_pffn_branches == args.decoder_pffn_branches == 1 and args.join_pffn
    assert args.encoder_layers == args.decoder_layers == 6 and args.dropout == 0.3
