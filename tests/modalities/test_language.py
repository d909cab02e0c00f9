"""Language modality components: time reparameterization, tokenizers, corpora and packing,
the low-rank noisy input (same law, same expected loss), chunked cross-entropy, samplers,
FMLM's target, MDLM, metrics against slow obvious implementations, the Markov source."""

import json
import math
from collections import Counter

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F

from modaflow.modalities.language import data as D
from modaflow.modalities.language.flm import FLMConfig, FLMModule, chunked_cross_entropy, generate_flm, noisy_onehot, pick_tokens
from modaflow.modalities.language.fmlm import FMLMConfig, FMLMModule, student_from_flm
from modaflow.modalities.language.markov import MarkovSource
from modaflow.modalities.language.mdlm import MDLMModule, generate_mdlm, mask_tokens
from modaflow.modalities.language.metrics import first_eos_mask, gen_ppl, ngram_js, sample_entropy, self_bleu
from modaflow.modalities.language.models import DiT, DiTConfig, noise_factor
from modaflow.modalities.language.reparam import TimeReparam, argmax_probability
from modaflow.modalities.language.tokenizer import BOS, EOS, TokenizerError, load_tokenizer, save_tokenizer, train_tokenizer
from modaflow.core.config import ConfigError
from modaflow.core.training import FlowMatchingConfig

TEXT = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n\n" * 20


def _dit(K: int = 40, d: int = 16, **kw) -> DiT:
    return DiT(DiTConfig(vocab_size=K, block_len=12, dim=d, depth=1, heads=2, **kw))


# --- time reparameterization ------------------------------------------------------------

def test_argmax_probability_matches_the_k2_closed_form_and_monte_carlo() -> None:
    g = np.array([0.0, 0.2, 0.5, 0.8, 0.95])
    assert np.allclose(argmax_probability(g, 2), scipy.stats.norm.cdf(g / (1 - g) / math.sqrt(2)), atol=1e-10)
    rng = np.random.default_rng(0)
    K, n = 27, 200_000
    for gamma in (0.3, 0.6):
        eps = rng.standard_normal((n, K))
        eps[:, 0] = (1 - gamma) * eps[:, 0] + gamma
        eps[:, 1:] *= 1 - gamma
        mc = (eps.argmax(1) == 0).mean()
        assert abs(argmax_probability(np.array([gamma]), K)[0] - mc) < 4 * math.sqrt(mc * (1 - mc) / n)


@pytest.mark.parametrize("K", [27, 512, 50257])
def test_reparam_inverse_and_range(K: int) -> None:
    r = TimeReparam(K)
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    g = r.gamma_of_t(t)
    assert torch.all(g.diff() > 0)
    assert torch.allclose(r.t_of_gamma(g), t, atol=1e-4)
    assert r.gamma_of_t(torch.tensor([0.0, 1.0], dtype=torch.float64)).tolist() == [0.0, 1.0]
    if K == 50257:  # REFERENCE §3: decoding happens for gamma in about [0.63, 0.87]
        assert 0.6 < float(r.gamma_of_t(torch.tensor(0.01))) and float(r.gamma_of_t(torch.tensor(0.99))) < 0.9


def test_embedded_table_matches_ml_decoding_from_the_projection() -> None:
    """x_gamma W (K = 512, d = 64) keeps d/K of the one-hot's SNR: the maximum-likelihood
    decoding accuracy of the token from the projection is q at a_eff = sqrt(d/K) a, far below
    the one-hot table's q."""
    torch.manual_seed(0)
    K, d, n = 512, 64, 3000
    W = torch.randn(K, d, dtype=torch.float64) / K**0.5
    Li = torch.linalg.inv(torch.linalg.cholesky(W.T @ W))  # whitens the noise eps W
    Ww = W @ Li.T
    for gamma in (0.8, 0.9):
        a = gamma / (1 - gamma)
        k = torch.randint(K, (n,))
        hw = (a * W[k] + torch.randn(n, K, dtype=torch.float64) @ W) @ Li.T
        acc = float(((hw @ Ww.T * a - 0.5 * a * a * (Ww**2).sum(1)).argmax(1) == k).double().mean())
        q_eff = float(argmax_probability(np.array([gamma]), K, snr_scale=d / K)[0])
        q_onehot = float(argmax_probability(np.array([gamma]), K)[0])
        assert abs(acc - q_eff) < 0.06, (gamma, acc, q_eff)
        assert q_onehot - acc > 0.4


def test_dit_time_table_scale() -> None:
    assert _dit(K=512, d=64, time_table="embedded").reparam.snr_scale == pytest.approx(64 / 512)
    assert _dit(K=512, d=64).reparam.snr_scale == 1.0  # the default: the paper's one-hot table
    assert _dit(K=12, d=16, time_table="embedded").reparam.snr_scale == 1.0  # K <= d: the projection keeps everything
    r = _dit(K=512, d=64, time_table="embedded").reparam
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    g = r.gamma_of_t(t)
    assert torch.all(g.diff() > 0) and torch.allclose(r.t_of_gamma(g), t, atol=1e-4)
    assert r.gamma_of_t(torch.tensor([0.0, 1.0], dtype=torch.float64)).tolist() == [0.0, 1.0]
    assert torch.all(g > TimeReparam(512).gamma_of_t(t))  # a weaker signal: each t needs a larger gamma
    with pytest.raises(ValueError, match="snr_scale"):
        TimeReparam(8, snr_scale=0.0)
    # the recipe passes the table to FLM and FMLM networks; the student keeps its teacher's
    from modaflow.modalities.language.recipe import _SHAPE, LanguageConfig, build_network

    assert "time_table" in _SHAPE  # an fmlm run copies it from its teacher
    for method in ("flm", "fmlm"):
        net = build_network(LanguageConfig(vocab=512, dim=64, depth=1, heads=2, block_len=8, method=method, teacher="x",
                                           time_table="embedded"))
        dit = net if method == "flm" else net.net.dit
        assert dit.reparam.snr_scale == pytest.approx(64 / 512)
    assert student_from_flm(_dit(K=512, d=64, time_table="embedded")).net.dit.reparam.snr_scale == pytest.approx(64 / 512)


# --- tokenizers --------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_tokenizer_round_trip_save_and_reload(kind: str, tmp_path) -> None:
    tok = train_tokenizer([TEXT], kind, 300, 32768)
    ids = tok.encode("Whether 'tis nobler\n").ids
    assert tok.decode(ids) == "Whether 'tis nobler\n"
    assert tok.token_to_id("<bos>") == BOS and tok.token_to_id("<eos>") == EOS
    save_tokenizer(tok, tmp_path)
    back = load_tokenizer(tmp_path, expected_vocab=tok.get_vocab_size())
    assert back.encode("to suffer").ids == tok.encode("to suffer").ids
    if kind == "bpe":
        assert 259 < tok.get_vocab_size() <= 300
    else:
        assert tok.get_vocab_size() == len(set(TEXT)) + 3


def test_tokenizer_errors(tmp_path) -> None:
    with pytest.raises(TokenizerError, match="larger than the configured limit max_vocab = 400"):
        train_tokenizer([TEXT], "bpe", 512, 400)
    with pytest.raises(TokenizerError, match="larger than the configured limit max_vocab = 10"):
        train_tokenizer([TEXT], "char", 0, 10)
    with pytest.raises(TokenizerError, match="at least 259"):
        train_tokenizer([TEXT], "bpe", 100, 1000)
    save_tokenizer(train_tokenizer([TEXT], "char", 0, 100), tmp_path)
    with pytest.raises(TokenizerError, match="checkpoint and tokenizer do not match"):
        load_tokenizer(tmp_path, expected_vocab=99)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="tokenizer.json: not a tokenizers JSON"):
        load_tokenizer(tmp_path)


# --- corpora and packing ------------------------------------------------------------------

def test_user_corpora_text_folder_and_jsonl(tmp_path) -> None:
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i in range(10):
        (folder / f"{i:02d}.txt").write_text(f"document {i}\n\nsecond paragraph {i}")
    train = D.load_corpus(str(folder), "train")
    test = D.load_corpus(str(folder), "test")
    assert train[:2] == ["document 0", "second paragraph 0"] and test == ["document 9", "second paragraph 9"]
    jl = tmp_path / "c.jsonl"
    jl.write_text("".join(json.dumps({"body": f"rec {i}"}) + "\n" for i in range(20)))
    assert D.load_corpus(str(jl), "test", text_field="body") == ["rec 18", "rec 19"]
    single = tmp_path / "one.txt"
    single.write_text("a" * 90 + "b" * 10)
    assert D.load_corpus(str(single), "test", paragraphs=False) == ["b" * 10]


def test_corpus_errors_name_the_file(tmp_path) -> None:
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(D.CorpusError, match=r"latin1.txt: byte 3 \(0xe9\) is not valid UTF-8"):
        D.load_corpus(str(bad), "train")
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n ")
    with pytest.raises(D.CorpusError, match="empty.txt: the corpus is empty"):
        D.load_corpus(str(empty), "train")
    jl = tmp_path / "bad.jsonl"
    jl.write_text('{"text": "ok"}\n{"txt": "no"}\n')
    with pytest.raises(D.CorpusError, match="bad.jsonl:2: expected an object with a string field 'text'"):
        D.load_corpus(str(jl), "train")
    with pytest.raises(D.CorpusError, match="no such file or folder"):
        D.load_corpus(str(tmp_path / "missing"), "train")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(D.CorpusError, match="holds no .txt or .jsonl"):
        D.load_corpus(str(tmp_path / "nothing"), "train")


def test_shakespeare_is_split_by_work() -> None:
    works = D.shakespeare_works()
    assert len(works) == 42 and set(D.TEST_WORKS) <= set(works)
    test = D.load_corpus("shakespeare", "test", paragraphs=False)
    assert len(test) == 4 and test[0].startswith("HAMLET")
    train = D.load_corpus("shakespeare", "train", paragraphs=False)
    assert len(train) == 38 and not set(train) & set(test)


def test_pack_matches_a_slow_implementation() -> None:
    tok = train_tokenizer([TEXT], "char", 0, 100)
    docs = ["to be", "or not", "to be that"]
    blocks = D.pack(docs, tok, 5)
    stream = []
    for d in docs:
        stream += [BOS] + [tok.token_to_id(c) for c in d] + [EOS]
    assert blocks.tolist() == [stream[i:i + 5] for i in range(0, len(stream) - 4, 5)][: len(stream) // 5]
    with pytest.raises(D.CorpusError, match="fewer than one block of block_len = 64"):
        D.pack(["ab"], tok, 64)


# --- low-rank noisy input -------------------------------------------------------------------

@pytest.mark.parametrize("K,d", [(64, 8), (8, 16)])
def test_lowrank_noise_has_the_law_of_eps_w(K: int, d: int, gen) -> None:
    W = torch.randn(K, d, generator=gen, dtype=torch.float64)
    Fm = noise_factor(W).double()
    assert torch.allclose(Fm.T @ Fm, W.T @ W, rtol=1e-4, atol=1e-4 * float(W.abs().max()) ** 2)
    n = 20_000
    dense = torch.randn(n, K, generator=gen, dtype=torch.float64) @ W
    fast = torch.randn(n, Fm.shape[0], generator=gen, dtype=torch.float64) @ Fm
    cov = W.T @ W
    tol = 5 * cov.diagonal().max() / math.sqrt(n)
    assert (fast.mean(0).abs() < 5 * cov.diagonal().sqrt() / math.sqrt(n)).all()
    assert (torch.cov(fast.T) - cov).abs().max() < 2 * tol
    for j in range(3):  # two-sample tests on random projections
        u = torch.randn(d, generator=gen, dtype=torch.float64)
        assert scipy.stats.ks_2samp((dense @ u).numpy(), (fast @ u).numpy()).pvalue > 0.001


def test_lowrank_input_equals_dense_when_the_factor_is_w() -> None:
    model = _dit(K=8, d=16)  # K <= d: F = W, so n plays the role of eps exactly
    tokens, gamma = torch.randint(0, 8, (3, 5)), torch.rand(3)
    n = torch.randn(3, 5, 8)
    assert torch.allclose(model.embed_noisy(tokens, gamma, n), model.embed_input(noisy_onehot(tokens, gamma, n)), atol=1e-6)


def test_lowrank_and_dense_give_the_same_expected_loss() -> None:
    model = _dit(K=64, d=16)
    tokens = torch.randint(0, 64, (8, 12))
    losses = {}
    with torch.no_grad():
        for fast in (True, False):
            module = FLMModule(model, FLMConfig(fast_input=fast, ce_chunk=0, seed=3 if fast else 4))
            losses[fast] = torch.stack([module.compute_loss(tokens, k) for k in range(300)])
    a, b = losses[True], losses[False]
    se = math.sqrt(a.var() / len(a) + b.var() / len(b))
    assert abs(float(a.mean() - b.mean())) < 4 * se


def test_chunked_cross_entropy_equals_the_dense_loss_and_gradient() -> None:
    head = torch.nn.Linear(6, 11)
    h = torch.randn(3, 7, 6, requires_grad=True)
    y = torch.randint(0, 11, (3, 7))
    dense = F.cross_entropy(head(h).reshape(-1, 11), y.reshape(-1))
    g_dense = torch.autograd.grad(dense, (h, head.weight))
    chunked = chunked_cross_entropy(h, head, y, chunk=4)
    g_chunk = torch.autograd.grad(chunked, (h, head.weight))
    assert torch.allclose(dense, chunked, atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g_dense, g_chunk))


# --- samplers ------------------------------------------------------------------------------

def test_flm_sampler_uses_steps_network_calls() -> None:
    model = _dit().eval()
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    x = generate_flm(model, 3, 12, 5, seed=0)
    assert x.shape == (3, 12) and x.dtype == torch.long and len(calls) == 5
    assert torch.equal(x, generate_flm(model, 3, 12, 5, seed=0))
    with pytest.raises(ValueError, match="longer than the model's block_len = 12"):
        generate_flm(model, 1, 13, 2, seed=0)


class _ExactIIDDenoiser(torch.nn.Module):
    """The exact denoiser of i.i.d. tokens with law ``pi`` on FLM's path: ``x = (1-g) eps + g e_k``
    has density ``~ exp(g x_k / (1-g)^2)`` in k, so ``p(k | x) = softmax(log pi + g x / (1-g)^2)``."""

    def __init__(self, pi: torch.Tensor) -> None:
        super().__init__()
        self.logpi, self.reparam = pi.log(), TimeReparam(len(pi))
        self.cfg = DiTConfig(vocab_size=len(pi), block_len=20, dim=2, depth=1, heads=1)
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x, g):
        g = g[:, None, None]
        return self.logpi + g / (1 - g).clamp_min(1e-6) ** 2 * x


def test_flm_euler_sampler_with_the_exact_denoiser_samples_the_data_law() -> None:
    pi = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05])
    model = _ExactIIDDenoiser(pi)
    tv = {}
    for steps in (1, 64):
        x = generate_flm(model, 200, 20, steps, seed=0)
        freq = torch.bincount(x.flatten(), minlength=5).float() / x.numel()
        tv[steps] = float((freq - pi).abs().sum() / 2)
    assert tv[1] == pytest.approx(0.5)  # one step: argmax of the prior, the mode only
    assert tv[64] < 4 * math.sqrt(0.25 / 4000)  # 4000 tokens: sampling noise only


def test_pick_tokens_argmax_and_nucleus(gen) -> None:
    logits = torch.log(torch.tensor([[[0.5, 0.3, 0.15, 0.05]]])).expand(1, 4000, 4)
    assert (pick_tokens(logits, 0.0, 1.0, gen) == 0).all()
    draws = pick_tokens(logits, 1.0, 0.7, gen)  # nucleus {0, 1}: mass 0.8 >= 0.7
    assert set(draws.unique().tolist()) == {0, 1}
    frac = float((draws == 0).float().mean())
    assert abs(frac - 0.5 / 0.8) < 4 * math.sqrt(0.25 / 4000)
    full = pick_tokens(logits, 1.0, 1.0, gen)
    assert abs(float((full == 3).float().mean()) - 0.05) < 0.02


def test_fmlm_grid_pairs_are_the_samplers_jumps() -> None:
    flm = _dit(K=20)
    fmap = student_from_flm(flm)
    seen = []

    def capture(x, s, t, r):
        seen.append((s.clone(), t.clone(), r.clone()))
        return x.sum() * 0

    r_ = flm.reparam
    for steps in ((1,), (4,)):
        module = FMLMModule(fmap, FMLMConfig(loss="progressive", objective="ce", grid_fraction=1.0, grid_steps=steps))
        module.off_diagonal = capture
        module.compute_loss(torch.randint(0, 20, (64, 12)), 0)
        s, t, r = seen[-1]
        ts, tt, tr = (r_.t_of_gamma(v.double()) for v in (s, t, r))
        n = steps[0]
        assert torch.allclose(tt - ts, torch.full_like(ts, 1 / n), atol=1e-3)  # adjacent points of the n-step grid
        assert torch.allclose(ts * n, (ts * n).round(), atol=1e-3) and torch.allclose(tr, (ts + tt) / 2, atol=1e-3)
    module = FMLMModule(fmap, FMLMConfig(loss="progressive", objective="ce", grid_fraction=0.0))
    module.off_diagonal = capture
    module.compute_loss(torch.randint(0, 20, (64, 12)), 0)
    s, t, _ = seen[-1]
    assert (r_.t_of_gamma(t.double()) - r_.t_of_gamma(s.double())).std() > 0.05  # uniform pairs: varied gaps
    with pytest.raises(ConfigError, match="grid_fraction"):
        FMLMConfig(grid_fraction=1.5)


def test_fmlm_hard_final_fits_the_last_jump_to_the_targets_argmax() -> None:
    from modaflow.core.flow_map_losses import flow_map_residual

    torch.manual_seed(0)
    flm = _dit(K=20).eval()
    fmap = student_from_flm(flm).eval()
    x, s, t = torch.softmax(torch.randn(2, 12, 20), -1), torch.tensor([0.0, 0.2]), torch.tensor([1.0, 0.7])
    r = 0.5 * (s + t)
    soft = FMLMModule(fmap, FMLMConfig(loss="progressive", objective="ce"))
    hard = FMLMModule(fmap, FMLMConfig(loss="progressive", objective="ce", hard_final=True))
    with torch.no_grad():
        _, target = flow_map_residual("progressive", fmap, x, s, t, r=r)
        d_star = (x + (1 - s)[:, None, None] * target).clamp_min(0)
        d_star = d_star / d_star.sum(-1, keepdim=True)
        logp = torch.log_softmax(fmap.net.dit(x, s, t), -1)
        kl = (torch.xlogy(d_star, d_star) - d_star * logp).sum(-1)  # (2, 12)
        ce_hard = -logp.gather(-1, d_star.argmax(-1, keepdim=True)).squeeze(-1)
        # row 0 ends at t = 1: cross-entropy to argmax D*; row 1 (t < 1): the KL to D* as without the option
        assert torch.allclose(hard.off_diagonal(x, s, t, r), torch.stack([ce_hard[0], kl[1]]).mean(), atol=1e-5)
        assert torch.allclose(soft.off_diagonal(x, s, t, r), kl.mean(), atol=1e-5)
        assert not torch.allclose(ce_hard[0], kl[0], atol=1e-3)


def test_fmlm_student_starts_as_flm_and_its_target_is_a_distribution() -> None:
    flm = _dit(K=20).eval()
    fmap = student_from_flm(flm).eval()
    x, s, t = torch.randn(2, 12, 20), torch.tensor([0.2, 0.5]), torch.tensor([0.6, 0.9])
    with torch.no_grad():
        assert torch.allclose(fmap.net.dit(x, s, t), flm(x, s), atol=1e-6)
        p = torch.softmax(flm(x, s), -1)  # X(s, t, x) = one Euler step of FLM's velocity
        euler = x + (t - s)[:, None, None] * (p - x) / (1 - s)[:, None, None]
        assert torch.allclose(fmap(x, s, t), euler, atol=1e-5)
    module = FMLMModule(fmap, FMLMConfig(loss="progressive", objective="ce"))
    from modaflow.core.flow_map_losses import flow_map_residual

    with torch.no_grad():
        _, target = flow_map_residual("progressive", fmap, x, s, t, r=0.5 * (s + t))
        d_star = x + (1 - s)[:, None, None] * target  # convex mix of the two hops' denoisers
    assert torch.allclose(d_star.sum(-1), torch.ones(2, 12), atol=1e-5) and d_star.min() > -1e-5
    loss = module.compute_loss(torch.randint(0, 20, (4, 12)), 0)
    assert torch.isfinite(loss)
    with pytest.raises(ConfigError, match="objective"):
        FMLMConfig(loss="lagrangian", objective="ce")
    for kind in ("lagrangian", "eulerian", "teacher"):  # the other core losses run through the DiT (JVPs for the first two)
        m = FMLMModule(fmap, FMLMConfig(loss=kind, objective="mse"), teacher=flm if kind == "teacher" else None)
        loss = m.compute_loss(torch.randint(0, 20, (2, 12)), 1)
        loss.backward()
        assert torch.isfinite(loss) and fmap.net.dit.W.grad is not None
        fmap.zero_grad()


def test_mdlm_masking_loss_and_sampler() -> None:
    tokens = torch.arange(12).reshape(2, 6)
    z, masked = mask_tokens(tokens, torch.tensor([0.0, 1.0]), torch.rand(2, 6), 99)
    assert not masked[0].any() and masked[1].all() and (z[1] == 99).all() and torch.equal(z[0], tokens[0])
    model = _dit(K=20, input="tokens", reparam=False)
    batch = torch.randint(0, 20, (4, 12))
    loss = MDLMModule(model, FlowMatchingConfig()).compute_loss(batch, 0)
    assert torch.isfinite(loss) and loss > 0
    # the NELBO's t is uniform whatever the config's time sampler (FLM's default is logit-normal)
    assert torch.equal(loss, MDLMModule(model, FlowMatchingConfig(time_sampler="logit_normal")).compute_loss(batch, 0))
    # and the run config records it: an mdlm run's time sampler is uniform, FLM's default logit-normal
    from modaflow.modalities.language.recipe import LanguageConfig

    assert LanguageConfig(method="mdlm").fm.time_sampler == "uniform"
    assert LanguageConfig(method="flm").fm.time_sampler == "logit_normal"
    for steps in (1, 4):
        x = generate_mdlm(model.eval(), 3, 12, steps, seed=0)
        assert x.shape == (3, 12) and int(x.max()) < 20  # everything revealed, never the mask id


# --- metrics vs slow implementations ---------------------------------------------------------

def test_first_eos_mask_gen_ppl_and_entropy_match_slow_versions(gen) -> None:
    x = torch.randint(0, 6, (5, 9), generator=gen)
    mask = first_eos_mask(x, EOS)
    nll = torch.rand(5, 9, generator=gen)
    num = den = 0.0
    ents = []
    for row, lrow in zip(x.tolist(), nll.tolist()):
        cut = row.index(EOS) + 1 if EOS in row else len(row)
        num += sum(lrow[:cut])
        den += cut
        c = Counter(row[:cut])
        ents.append(-sum(v / cut * math.log(v / cut) for v in c.values()))
    assert mask.sum().item() == den
    assert math.isclose(gen_ppl(nll, mask), math.exp(num / den), rel_tol=1e-6)
    assert math.isclose(sample_entropy(x, mask), sum(ents) / len(ents), rel_tol=1e-5)
    assert sample_entropy(torch.zeros(2, 7, dtype=torch.long)) == 0.0


def test_ngram_js_known_cases(gen) -> None:
    a = torch.randint(0, 5, (4, 20), generator=gen)
    assert ngram_js(a, a, 2) == pytest.approx(0.0, abs=1e-12)
    assert ngram_js(a, a + 5, 2) == pytest.approx(math.log(2))
    b = torch.randint(0, 5, (4, 20), generator=gen)
    pa, pb = Counter(map(tuple, a.unfold(1, 3, 1).reshape(-1, 3).tolist())), Counter(map(tuple, b.unfold(1, 3, 1).reshape(-1, 3).tolist()))
    keys = pa.keys() | pb.keys()
    P = {k: pa[k] / sum(pa.values()) for k in keys}
    Q = {k: pb[k] / sum(pb.values()) for k in keys}
    kl = lambda p, m: sum(p[k] * math.log(p[k] / m[k]) for k in keys if p[k] > 0)  # noqa: E731
    M = {k: (P[k] + Q[k]) / 2 for k in keys}
    assert ngram_js(a, b, 3) == pytest.approx(0.5 * kl(P, M) + 0.5 * kl(Q, M), rel=1e-9)


def _slow_self_bleu(rows: list[list[int]], max_n: int = 4) -> float:
    scores = []
    for i, cand in enumerate(rows):
        logp = 0.0
        for n in range(1, max_n + 1):
            cc = Counter(tuple(cand[j:j + n]) for j in range(len(cand) - n + 1))
            best = Counter()
            for k, ref in enumerate(rows):
                if k != i:
                    best |= Counter(tuple(ref[j:j + n]) for j in range(len(ref) - n + 1))
            clipped = sum(min(c, best[g]) for g, c in cc.items())
            logp += math.log(max(clipped, 0.1) / (len(cand) - n + 1)) / max_n
        scores.append(math.exp(logp))
    return sum(scores) / len(scores)


def test_self_bleu_matches_a_slow_version_and_known_cases(gen) -> None:
    x = torch.randint(0, 4, (6, 15), generator=gen)
    assert self_bleu(x) == pytest.approx(_slow_self_bleu(x.tolist()), rel=1e-12)
    assert self_bleu(x[:1].expand(3, 15)) == pytest.approx(1.0)
    distinct = torch.arange(30).reshape(3, 10)
    no_match = math.exp(sum(math.log(0.1 / (10 - n + 1)) for n in range(1, 5)) / 4)  # every count floored at 0.1
    assert self_bleu(distinct) == pytest.approx(no_match, rel=1e-12)


# --- Markov source --------------------------------------------------------------------------

def test_markov_source_nll_and_entropy_rate() -> None:
    src = MarkovSource(16, 0.3, seed=0)
    assert torch.allclose(src.pi @ src.P, src.pi, atol=1e-10)
    x = src.sample(4000, 10, seed=1)
    nll = src.nll(x)
    slow = [-math.log(src.pi[r[0]]) - sum(math.log(src.P[a, b]) for a, b in zip(r[:-1], r[1:])) for r in x[:3].tolist()]
    assert torch.allclose(nll[:3].sum(1), torch.tensor(slow, dtype=torch.float64))
    per_seq = nll.mean(1)
    assert abs(float(per_seq.mean()) - src.expected_nll(10)) < 4 * float(per_seq.std()) / math.sqrt(4000)


def test_entropy_counts_every_generated_token_and_the_prefix_variant_stops_at_eos() -> None:
    """REFERENCE §3: entropy is the per-sample unigram entropy of the generated token ids (only
    gen PPL masks after the first <eos>); ``entropy_prefix`` keeps the tokens up to the first <eos>."""
    from modaflow.modalities.language.generation import score

    x = torch.tensor([[5, 1, 2, 3], [4, 4, 4, 4]])  # <eos> = 1 at position 1 of the first sample
    out = score(x, x, eos=1)
    assert math.isclose(out["entropy"], (math.log(4) + 0.0) / 2, rel_tol=1e-6)
    assert math.isclose(out["entropy_prefix"], (math.log(2) + 0.0) / 2, rel_tol=1e-6)


def test_calibration_rule_and_final_logits_reproduce_the_samplers() -> None:
    """The bench's calibrated rows redraw the samplers' final logits: argmax = generate's tokens, a draw at T =
    generate's draw at T (same generators); the rule picks the temperature of the closest entropy."""
    from modaflow.benchmarks.language import _draw, closest_entropy
    from modaflow.modalities.language.flm import final_logits_flm
    from modaflow.modalities.language.fmlm import final_logits_fmlm, generate_fmlm

    assert closest_entropy({0.0: 3.0, 0.5: 3.4, 1.0: 3.9}, 3.5) == 0.5
    assert closest_entropy({1.0: 3.0, 0.0: 3.0}, 3.0) == 0.0  # tie: the lower temperature
    torch.manual_seed(0)
    flm = DiT(DiTConfig(vocab_size=12, block_len=6, dim=16, depth=1, heads=2)).eval()
    fmap = student_from_flm(flm).eval()
    for gen_fn, logit_fn, net in ((generate_flm, final_logits_flm, flm), (generate_fmlm, final_logits_fmlm, fmap)):
        for steps in (1, 3):
            logits = [logit_fn(net, 4, 6, steps, 7 + 1000 * i) for i in range(2)]
            for temp in (0.0, 0.8):
                drawn = _draw(logits, 7, temp)
                assert all(torch.equal(drawn[i], gen_fn(net, 4, 6, steps, 7 + 1000 * i, temperature=temp)) for i in range(2))
