"""Every loss against its paper's formula, on tiny hand-made cases.

The expected values are computed here from the formulas with plain Python/torch (never by calling
the code under test). Methods are checked through their ``loss_terms`` with the encoder replaced
by an identity (or a fixed layer), so the embeddings are the numbers written in the test. Batches
are made by the method's own batch kind (``kind.batch``), so the tuples a loss reads are the ones
the trainer hands it.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dmlbench.blocks.batches import PAIRS, PLAIN, TRIPLETS, Balanced, Batch, Layout
from dmlbench.blocks.sampling import ClassIndex
from dmlbench.methods import get_method, method_names
from dmlbench.methods.losses import gaussian_kl, reconstruction, softmax_ratio_loss


def dist(a, b) -> float:
    return math.sqrt(sum((float(u) - float(v)) ** 2 for u, v in zip(a, b)))


def dot(a, b) -> float:
    return sum(float(u) * float(v) for u, v in zip(a, b))


def make(name: str, dim: int = 2, input_shape=(1, 1, 2), encoder: nn.Module | None = None, **params):
    """A method whose encoder is replaced (identity by default): embeddings are the inputs."""
    cls = get_method(name)
    m = cls(cls.Params(**params), input_shape=input_shape, embedding_dim=dim, encoder="mlp", num_classes=10)
    m.encoder = encoder if encoder is not None else nn.Identity()
    return m


def kind_batch(kind, x: torch.Tensor, y: torch.Tensor, group: int = 0) -> Batch:
    """The Batch that ``kind`` yields for rows already laid out as it lays them out."""
    return kind.batch(x, y, Layout(len(x), group))


# ---------------------------------------------------------------- Hadsell contrastive (siamese)

# (first, second, same class?) -- positives and negatives interleaved on purpose.
PAIR_ROWS = [
    ([0.0, 0.0], [3.0, 4.0], True),     # d = 5
    ([0.0, 0.0], [1.0, 0.0], False),    # d = 1 < m
    ([1.0, 1.0], [1.0, 2.0], True),     # d = 1
    ([0.0, 0.0], [0.0, 3.0], False),    # d = 3 > m: no loss
    ([2.0, 2.0], [2.0, 2.5], False),    # d = 0.5
    ([-1.0, 0.5], [0.5, 0.0], True),
]


def pair_batch():
    first = torch.tensor([p[0] for p in PAIR_ROWS])
    second = torch.tensor([p[1] for p in PAIR_ROWS])
    y1 = torch.arange(len(PAIR_ROWS))
    y2 = torch.where(torch.tensor([p[2] for p in PAIR_ROWS]), y1, y1 + 100)
    return kind_batch(PAIRS, torch.cat([first, second]), torch.cat([y1, y2]))


@pytest.mark.parametrize("margin", [1.0, 2.0])
def test_siamese_hadsell_squared_form(margin):
    pos = [0.5 * dist(a, b) ** 2 for a, b, s in PAIR_ROWS if s]
    neg = [0.5 * max(0.0, margin - dist(a, b)) ** 2 for a, b, s in PAIR_ROWS if not s]
    expected = sum(pos) / len(pos) + sum(neg) / len(neg)
    m = make("siamese", margin=margin)
    assert m.batch_kind == PAIRS
    terms = m.loss_terms(pair_batch())
    assert set(terms) == {"contrastive"}
    assert terms["contrastive"].item() == pytest.approx(expected, rel=1e-5)


def test_siamese_hand_numbers_margin_2():
    # pos: 1/2*25, 1/2*1, 1/2*(1.5^2+0.5^2); neg (m=2): 1/2*1, 0, 1/2*1.5^2
    expected = (12.5 + 0.5 + 0.5 * 2.5) / 3 + (0.5 + 0.0 + 1.125) / 3
    assert make("siamese", margin=2.0).loss_terms(pair_batch())["contrastive"].item() == pytest.approx(expected, rel=1e-5)


def test_siamese_plain_pml_contrastive_form():
    margin = 2.0
    pos = [dist(a, b) for a, b, s in PAIR_ROWS if s]
    neg = [max(0.0, margin - dist(a, b)) for a, b, s in PAIR_ROWS if not s]
    expected = sum(pos) / len(pos) + sum(neg) / len(neg)
    m = make("siamese", margin=margin, squared=False)
    assert m.loss_terms(pair_batch())["contrastive"].item() == pytest.approx(expected, rel=1e-5)


def test_siamese_normalized_embeddings():
    def unit(v):
        n = math.sqrt(sum(x * x for x in v))
        return [x / n for x in v]

    pairs = [(a, b, s) for a, b, s in PAIR_ROWS if any(a) and any(b)]  # no zero vectors
    first = torch.tensor([p[0] for p in pairs])
    second = torch.tensor([p[1] for p in pairs])
    y1 = torch.arange(len(pairs))
    y2 = torch.where(torch.tensor([p[2] for p in pairs]), y1, y1 + 100)
    batch = kind_batch(PAIRS, torch.cat([first, second]), torch.cat([y1, y2]))
    margin = 1.0
    pos = [0.5 * dist(unit(a), unit(b)) ** 2 for a, b, s in pairs if s]
    neg = [0.5 * max(0.0, margin - dist(unit(a), unit(b))) ** 2 for a, b, s in pairs if not s]
    expected = sum(pos) / len(pos) + sum(neg) / len(neg)
    m = make("siamese", margin=margin, normalize=True)
    assert m.loss_terms(batch)["contrastive"].item() == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------- hinge triplet (triplet-hinge, TVAE)

TRIPLET_ROWS = [
    # anchor, positive, negative
    ([0.0, 0.0], [1.0, 0.0], [0.0, 3.0]),   # 1 - 3 + m: inactive for m = 1
    ([0.0, 0.0], [2.0, 0.0], [0.0, 1.0]),   # 2 - 1 + m
    ([1.0, 1.0], [1.0, 1.5], [1.0, 2.0]),   # 0.5 - 1 + m
    ([0.5, -1.0], [0.0, 0.0], [3.0, 4.0]),
]


def hinge_expected(triplets, margin):
    return sum(max(0.0, dist(a, p) - dist(a, n) + margin) for a, p, n in triplets) / len(triplets)


def triplet_batch(triplets=TRIPLET_ROWS):
    a, p, n = (torch.tensor([t[i] for t in triplets]) for i in range(3))
    ya = torch.arange(len(triplets))
    return kind_batch(TRIPLETS, torch.cat([a, p, n]), torch.cat([ya, ya, ya + 100]))


@pytest.mark.parametrize("margin", [1.0, 0.2])
def test_triplet_hinge_mean_over_all_triplets(margin):
    m = make("triplet-hinge", margin=margin)
    assert m.batch_kind == TRIPLETS
    terms = m.loss_terms(triplet_batch())
    assert set(terms) == {"triplet"}
    assert terms["triplet"].item() == pytest.approx(hinge_expected(TRIPLET_ROWS, margin), rel=1e-5)


def test_triplet_hinge_hand_numbers():
    # m = 1: max(0, 1-3+1)=0, max(0, 2-1+1)=2, max(0, .5-1+1)=.5, max(0, sqrt(1.25)-sqrt(2.5^2+5^2)+1)=0
    assert make("triplet-hinge", margin=1.0).loss_terms(triplet_batch())["triplet"].item() == pytest.approx(2.5 / 4)


# ---------------------------------------------------------------- softmax ratio (Hoffer & Ailon)

def ratio_expected(d_pos, d_neg, form):
    out = []
    for dp, dn in zip(d_pos, d_neg):
        s_pos = math.exp(dp) / (math.exp(dp) + math.exp(dn))
        s_neg = math.exp(dn) / (math.exp(dp) + math.exp(dn))
        out.append(s_pos ** 2 if form == "mse" else -math.log(s_neg))
    return sum(out) / len(out)


@pytest.mark.parametrize("form", ["mse", "nll"])
def test_softmax_ratio_loss_formula(form):
    d_pos, d_neg = [0.5, 2.0, 1.0, 0.0], [1.5, 0.3, 1.0, 4.0]
    got = softmax_ratio_loss(torch.tensor(d_pos), torch.tensor(d_neg), form).item()
    assert got == pytest.approx(ratio_expected(d_pos, d_neg, form), rel=1e-6)


def test_softmax_ratio_mse_equal_distances_is_quarter():
    # s+ = s- = 1/2 -> MSE against (0, 1) = ((1/2)^2 + (1/2)^2) / 2 = 1/4
    assert softmax_ratio_loss(torch.ones(3), torch.ones(3), "mse").item() == pytest.approx(0.25)
    with pytest.raises(ValueError):
        softmax_ratio_loss(torch.ones(3), torch.ones(3), "hinge")


@pytest.mark.parametrize("form", ["mse", "nll"])
def test_triplet_softmax_method_uses_unsquared_l2(form):
    m = make("triplet-softmax", form=form)
    assert m.batch_kind == TRIPLETS
    terms = m.loss_terms(triplet_batch())
    assert set(terms) == {"ratio"}
    d_pos = [dist(a, p) for a, p, _ in TRIPLET_ROWS]
    d_neg = [dist(a, n) for a, _, n in TRIPLET_ROWS]
    assert terms["ratio"].item() == pytest.approx(ratio_expected(d_pos, d_neg, form), rel=1e-5)


# ---------------------------------------------------------------- N-pair (Sohn) + L2 penalty

def test_npair_terms_match_sohn_and_l2_penalty():
    # Two independent N-pair tuples (N = 3 classes x 2 images), laid out as the sampler does.
    g1 = [[1.0, 0.0], [0.8, 0.1], [0.0, 1.0], [0.2, 0.7], [-1.0, 0.5], [-0.5, 0.0]]
    g2 = [[0.3, 0.3], [0.1, 0.4], [1.2, -0.2], [0.9, 0.1], [0.0, -1.0], [0.4, -0.6]]
    y1, y2 = [0, 0, 1, 1, 2, 2], [2, 2, 0, 0, 1, 1]
    lam = 0.002

    def sohn(rows, labels):
        classes = sorted(set(labels))
        anchors = [rows[labels.index(c)] for c in classes]                      # first image of the class
        positives = [rows[len(labels) - 1 - labels[::-1].index(c)] for c in classes]  # second image
        n = len(classes)
        loss = sum(math.log(1 + sum(math.exp(dot(anchors[i], positives[j]) - dot(anchors[i], positives[i]))
                                    for j in range(n) if j != i)) for i in range(n)) / n
        penalty = lam / (2 * n) * sum(dot(f, f) + dot(fp, fp) for f, fp in zip(anchors, positives))
        return loss, penalty

    (l1, p1), (l2, p2) = sohn(g1, y1), sohn(g2, y2)
    m = make("npair")
    assert m.weights["l2"] == pytest.approx(lam)
    assert m.batch_kind == Balanced(m=2, classes_per_group=-1)
    batch = kind_batch(m.batch_kind, torch.tensor(g1 + g2), torch.tensor(y1 + y2), group=6)
    assert batch.groups.tolist() == [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11]]
    terms = m.loss_terms(batch)
    assert set(terms) == {"npair", "l2"}
    assert terms["npair"].item() == pytest.approx((l1 + l2) / 2, rel=1e-5)
    assert (m.weights["l2"] * terms["l2"]).item() == pytest.approx((p1 + p2) / 2, rel=1e-5)
    assert terms["l2"].item() == pytest.approx(sum(dot(f, f) for f in g1 + g2) / 12, rel=1e-6)


def test_npair_single_group_hand_numbers():
    # N = 2, orthogonal unit anchors equal to their positives: f_i.f_j+ - f_i.f_i+ = -1 for j != i.
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    m = make("npair")
    terms = m.loss_terms(kind_batch(m.batch_kind, x, torch.tensor([0, 0, 1, 1]), group=4))
    assert terms["npair"].item() == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-6)
    assert terms["l2"].item() == pytest.approx(1.0)


# ---------------------------------------------------------------- VAE pieces

def test_gaussian_kl_closed_form():
    mu = torch.tensor([[0.0, 0.0], [1.0, -2.0], [0.3, 0.1]])
    logvar = torch.tensor([[0.0, 0.0], [0.5, -1.0], [-3.0, 2.0]])
    got = gaussian_kl(mu, logvar)
    for i in range(3):
        exp = sum(math.log(1 / math.exp(0.5 * lv)) + (math.exp(lv) + m ** 2) / 2 - 0.5
                  for m, lv in zip(mu[i].tolist(), logvar[i].tolist()))
        assert got[i].item() == pytest.approx(exp, rel=1e-5, abs=1e-7)
    assert got[0].item() == 0.0  # q = prior
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(mu, (0.5 * logvar).exp()),
                                            torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))).sum(1)
    torch.testing.assert_close(got, ref)


def test_reconstruction_l2_and_bce():
    x = torch.tensor([[[[0.0, 1.0], [0.5, 0.25]]], [[[1.0, 1.0], [0.0, 0.0]]]])
    x_hat = torch.tensor([[[[0.1, 0.8], [0.5, 0.5]]], [[[0.9, 0.6], [0.2, 0.3]]]])
    xs, hs = x.flatten(1).tolist(), x_hat.flatten(1).tolist()
    l2 = [sum((h - v) ** 2 for v, h in zip(a, b)) for a, b in zip(xs, hs)]
    bce = [-sum(v * math.log(h) + (1 - v) * math.log(1 - h) for v, h in zip(a, b)) for a, b in zip(xs, hs)]
    assert reconstruction(x, x_hat, "l2").tolist() == pytest.approx(l2, rel=1e-6)
    assert reconstruction(x, x_hat, "bce").tolist() == pytest.approx(bce, rel=1e-5)
    assert l2[0] == pytest.approx(0.01 + 0.04 + 0 + 0.0625)
    with pytest.raises(ValueError):
        reconstruction(x, x_hat, "l1")


# A 4-pixel "image" whose pixels are the encoder output [mu (2), logvar (2)], and a fixed decoder.
W = torch.tensor([[1.0, -0.5], [0.3, 0.8], [-1.2, 0.4], [0.5, 0.5]])
B = torch.tensor([0.1, -0.2, 0.0, 0.3])


def fixed_vae(name: str, **params):
    m = make(name, dim=2, input_shape=(1, 1, 4), encoder=nn.Flatten(), **params)
    lin = nn.Linear(2, 4)
    with torch.no_grad():
        lin.weight.copy_(W)
        lin.bias.copy_(B)
    m.decoder = nn.Sequential(lin, nn.Sigmoid(), nn.Unflatten(1, (1, 1, 4)))
    return m


def elbo_expected(x: torch.Tensor, eps: torch.Tensor, recon: str, n_pixels: int, reduction: str):
    """Negative ELBO pieces from the formulas, sample by sample, in plain Python."""
    rec_sum, kl_sum = 0.0, 0.0
    for row, e in zip(x.flatten(1).tolist(), eps.tolist()):
        mu, logvar = row[:2], row[2:]
        z = [m + ee * math.exp(0.5 * lv) for m, ee, lv in zip(mu, e, logvar)]
        x_hat = [1 / (1 + math.exp(-(sum(w * zz for w, zz in zip(W[k].tolist(), z)) + B[k].item())))
                 for k in range(4)]
        if recon == "l2":
            rec_sum += sum((h - v) ** 2 for h, v in zip(x_hat, row))
        else:
            rec_sum += -sum(v * math.log(h) + (1 - v) * math.log(1 - h) for h, v in zip(x_hat, row))
        kl_sum += sum(0.5 * (math.exp(lv) + m ** 2 - 1 - lv) for m, lv in zip(mu, logvar))
    n = len(x)
    scale = 1 / n_pixels if reduction == "mean" else 1.0
    return rec_sum / n * scale, kl_sum / n * scale


X4 = torch.tensor([[0.2, 0.9, 0.1, 0.4], [0.7, 0.3, 0.5, 0.0], [0.0, 1.0, 0.8, 0.6],
                   [0.5, 0.5, 0.2, 0.9], [1.0, 0.1, 0.3, 0.2], [0.4, 0.6, 0.0, 0.1]]).view(6, 1, 1, 4)


@pytest.mark.parametrize("recon", ["l2", "bce"])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_vae_terms_and_reduction(recon, reduction):
    m = fixed_vae("vae", recon=recon, reduction=reduction)
    torch.manual_seed(123)
    eps = torch.randn(6, 2)
    torch.manual_seed(123)  # the reparameterisation draws the same eps
    assert m.batch_kind == PLAIN
    terms = m.loss_terms(kind_batch(PLAIN, X4, torch.zeros(6, dtype=torch.long)))
    assert set(terms) == {"recon", "kl"}
    rec, kl = elbo_expected(X4, eps, recon, n_pixels=4, reduction=reduction)
    assert terms["recon"].item() == pytest.approx(rec, rel=1e-5)
    assert terms["kl"].item() == pytest.approx(kl, rel=1e-5)
    # The embedding is the posterior mean mu.
    torch.testing.assert_close(m.embed(X4), X4.flatten(1)[:, :2])


def test_vae_mean_reduction_divides_by_pixel_count():
    x = torch.rand(5, 1, 2, 3)  # 6 pixels
    ms = get_method("vae")
    kw = dict(input_shape=(1, 2, 3), embedding_dim=3, encoder="mlp", num_classes=10)
    torch.manual_seed(0)
    a = ms(ms.Params(reduction="sum"), **kw)
    b = ms(ms.Params(reduction="mean"), **kw)
    b.load_state_dict(a.state_dict())
    batch = kind_batch(PLAIN, x, torch.zeros(5, dtype=torch.long))
    torch.manual_seed(7)
    ta = a.loss_terms(batch)
    torch.manual_seed(7)
    tb = b.loss_terms(batch)
    for k in ("recon", "kl"):
        assert tb[k].item() == pytest.approx(ta[k].item() / 6, rel=1e-5)
        assert ta[k].item() > 0


def test_tvae_terms_are_elbo_plus_triplet_on_mu():
    margin = 0.3
    m = fixed_vae("tvae", margin=margin)
    y = torch.tensor([0, 1, 0, 1, 1, 0])  # anchors 0,1 ; positives 0,1 ; negatives 1,0
    torch.manual_seed(5)
    eps = torch.randn(6, 2)
    torch.manual_seed(5)
    assert m.batch_kind == TRIPLETS
    terms = m.loss_terms(kind_batch(TRIPLETS, X4, y))
    assert set(terms) == {"recon", "kl", "triplet"} == set(m.weights)
    rec, kl = elbo_expected(X4, eps, "l2", n_pixels=4, reduction="sum")
    assert terms["recon"].item() == pytest.approx(rec, rel=1e-5)
    assert terms["kl"].item() == pytest.approx(kl, rel=1e-5)
    mu = X4.flatten(1)[:, :2].tolist()
    trip = [(mu[0], mu[2], mu[4]), (mu[1], mu[3], mu[5])]
    expected = hinge_expected(trip, margin)
    assert expected > 0
    assert terms["triplet"].item() == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------- pml:<LossName>

def test_pml_multisimilarity_matches_formula():
    from pytorch_metric_learning.losses import MultiSimilarityLoss

    emb = torch.tensor([[1.0, 0.2], [0.9, 0.5], [0.1, 1.0], [-0.3, 0.8], [-1.0, -0.1], [-0.6, -0.7]])
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    m = make("pml:MultiSimilarityLoss")
    assert m.batch_kind == Balanced(m=4)  # m_per_class=4 by default
    terms = m.loss_terms(kind_batch(Balanced(m=2), emb, y, group=6))
    assert set(terms) == {"loss"} == set(m.weights)
    assert terms["loss"].item() == pytest.approx(MultiSimilarityLoss()(emb, y).item(), rel=1e-6)
    # Wang et al. 2019 with PML's defaults (alpha 2, beta 50, lambda 0.5, cosine similarity).
    alpha, beta, lam = 2.0, 50.0, 0.5
    unit = [[v / math.sqrt(dot(e, e)) for v in e] for e in emb.tolist()]
    per = []
    for i in range(6):
        pos = [dot(unit[i], unit[k]) for k in range(6) if k != i and y[k] == y[i]]
        neg = [dot(unit[i], unit[k]) for k in range(6) if y[k] != y[i]]
        per.append(math.log(1 + sum(math.exp(-alpha * (s - lam)) for s in pos)) / alpha
                   + math.log(1 + sum(math.exp(beta * (s - lam)) for s in neg)) / beta)
    assert terms["loss"].item() == pytest.approx(sum(per) / 6, rel=1e-5)


def test_pml_options_reach_the_loss():
    m = make("pml:MultiSimilarityLoss", alpha=5.0, base=0.1)
    assert m.loss_fn.alpha == 5.0 and m.loss_fn.base == 0.1
    arc = make("pml:ArcFaceLoss", margin=10.0)
    assert arc.loss_fn.margin == pytest.approx(math.radians(10.0))
    assert arc.loss_fn.W.shape == (2, 10)  # embedding_size x num_classes, filled in


# ---------------------------------------------------------------- loss-term keys = weight keys

TERM_METHODS = [n for n in method_names() if n != "raw"] + ["pml:MultiSimilarityLoss", "pml:ArcFaceLoss"]


@pytest.mark.parametrize("name", TERM_METHODS)
def test_loss_term_keys_match_weight_keys(name, digits):
    cls = get_method(name)
    torch.manual_seed(0)
    m = cls(cls.Params(), input_shape=digits.input_shape, embedding_dim=4, encoder="mlp", num_classes=10)
    kind = m.batch_kind
    layout = kind.layout(60, 10)
    y = torch.from_numpy(digits.train.y)
    idx = kind.epoch_indices(ClassIndex(y), len(y), layout, 1, torch.Generator().manual_seed(0))[0]
    x = torch.from_numpy(digits.train.x[idx.numpy()]).float() * digits.scale
    terms = m.loss_terms(kind.batch(x, y[idx], layout))
    # In the declared order: the trainer logs them by position and refuses any other names.
    assert list(terms) == list(m.terms) == list(cls.terms)
    assert set(terms) == set(m.weights) == set(cls.Params().weights)


def test_triplet_hinge_mining_all_averages_the_margin_violating_triplets():
    # mining=all: PML's TripletMarginMiner keeps every triplet of the class-balanced batch with
    # D(a,n) - D(a,p) <= m; the hinge is then averaged over those (MeanReducer).
    margin = 0.5
    m = make("triplet-hinge", margin=margin, mining="all", m=2)
    assert m.batch_kind == Balanced(m=2)
    emb = [[0.0, 0.0], [0.3, 0.1], [1.0, 0.2], [0.6, 0.9], [-0.4, 0.5], [0.2, 0.4]]
    y = [0, 0, 1, 1, 2, 2]
    losses = []
    for a in range(6):
        for p in range(6):
            for n in range(6):
                if p != a and y[p] == y[a] and y[n] != y[a]:
                    d_ap, d_an = dist(emb[a], emb[p]), dist(emb[a], emb[n])
                    if d_an - d_ap <= margin:
                        losses.append(max(0.0, d_ap - d_an + margin))
    assert 0 < len(losses) < 24  # some triplets are mined out
    terms = m.loss_terms(kind_batch(Balanced(m=2), torch.tensor(emb), torch.tensor(y), group=6))
    assert terms["triplet"].item() == pytest.approx(sum(losses) / len(losses), rel=1e-5)


def test_batched_npair_matches_pml_group_by_group():
    """npair_groups against PML's NPairsLoss called once per group, on groups as the sampler
    builds them and on the awkward ones: a class with one image, a class with three, a group
    without any pair, and labels in any order."""
    from pytorch_metric_learning.distances import DotProductSimilarity
    from pytorch_metric_learning.losses import NPairsLoss

    from dmlbench.methods.npair import npair_groups

    pml = NPairsLoss(distance=DotProductSimilarity(normalize_embeddings=False))
    gen = torch.Generator().manual_seed(0)
    labels = torch.tensor([[0, 0, 1, 1, 2, 2, 3, 3],      # the sampler's layout
                           [3, 1, 2, 1, 3, 0, 2, 0],      # pairs scattered
                           [0, 0, 0, 1, 1, 2, 3, 3],      # a class with 3 images, one with 1
                           [0, 1, 2, 3, 4, 5, 6, 7],      # no pair at all: loss 0
                           [5, 5, 5, 5, 9, 9, 4, 4]])
    emb = torch.randn(5, 8, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    ours = npair_groups(emb, labels)
    theirs = torch.stack([pml(emb[i], labels[i]) for i in range(len(labels))]).mean()
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-10)
    g_ours, = torch.autograd.grad(ours, emb)
    g_theirs, = torch.autograd.grad(theirs, emb)
    torch.testing.assert_close(g_ours, g_theirs)
