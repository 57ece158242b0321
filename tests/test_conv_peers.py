"""Conv nets: the float64 references of ``curvature/reference.py``, BackPACK and curvlinops as peers,
and curvlab's ``curvature()`` against them (issue 19, "How it is checked").

What each peer defines, next to the in-package references (all batch means of the mean loss):

=====================================  ==========================================================
peer                                   reference / relation
=====================================  ==========================================================
BackPACK ``GGNMP``                     :func:`ggn_sample_blocks` E_i[J_θ,iᵀ H_i J_θ,i] (equal)
BackPACK ``HMP``                       :func:`layer_hessian_blocks`, the true blocks (equal)
BackPACK ``PCHMP(modify=abs|clip)``    :func:`pch_sample_blocks` once BackPACK 1.7.1's residual is
                                       fixed: it multiplies ``hessian_diagonal`` (= σ'' ⊙ g_out) by
                                       g_out again, so its residual is σ'' ⊙ g², not σ'' ⊙ g (HBP
                                       Eq. 10); equal on ReLU nets (no residual), else not (tests)
BackPACK ``KFLR`` / ``KFAC``           G = the reduce G of the exact / MC Fisher (the exact bias
                                       block, no 1/L), A = L · A_expand without the ones row
                                       (E_i Σ_l u_l u_lᵀ: "differs from KFC by a factor |T|")
BackPACK ``KFRA``                      G = position sums of :func:`ea_step_blocks`, KFRA's shared
                                       batch average B̄ ← E_i[J_iᵀ B̄ J_i] at every step (Botev et al.;
                                       not a per-sample chain), A as KFLR
curvlinops ``KFACLinearOperator``      :func:`kfac_reference` in both conventions (``type-2`` =
                                       exact Fisher, ``empirical``; ``separate_weight_and_bias``
                                       False = the ones row): the same quantities (equal)
=====================================  ==========================================================

BackPACK hooks its modules (``extend``) in a way torch.func cannot trace, so every peer runs on a
deep copy of the net. Its MaxPool KFRA and AvgPool products allocate work arrays in the default
dtype, so BackPACK runs under a float64 default dtype.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import warnings
from typing import Iterator

import pytest
import torch
from torch import nn

import curvlab
from curvlab.curvature import reference as R
from curvlab.curvature.options import FisherType, JacobianAverage
from curvlab.losses import CrossEntropy, make_loss
from curvlab.nets import MLP

DT = torch.float64
LOSS = CrossEntropy()
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")  # torch pads a copy


def _net(name: str) -> nn.Sequential:
    """The small conv nets of the checks (inputs (3, 2, 8, 8), 4 classes)."""
    torch.manual_seed(0)
    conv = nn.Conv2d
    nets = {
        # conv with stride and padding, a smooth activation: residuals in every kind
        "stride_pad": lambda: nn.Sequential(conv(2, 3, 3, stride=2, padding=1), nn.Tanh(), nn.Flatten(),
                                            nn.Linear(48, 4)),
        # cifar10_3c3d's block: ReLU, TensorFlow's "same" max pooling (ZeroPad2d + MaxPool2d 3 stride 2);
        # no step has a residual, so GN = PCH-1 = PCH-2 = the Hessian (CE)
        "relu_maxpool": lambda: nn.Sequential(conv(2, 3, 3, padding=1), nn.ReLU(), nn.ZeroPad2d((0, 1, 0, 1)),
                                              nn.MaxPool2d(3, 2), nn.Flatten(), nn.Linear(48, 4)),
        # two convs → Flatten → Linear, max pooling between them (padding 1 = "same" for k = 3: BackPACK
        # 1.7.1 takes no padding strings)
        "two_convs": lambda: nn.Sequential(conv(2, 3, 3, stride=2, padding=1), nn.Tanh(), nn.MaxPool2d(2),
                                           conv(3, 2, 3, padding=1), nn.Sigmoid(), nn.Flatten(),
                                           nn.Linear(8, 4)),
        # "same" padding of a 2×3 kernel dilated (1, 2): pads 0/1 rows (the odd one at the bottom) and
        # 2/2 columns; no peer takes it (BackPACK: no padding strings; curvlinops: "unequal padding")
        "same_even": lambda: nn.Sequential(conv(2, 3, (2, 3), padding="same", dilation=(1, 2)), nn.Sigmoid(),
                                           nn.MaxPool2d(2), nn.Flatten(), nn.Linear(48, 4)),
        # no bias, average pooling, an even kernel
        "avgpool_nobias": lambda: nn.Sequential(conv(2, 3, 2, bias=False), nn.Sigmoid(), nn.AvgPool2d(2),
                                                nn.Flatten(), nn.Linear(27, 4)),
    }
    net = nets[name]().to(DT)
    for p in net.parameters():  # larger weights than the default init: residuals that matter
        nn.init.uniform_(p, -0.7, 0.7)
    return net


NETS = ("stride_pad", "relu_maxpool", "two_convs", "avgpool_nobias")


def _data(batch: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return 2.0 * torch.randn(batch, 2, 8, 8, generator=gen, dtype=DT), torch.tensor([0, 3, 1, 2, 2][:batch])


def _layers(net: nn.Module) -> list[nn.Module]:
    return [m for m in net.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def _layer_io(net: nn.Module, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(input, output) of every layer, by a plain forward pass through the leaves."""
    out, h = [], x
    for m in R.net_steps(net):
        z = m(h)
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            out.append((h.detach(), z.detach()))
        h = z
    return out


def _positions(net: nn.Module, x: torch.Tensor) -> list[int]:
    """L = H_out·W_out of every layer (1 for a Linear)."""
    return [z[0, 0].numel() if z.dim() == 4 else 1 for _, z in _layer_io(net, x)]


@functools.lru_cache(maxsize=None)
def _ref(name: str, what: str, loss_name: str = "cross_entropy") -> list:
    """The references of net ``name``, computed once per session (the exact one takes seconds)."""
    net, (x, y), loss = _net(name), _data(), make_loss(loss_name)
    if what == "hessian":
        return R.layer_hessian_blocks(net, x, y, loss)
    if what == "exact_chain":
        return R.sample_chain_blocks(net, x, y, loss, residual=lambda r: r)
    if what == "ggn":
        return R.ggn_sample_blocks(net, x, y, loss)
    if what in ("abs", "clip"):
        return R.pch_sample_blocks(net, x, y, loss, what)
    if what == "kfra":
        return R.ea_step_blocks(net, x, y, loss)
    raise ValueError(what)


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-13)


# --- the references themselves ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["stride_pad", "two_convs", "avgpool_nobias", "same_even"])
def test_per_sample_chain_with_residuals_kept_is_the_true_hessian(name: str) -> None:
    """Σ of J_θᵀ (J_sᵀ … H_i … J_s + R_s) J_θ over every step, residuals unmodified, is ∇²_θ of the mean
    loss: the recursion of the reference against ``torch.func.hessian`` of the whole net."""
    for chained, true in zip(_ref(name, "exact_chain"), _ref(name, "hessian"), strict=True):
        assert true.weight.abs().max() > 1e-3
        _close(chained.weight, true.weight)
        _close(chained.bias, true.bias)


def test_ggn_is_the_hessian_of_a_net_without_curved_steps() -> None:
    """Conv → MaxPool (piecewise linear) → AvgPool → Flatten → Linear: no step has a residual, so the
    GGN blocks are the true Hessian blocks."""
    torch.manual_seed(2)
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.MaxPool2d(2), nn.AvgPool2d(2), nn.Flatten(),
                        nn.Linear(12, 4)).to(DT)
    x, y = _data()
    for ggn, true in zip(R.ggn_sample_blocks(net, x, y, LOSS), R.layer_hessian_blocks(net, x, y, LOSS), strict=True):
        _close(ggn.weight, true.weight)
        _close(ggn.bias, true.bias)


def test_pch_differs_from_ggn_only_through_residuals() -> None:
    """ReLU (and MaxPool) have no residual and the CE Hessian is PSD, so PCH-1 = PCH-2 = GGN = Hessian;
    with tanh the residuals make all three differ (the tests below can tell them apart)."""
    refs = (_ref("relu_maxpool", k) for k in ("abs", "clip", "ggn", "hessian"))
    for a, c, g, h in zip(*refs, strict=True):
        _close(a.weight, g.weight)
        _close(c.bias, g.bias)
        _close(h.weight, g.weight)  # no residual anywhere: the GGN is the Hessian
    a, c, g = (_ref("two_convs", k)[0].weight for k in ("abs", "clip", "ggn"))
    assert (a - g).abs().max() > 1e-3 and (a - c).abs().max() > 1e-3 and (c - g).abs().max() > 1e-3
    # Eq. (14): an indefinite H_i, so even the last Linear's PCH (Pos-Eig of H_i only) differs from GN
    a, g = (_ref("stride_pad", k, "nonconvex")[-1].bias for k in ("abs", "ggn"))
    assert (a - g).abs().max() > 1e-3 and torch.linalg.eigvalsh(g).min() < -1e-6 < torch.linalg.eigvalsh(a).min()


@pytest.mark.parametrize("activation", ["sigmoid", "relu"])
def test_on_an_mlp_the_references_agree_with_the_feature_references(activation: str) -> None:
    """On an MLP: the GGN bias blocks are the exact Fisher (CE) of :func:`fisher_blocks`, the KFAC
    reference's G (L = 1, both conventions) is that Fisher and its A is E[h̃ h̃ᵀ], and KFRA's recursion
    is :func:`ea_blocks` with the residual dropped (GN, per-sample Jacobians, Eq. 6)."""
    torch.manual_seed(0)
    net = MLP([6, 5, 4, 3], activation=activation).to(DT)
    x, y = torch.randn(5, 6, dtype=DT), torch.tensor([0, 1, 2, 1, 0])
    fisher = R.fisher_blocks(net, x, y, LOSS, FisherType.EXACT)
    ggn = R.ggn_sample_blocks(net, x, y, LOSS)
    ea = R.ea_blocks(net, x, y, LOSS, lambda h: h, None, JacobianAverage.PER_SAMPLE)
    kfra = R.ea_step_blocks(net, x, y, LOSS)
    inputs = [h for h, _ in _layer_io(net, x)]
    for t, (f, g, e, blk, h) in enumerate(zip(fisher, ggn, ea, kfra, inputs, strict=True)):
        _close(g.bias, f)
        _close(blk, e)
        ht = torch.cat([h, torch.ones(len(h), 1, dtype=DT)], 1)
        for approx in ("expand", "reduce"):
            a, gg = R.kfac_reference(net, x, y, LOSS, "exact", approx)[t]
            _close(gg, f)
            _close(a, ht.T @ ht / len(h))


@pytest.mark.parametrize("name", ["stride_pad", "two_convs", "avgpool_nobias", "same_even"])
def test_reduce_g_is_the_exact_bias_block_and_expand_is_not(name: str) -> None:
    """The reduce G of the exact Fisher is the bias (offset) block of the GGN (CE: Fisher = GGN);
    the expand G differs at a conv (the positions' gradients are correlated: KFC's SUD fails)."""
    net, (x, y) = _net(name), _data()
    red = R.kfac_reference(net, x, y, LOSS, "exact", "reduce")
    exp = R.kfac_reference(net, x, y, LOSS, "exact", "expand")
    for (_, g_red), (_, g_exp), ggn, m in zip(red, exp, _ref(name, "ggn"), _layers(net), strict=True):
        _close(g_red, ggn.bias)
        if isinstance(m, nn.Conv2d):
            assert (g_exp - g_red).abs().max() > 1e-6


def test_reference_errors_name_the_fix() -> None:
    net, (x, y) = _net("stride_pad"), _data()
    with pytest.raises(ValueError, match="mode='max'; use 'abs' or 'clip'"):
        R.pch_sample_blocks(net, x, y, LOSS, "max")
    with pytest.raises(ValueError, match="fisher='mc' needs the sampled labels"):
        R.kfac_reference(net, x, y, LOSS, "mc")
    with pytest.raises(ValueError, match="approx='both'; use 'expand' or 'reduce'"):
        R.kfac_reference(net, x, y, LOSS, "exact", "both")


# --- BackPACK -----------------------------------------------------------------------------------


def _backpack(net: nn.Module, x: torch.Tensor, y: torch.Tensor, ext) -> nn.Module:
    """Run BackPACK extension ``ext`` on a deep copy of ``net`` (mean cross-entropy); return the copy."""
    backpack = pytest.importorskip("backpack", reason="backpack-for-pytorch is a dev extra (pip install -e '.[dev]')")
    model = backpack.extend(copy.deepcopy(net))
    lossfn = backpack.extend(nn.CrossEntropyLoss())
    with warnings.catch_warnings(), _float64_default():
        warnings.filterwarnings("ignore", message="Full backward hook")
        with backpack.backpack(ext):
            lossfn(model(x), y).backward()
    return model


@contextlib.contextmanager
def _float64_default() -> Iterator[None]:
    """BackPACK's MaxPool KFRA and AvgPool products allocate work arrays in the default dtype."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(DT)
    try:
        yield
    finally:
        torch.set_default_dtype(default)


def _form(param: torch.Tensor, field: str) -> torch.Tensor:
    """The block that BackPACK's stored product function ``param.<field>`` multiplies with."""
    n = param.numel()
    with _float64_default():
        return getattr(param, field)(torch.eye(n, dtype=param.dtype).view(n, *param.shape)).reshape(n, n)


def _extensions():
    pytest.importorskip("backpack", reason="backpack-for-pytorch is a dev extra (pip install -e '.[dev]')")
    import backpack.extensions as ext

    return ext


@pytest.fixture
def fixed_pchmp(monkeypatch: pytest.MonkeyPatch) -> None:
    """BackPACK 1.7.1's PCHMP with its residual as HBP Eq. 10 defines it: ``hessian_diagonal`` already
    is σ'' ⊙ g_out, and ``PCHMPBase.modified_residual_mat_prod`` multiplies it by g_out once more."""
    _extensions()
    from backpack.extensions.curvmatprod.pchmp.pchmpbase import PCHMPBase

    def residual_mat_prod(self, ext, module, g_inp, g_out, mat, modify):  # noqa: ANN001, ANN202
        residual = self.modifications[modify](self.derivatives.hessian_diagonal(module, g_inp, g_out))
        return torch.einsum("...,v...->v...", residual, mat)

    monkeypatch.setattr(PCHMPBase, "modified_residual_mat_prod", residual_mat_prod)


@pytest.mark.parametrize("name", NETS)
def test_backpack_ggnmp_equals_the_per_sample_ggn(name: str) -> None:
    net, (x, y) = _net(name), _data()
    peer = _backpack(net, x, y, _extensions().GGNMP())
    for m, ref in zip(_layers(peer), _ref(name, "ggn"), strict=True):
        _close(_form(m.weight, "ggnmp"), ref.weight)
        if m.bias is not None:
            _close(_form(m.bias, "ggnmp"), ref.bias)


@pytest.mark.parametrize("name", ["stride_pad", "two_convs"])
def test_backpack_hmp_equals_the_true_hessian_blocks(name: str) -> None:
    net, (x, y) = _net(name), _data()
    peer = _backpack(net, x, y, _extensions().HMP())
    for m, ref in zip(_layers(peer), _ref(name, "hessian"), strict=True):
        _close(_form(m.weight, "hmp"), ref.weight)
        _close(_form(m.bias, "hmp"), ref.bias)


@pytest.mark.parametrize("mode", ["abs", "clip"])
@pytest.mark.parametrize("name", NETS)
def test_backpack_pchmp_equals_the_per_sample_pch(name: str, mode: str, fixed_pchmp: None) -> None:
    net, (x, y) = _net(name), _data()
    peer = _backpack(net, x, y, _extensions().PCHMP(modify=mode))
    for m, ref in zip(_layers(peer), _ref(name, mode), strict=True):
        _close(_form(m.weight, "pchmp"), ref.weight)
        if m.bias is not None:
            _close(_form(m.bias, "pchmp"), ref.bias)


def test_backpack_pchmp_as_shipped_squares_the_output_gradient() -> None:
    """Without the fix PCHMP agrees where no step has a residual (ReLU) and not where one has: if the
    second assertion fails, BackPACK has fixed PCHMP and the ``fixed_pchmp`` patch can go."""
    ext = _extensions()
    for name, equal in (("relu_maxpool", True), ("stride_pad", False)):
        net, (x, y) = _net(name), _data()
        peer = _backpack(net, x, y, ext.PCHMP(modify="abs"))
        got, want = _form(_layers(peer)[0].weight, "pchmp"), _ref(name, "abs")[0].weight
        assert torch.allclose(got, want, rtol=1e-9, atol=1e-13) is equal, name


@pytest.mark.parametrize("name", NETS)
def test_backpack_kflr_kfac_kfra_factors(name: str) -> None:
    """KFLR: G = reduce G of the exact Fisher, A = L·A_expand (no ones row); KFAC(M) with BackPACK's own
    labels (drawn from the global generator, reproduced here): G = the reduce G of those labels; KFRA:
    G = the position sums of KFRA's batch-averaged recursion. BackPACK puts no 1/L on either factor."""
    ext = _extensions()
    net, (x, y) = _net(name), _data()
    n_pos = _positions(net, x)
    exact_red = R.kfac_reference(net, x, y, LOSS, "exact", "reduce", bias=False)
    exact_exp = R.kfac_reference(net, x, y, LOSS, "exact", "expand", bias=False)
    kflr = _backpack(net, x, y, ext.KFLR())
    torch.manual_seed(11)
    kfac = _backpack(net, x, y, ext.KFAC(mc_samples=3))
    torch.manual_seed(11)  # the forward pass draws nothing: the same labels from the same probabilities
    labels = torch.distributions.Categorical(logits=net(x).detach()).sample(torch.Size([3]))  # (M, b)
    mc_red = R.kfac_reference(net, x, y, LOSS, "mc", "reduce", labels=labels, bias=False)
    kfra = _backpack(net, x, y, ext.KFRA())
    for t, peers in enumerate(zip(_layers(kflr), _layers(kfac), _layers(kfra), strict=True)):
        a = exact_exp[t][0] * n_pos[t]
        c = peers[0].weight.shape[0]
        g_kfra = _ref(name, "kfra")[t].view(c, n_pos[t], c, n_pos[t]).sum((1, 3))
        for m, field, g in zip(peers, ("kflr", "kfac", "kfra"), (exact_red[t][1], mc_red[t][1], g_kfra)):
            g_bp, a_bp = getattr(m.weight, field)
            _close(g_bp, g)
            _close(a_bp, a)
            if m.bias is not None:
                _close(getattr(m.bias, field)[0], g)
    assert (mc_red[0][1] - exact_red[0][1]).abs().max() > 1e-6  # MC with 3 labels is not the expectation


# --- curvlinops ---------------------------------------------------------------------------------


@pytest.mark.parametrize("joint", [False, True])
@pytest.mark.parametrize("approx", ["expand", "reduce"])
@pytest.mark.parametrize("fisher", ["type-2", "empirical"])
@pytest.mark.parametrize("name", ["stride_pad", "two_convs", "avgpool_nobias"])
def test_curvlinops_kfac_factors_equal_the_reference(name: str, fisher: str, approx: str, joint: bool) -> None:
    """curvlinops 3.0's ``KFACLinearOperator`` (``type-2`` = the exact Fisher) keeps the factors in private
    fields, per layer name; ``separate_weight_and_bias=False`` is the ones row. (It refuses "same"
    padding with an even kernel, "unequal padding", so these nets use odd kernels with "same".)"""
    pytest.importorskip("curvlinops", reason="curvlinops-for-pytorch is a dev extra (pip install -e '.[dev]')")
    from curvlinops import KFACLinearOperator

    net, (x, y) = _net(name), _data()
    op = KFACLinearOperator(
        net, nn.CrossEntropyLoss(), list(net.parameters()), [(x, y)], fisher_type=fisher, kfac_approx=approx,
        separate_weight_and_bias=not joint, check_deterministic=False,
    )
    op.compute_kronecker_factors()
    if not hasattr(op, "_input_covariances"):
        pytest.skip("this curvlinops keeps its factors elsewhere; the test reads 3.0.x's fields")
    kind = "exact" if fisher == "type-2" else "empirical"
    ref = R.kfac_reference(net, x, y, LOSS, kind, approx, bias=joint)
    names = [n for n, m in net.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    for n, (a, g) in zip(names, ref, strict=True):
        _close(op._input_covariances[n], a)
        _close(op._gradient_covariances[n], g)


# --- curvlab's curvature() on conv nets against the references (and so against the peers) -------

KIND_REFS = {"exact": "hessian", "gn": "ggn", "pch1": "abs", "pch2": "clip"}


@pytest.mark.parametrize("kind", KIND_REFS)
@pytest.mark.parametrize(("name", "loss"), [(n, "cross_entropy") for n in NETS + ("same_even",)]
                         + [(n, "nonconvex") for n in ("stride_pad", "two_convs")])
def test_curvlab_bias_blocks_and_block_products_equal_the_references(name: str, loss: str, kind: str) -> None:
    """Per conv and Linear layer: ``bias`` (C_out, C_out) is the reference's offset block (exact: the true
    Hessian; gn: the per-sample GGN; pch1/pch2: the per-sample PCH of BackPACK's PCHMP, fixed), and the
    matrix-free ``block_product`` applies the reference's weight block (and bias block). With the
    nonconvex loss of EA-CG Eq. (14) H_i is indefinite: GN carries it signed, PCH its per-sample Pos-Eig."""
    net, (x, y) = _net(name), _data()
    ours = curvlab.curvature(net, x, y, kind=kind, loss=make_loss(loss), block_products=True)
    gen = torch.Generator().manual_seed(3)
    for blk, ref, m in zip(ours, _ref(name, KIND_REFS[kind], loss), _layers(net), strict=True):
        _close(blk.bias, ref.bias)
        dw = torch.randn(m.weight.shape, generator=gen, dtype=DT)
        w_part, b_part = blk.block_product(dw, None)
        assert b_part is None
        _close(w_part.flatten(), ref.weight @ dw.flatten())
        if m.bias is not None:
            db = torch.randn(m.bias.shape, generator=gen, dtype=DT)
            _, b_part = blk.block_product(torch.zeros_like(dw), db)
            _close(b_part, ref.bias @ db)


@pytest.mark.parametrize("kfac_type", ["expand", "reduce"])
@pytest.mark.parametrize("fisher", ["exact", "empirical"])
@pytest.mark.parametrize("name", ["two_convs", "avgpool_nobias", "same_even"])
def test_curvlab_kronecker_factors_equal_the_kfac_reference(name: str, fisher: str, kfac_type: str) -> None:
    """``kind="fisher"``: ``input_cov`` is the A and ``out_factor`` the G of ``kfac_type`` (the position
    loops of :func:`kfac_reference`, no ones row), ``bias`` is always the reduce G (the exact bias block)."""
    net, (x, y) = _net(name), _data()
    ours = curvlab.curvature(net, x, y, kind="fisher", fisher=fisher, kfac_type=kfac_type, input_cov=True)
    ref = R.kfac_reference(net, x, y, LOSS, fisher, kfac_type, bias=False)
    red = R.kfac_reference(net, x, y, LOSS, fisher, "reduce", bias=False)
    for blk, (a, g), (_, g_red), m in zip(ours, ref, red, _layers(net), strict=True):
        _close(blk.input_cov, a)
        _close(blk.out_factor, g)
        _close(blk.bias, g_red)
        assert blk.weight_shape in (None, tuple(m.weight.shape))


@pytest.mark.parametrize("mc_samples", [1, 3])
def test_curvlab_mc_fisher_equals_the_kfac_reference_with_its_labels(mc_samples: int) -> None:
    """``fisher="mc"``: the labels curvlab draws (``Loss.sample_labels`` with the caller's generator)
    given to the reference: the expand G (``out_factor``) and the reduce G (``bias``) agree."""
    net, (x, y) = _net("two_convs"), _data()
    ours = curvlab.curvature(net, x, y, kind="fisher", fisher="mc", mc_samples=mc_samples, kfac_type="expand",
                             input_cov=True, generator=torch.Generator().manual_seed(4))
    labels = LOSS.sample_labels(net(x).detach(), mc_samples, torch.Generator().manual_seed(4))  # (M, b)
    exp = R.kfac_reference(net, x, y, LOSS, "mc", "expand", labels=labels, bias=False)
    red = R.kfac_reference(net, x, y, LOSS, "mc", "reduce", labels=labels, bias=False)
    for blk, (a, g), (_, g_red) in zip(ours, exp, red, strict=True):
        _close(blk.input_cov, a)
        _close(blk.out_factor, g)
        _close(blk.bias, g_red)


def test_curvlab_kflr_factors_equal_backpack_directly() -> None:
    """The same check without the reference in between: BackPACK's KFLR G is curvlab's exact-Fisher
    ``bias``; its A is L times curvlab's expand ``input_cov`` (BackPACK has no 1/L)."""
    net, (x, y) = _net("two_convs"), _data()
    peer = _backpack(net, x, y, _extensions().KFLR())
    ours = curvlab.curvature(net, x, y, kind="fisher", fisher="exact", kfac_type="expand", input_cov=True)
    for m, blk, n_pos in zip(_layers(peer), ours, _positions(net, x), strict=True):
        g_bp, a_bp = m.weight.kflr
        _close(blk.bias, g_bp)
        _close(blk.input_cov * n_pos, a_bp)
