import numpy as np
import pytest
import torch

from kws_export.config import CRNNConfig
from kws_export.errors import KWSError
from kws_export.model import CRNN
from training import macs
from training.metrics import (
    au_fa_fr,
    choose_stream_threshold,
    detect_events,
    frr_at_far,
    score_events,
    streaming_metrics,
)


# The DLA seminar's reference implementation, verbatim apart from np.trapz's new name.
def count_FA_FR(preds, labels):
    FA = torch.sum(preds[labels == 0])
    FR = torch.sum(labels[preds == 0])
    return FA.item() / torch.numel(preds), FR.item() / torch.numel(preds)


def seminar_au_fa_fr(probs, labels):
    sorted_probs, _ = torch.sort(probs)
    sorted_probs = torch.cat((torch.Tensor([0]), sorted_probs, torch.Tensor([1])))
    FAs, FRs = [], []
    for prob in sorted_probs:
        preds = (probs >= prob) * 1
        FA, FR = count_FA_FR(preds, labels)
        FAs.append(FA)
        FRs.append(FR)
    return -np.trapezoid(FRs, x=FAs)


@pytest.mark.parametrize("seed", range(12))
def test_au_fa_fr_matches_seminar_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(2, 400, (1,), generator=g))
    labels = (torch.rand(n, generator=g) < 0.3).long()
    if seed % 3 == 0:  # heavy ties: few distinct values, some exactly 0 and 1
        probs = torch.randint(0, 6, (n,), generator=g).float() / 5
    elif seed % 3 == 1:  # informative scores
        probs = torch.sigmoid(torch.randn(n, generator=g) + 2.0 * labels)
    else:
        probs = torch.rand(n, generator=g)
    ours = au_fa_fr(probs, labels)
    ref = seminar_au_fa_fr(probs, labels)
    assert ours == pytest.approx(ref, abs=1e-12)


def test_au_fa_fr_edge_cases():
    labels = torch.tensor([0, 0, 1, 1])
    assert au_fa_fr(torch.tensor([0.1, 0.2, 0.8, 0.9]), labels) == 0.0  # perfectly separated
    worst = au_fa_fr(torch.tensor([0.9, 0.8, 0.2, 0.1]), labels)
    assert worst == pytest.approx(seminar_au_fa_fr(torch.tensor([0.9, 0.8, 0.2, 0.1]), labels))
    assert worst > 0.2
    # all tied: one point at the tie, area of the seminar's three-point curve
    tied = torch.full((4,), 0.5)
    assert au_fa_fr(tied, labels) == pytest.approx(seminar_au_fa_fr(tied, labels))
    # single-class inputs are allowed, as in the seminar
    assert au_fa_fr(torch.tensor([0.3, 0.7]), torch.tensor([1, 1])) == pytest.approx(
        seminar_au_fa_fr(torch.tensor([0.3, 0.7]), torch.tensor([1, 1]))
    )
    # list of per-batch tensors, as the seminar's validation loop collects them
    assert au_fa_fr([torch.tensor([0.1, 0.2]), torch.tensor([0.8, 0.9])], [torch.tensor([0, 0]), torch.tensor([1, 1])]) == 0.0


def test_au_fa_fr_handles_a_large_set():
    # A million clips: an O(N^2) pairwise count would never finish (speed itself is a benchmark's
    # business, not a test's).
    rng = np.random.default_rng(0)
    labels = rng.random(1_000_000) < 0.1
    probs = np.clip(rng.normal(0.3 + 0.4 * labels, 0.2), 0, 1)
    value = au_fa_fr(probs, labels.astype(int))
    assert 0.0 < value < 0.1


def test_au_fa_fr_refuses_bad_input():
    with pytest.raises(KWSError):
        au_fa_fr([0.1, 0.2], [0, 1, 1])
    with pytest.raises(KWSError):
        au_fa_fr([0.1, float("nan")], [0, 1])
    with pytest.raises(KWSError):
        au_fa_fr([0.1, 0.2], [0, 2])
    with pytest.raises(KWSError):
        au_fa_fr([], [])


def brute_frr_at_far(probs, labels, far):
    best = None
    for t in sorted(set(probs.tolist())) + [np.inf]:
        fa = np.mean(probs[labels == 0] >= t)
        if fa <= far:
            frr = np.mean(probs[labels == 1] < t)
            return frr, t
    return best


@pytest.mark.parametrize("seed", range(6))
def test_frr_at_far_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = 300
    labels = (rng.random(n) < 0.4).astype(int)
    probs = np.round(np.clip(rng.normal(0.3 + 0.4 * labels, 0.25), 0, 1), 2)  # ties on purpose
    for far in (0.0, 0.01, 0.05, 0.2):
        frr, t = frr_at_far(probs, labels, far)
        ref_frr, ref_t = brute_frr_at_far(probs, labels, far)
        assert frr == pytest.approx(ref_frr)
        assert np.mean(probs[labels == 0] >= t) <= far
        if np.isfinite(ref_t):
            assert t == pytest.approx(ref_t)


def test_streaming_events_refractory_and_matching():
    step = 0.08
    probs = np.zeros(200)
    probs[20:26] = 0.9  # one keyword: six steps above threshold -> one event (refractory)
    probs[100] = 0.95  # an alarm far from any keyword
    probs[150] = 0.7
    probs[165] = 0.7  # 1.2 s later: a second event inside the same keyword span -> duplicate
    events = detect_events(probs, step, 0.5, refractory_s=1.0)
    assert events == pytest.approx([21 * step, 101 * step, 151 * step, 166 * step])
    spans = [(1.2, 1.7), (11.5, 12.3), (14.0, 14.5)]
    score = score_events(events, spans, duration_s=200 * step, threshold=0.5, tolerance_s=1.0)
    assert score.hits == 2 and score.keywords == 3
    assert score.recall == pytest.approx(2 / 3)
    assert score.false_alarms == 1 and score.duplicate_detections == 1
    assert score.false_alarms_per_hour == pytest.approx(1 / (16 / 3600))
    same = streaming_metrics(probs, spans, step, 0.5, refractory_s=1.0, tolerance_s=1.0)
    assert same == score


def test_choose_stream_threshold_prefers_clean_plateau():
    step = 0.08
    rng = np.random.default_rng(1)
    probs = rng.uniform(0, 0.3, 2000)  # background up to 0.3
    spans = []
    for k in range(10):
        i = 100 + 180 * k
        probs[i : i + 4] = 0.8  # keywords reach 0.8
        spans.append((i * step - 0.5, i * step))
    t, score = choose_stream_threshold(probs, spans, step)
    assert 0.3 <= t < 0.8
    assert score.recall == 1.0 and score.false_alarms == 0


def test_macs_and_sizes_of_the_seminar_model():
    model = CRNN(CRNNConfig())
    costs = macs.model_costs(model)
    assert costs["params"] == 70443
    assert costs["fp32_bytes"] == 4 * 70443
    # conv column 8*18*5*20, GRU 3*64*(144+64) + 3*64*128 (+3*64 per layer elementwise),
    # energy 64*64+64, weighted sum 11*64, classifier 64*2; 12.5 steps/s
    per_step = 14400 + (39936 + 24576 + 2 * 192) + (4160 + 704) + 128
    assert costs["macs_per_step_network"]["total"] == per_step
    assert costs["macs_per_second_network"] == pytest.approx(per_step * 12.5)
    # dense DFT frontend per frame: 400 + 2*201*400 + 2*201 + 201*40 at 100 frames/s
    assert costs["macs_per_second_frontend"] == pytest.approx((400 + 160800 + 402 + 8040) * 100)
    # int8: one byte per value + 5 bytes per output channel of each matrix, 5 per vector
    n_vectors = sum(1 for p in model.parameters() if p.dim() == 1)
    rows = sum(p.shape[0] for p in model.parameters() if p.dim() >= 2)
    assert costs["int8_bytes"] == 70443 + 5 * rows + 5 * n_vectors


def test_pruned_model_costs_count_only_nonzero_weights():
    model = CRNN(CRNNConfig(channels=2, hidden=8, gru_layers=1))
    dense = macs.model_costs(model)
    with torch.no_grad():
        model.gru.weight_ih_l0.zero_()
    costs = macs.model_costs(model)
    assert costs["weight_density"]["gru"] < 1.0
    assert costs["macs_per_second_network_sparse"] < dense["macs_per_second_network"]
    assert costs["sparse_fp32_bytes"] < dense["fp32_bytes"]


def test_export_frontend_is_cheaper_than_the_dense_dft():
    config = CRNNConfig()
    export = macs.export_frontend_macs_per_second(config)
    assert export is not None and 0 < export < macs.frontend_macs_per_second(config) / 2
    assert macs.model_costs(CRNN(config))["macs_per_second_frontend_export"] == export
