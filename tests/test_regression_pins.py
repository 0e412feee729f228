"""The numbers of small variants of every research line, pinned.

Computed once (``python tests/pins.py``) before the framework was reorganised around
composable constraints; the reorganised code must reproduce them for the same seeds.
Accuracies, densities and counts are exact; losses and calibration within float noise.
"""

from __future__ import annotations

import pytest

from pins import CASES, run_case

PINS: dict[str, dict[str, float]] = {
    'train-dense': {
        'pin-train:test_acc': 0.546875,
        'pin-train:test_loss': 1.1370441913604736,
        'pin-train:train_acc': 0.69140625,
        'pin-train:val_acc': 0.421875,
        'pin-train:density': 1.0,
        'pin-train:train_flops': 10183680.0,
    },
    'train-snip': {
        'pin-train:test_acc': 0.4375,
        'pin-train:test_loss': 1.2950434684753418,
        'pin-train:train_acc': 0.51953125,
        'pin-train:val_acc': 0.359375,
        'pin-train:density': 0.3000919117647059,
        'pin-train:train_flops': 3165696.0,
    },
    'train-gradual': {
        'pin-train:test_acc': 0.53125,
        'pin-train:test_loss': 1.2061017751693726,
        'pin-train:train_acc': 0.6015625,
        'pin-train:val_acc': 0.375,
        'pin-train:density': 0.3000919117647059,
        'pin-train:train_flops': 4536000.0,
    },
    'train-static': {
        'pin-train:test_acc': 0.484375,
        'pin-train:test_loss': 1.3187178373336792,
        'pin-train:train_acc': 0.51171875,
        'pin-train:val_acc': 0.359375,
        'pin-train:density': 0.3000919117647059,
        'pin-train:train_flops': 3165696.0,
    },
    'train-set': {
        'pin-train:test_acc': 0.453125,
        'pin-train:test_loss': 1.3194074630737305,
        'pin-train:train_acc': 0.50390625,
        'pin-train:val_acc': 0.375,
        'pin-train:density': 0.28630514705882354,
        'pin-train:train_flops': 3165696.0,
    },
    'train-rigl': {
        'pin-train:test_acc': 0.46875,
        'pin-train:test_loss': 1.314387321472168,
        'pin-train:train_acc': 0.51171875,
        'pin-train:val_acc': 0.359375,
        'pin-train:density': 0.28630514705882354,
        'pin-train:train_flops': 3165696.0,
    },
    'lottery': {
        'pin-lottery/level-00:test_acc': 0.53125,
        'pin-lottery/level-00:test_loss': 1.03754460811615,
        'pin-lottery/level-00:density': 1.0,
        'pin-lottery/level-00:train_flops': 12729600.0,
        'pin-lottery/level-01:test_acc': 0.5546875,
        'pin-lottery/level-01:test_loss': 1.0018119812011719,
        'pin-lottery/level-01:density': 0.5,
        'pin-lottery/level-01:train_flops': 6462720.0,
        'pin-lottery/level-02:test_acc': 0.5703125,
        'pin-lottery/level-02:test_loss': 1.0223734378814697,
        'pin-lottery/level-02:density': 0.25,
        'pin-lottery/level-02:train_flops': 3329280.0,
        'pin-lottery:final_test_acc': 0.5703125,
        'pin-lottery:train_flops': 22521600.0,
        'pin-lottery:level0:test_acc': 0.53125,
        'pin-lottery:level0:density': 1.0,
        'pin-lottery:level1:test_acc': 0.5546875,
        'pin-lottery:level1:density': 0.5,
        'pin-lottery:level2:test_acc': 0.5703125,
        'pin-lottery:level2:density': 0.25,
    },
    'anytime': {
        'pin-anytime/strategy-app:final_test_acc': 0.390625,
        'pin-anytime/strategy-app:cer_count': 250.0,
        'pin-anytime/strategy-app:final_density_measured': 0.3663663663663664,
        'pin-anytime/strategy-app:final_gap_train_test': 0.010071864111498241,
        'pin-anytime/strategy-dense:final_test_acc': 0.6015625,
        'pin-anytime/strategy-dense:cer_count': 228.0,
        'pin-anytime/strategy-dense:final_density_measured': 1.0,
        'pin-anytime/strategy-dense:final_gap_train_test': 0.046521123693379796,
        'pin-anytime/strategy-gmp:final_test_acc': 0.4140625,
        'pin-anytime/strategy-gmp:cer_count': 252.0,
        'pin-anytime/strategy-gmp:final_density_measured': 0.3663663663663664,
        'pin-anytime/strategy-gmp:final_gap_train_test': -0.020334277003484336,
        'pin-anytime/strategy-osp:final_test_acc': 0.4140625,
        'pin-anytime/strategy-osp:cer_count': 246.0,
        'pin-anytime/strategy-osp:final_density_measured': 0.3663663663663664,
        'pin-anytime/strategy-osp:final_gap_train_test': 0.011024608013937287,
    },
    'transfer': {
        'pin-transfer/source:source_test_acc': 0.703125,
        'pin-transfer/source:source_test_ece': 0.12234614691920126,
        'pin-transfer:source_test_acc': 0.703125,
        'pin-transfer:source_test_ece': 0.12234614691920126,
        'pin-transfer/transfer/dense/ft-3shot-seed0:val_acc': 0.3333333333333333,
        'pin-transfer/transfer/dense/ft-3shot-seed0:density': 1.0,
        'pin-transfer/transfer/dense/ft-3shot-seed0:acc': 0.3333333333333333,
        'pin-transfer/transfer/dense/ft-3shot-seed0:ece': 0.24224074665539674,
        'pin-transfer/transfer/dense/ft-full-seed0:val_acc': 0.5555555555555556,
        'pin-transfer/transfer/dense/ft-full-seed0:density': 1.0,
        'pin-transfer/transfer/dense/ft-full-seed0:acc': 0.6,
        'pin-transfer/transfer/dense/ft-full-seed0:ece': 0.12380762542328458,
        'pin-transfer/transfer/dense/lp-3shot-seed0:val_acc': 0.8888888888888888,
        'pin-transfer/transfer/dense/lp-3shot-seed0:density': 1.0,
        'pin-transfer/transfer/dense/lp-3shot-seed0:acc': 0.6166666666666667,
        'pin-transfer/transfer/dense/lp-3shot-seed0:ece': 0.11787223033661105,
        'pin-transfer/transfer/dense/lp-full-seed0:val_acc': 0.8888888888888888,
        'pin-transfer/transfer/dense/lp-full-seed0:density': 1.0,
        'pin-transfer/transfer/dense/lp-full-seed0:acc': 0.6,
        'pin-transfer/transfer/dense/lp-full-seed0:ece': 0.0676783883288303,
        'pin-transfer/transfer/dense/vp-ilm-3shot-seed0:val_acc': 0.6666666666666666,
        'pin-transfer/transfer/dense/vp-ilm-3shot-seed0:density': 1.0,
        'pin-transfer/transfer/dense/vp-ilm-3shot-seed0:acc': 0.5833333333333334,
        'pin-transfer/transfer/dense/vp-ilm-3shot-seed0:ece': 0.18151268083093233,
        'pin-transfer/transfer/dense/vp-ilm-full-seed0:val_acc': 0.6666666666666666,
        'pin-transfer/transfer/dense/vp-ilm-full-seed0:density': 1.0,
        'pin-transfer/transfer/dense/vp-ilm-full-seed0:acc': 0.6333333333333333,
        'pin-transfer/transfer/dense/vp-ilm-full-seed0:ece': 0.14159631814952342,
        'pin-transfer/transfer/omp-0.5/ft-3shot-seed0:val_acc': 0.3333333333333333,
        'pin-transfer/transfer/omp-0.5/ft-3shot-seed0:density': 0.5,
        'pin-transfer/transfer/omp-0.5/ft-3shot-seed0:acc': 0.3333333333333333,
        'pin-transfer/transfer/omp-0.5/ft-3shot-seed0:ece': 0.24441363356412824,
        'pin-transfer/transfer/omp-0.5/ft-full-seed0:val_acc': 0.5555555555555556,
        'pin-transfer/transfer/omp-0.5/ft-full-seed0:density': 0.5,
        'pin-transfer/transfer/omp-0.5/ft-full-seed0:acc': 0.5833333333333334,
        'pin-transfer/transfer/omp-0.5/ft-full-seed0:ece': 0.11970238238480904,
        'pin-transfer/transfer/omp-0.5/lp-3shot-seed0:val_acc': 0.7777777777777778,
        'pin-transfer/transfer/omp-0.5/lp-3shot-seed0:density': 0.5,
        'pin-transfer/transfer/omp-0.5/lp-3shot-seed0:acc': 0.5666666666666667,
        'pin-transfer/transfer/omp-0.5/lp-3shot-seed0:ece': 0.12949208302191761,
        'pin-transfer/transfer/omp-0.5/lp-full-seed0:val_acc': 0.8888888888888888,
        'pin-transfer/transfer/omp-0.5/lp-full-seed0:density': 0.5,
        'pin-transfer/transfer/omp-0.5/lp-full-seed0:acc': 0.6166666666666667,
        'pin-transfer/transfer/omp-0.5/lp-full-seed0:ece': 0.08790623655029135,
        'pin-transfer/transfer/omp-0.5/vp-ilm-3shot-seed0:val_acc': 0.6666666666666666,
        'pin-transfer/transfer/omp-0.5/vp-ilm-3shot-seed0:density': 0.5,
        'pin-transfer/transfer/omp-0.5/vp-ilm-3shot-seed0:acc': 0.5833333333333334,
        'pin-transfer/transfer/omp-0.5/vp-ilm-3shot-seed0:ece': 0.15895545640857495,
        'pin-transfer/transfer/omp-0.5/vp-ilm-full-seed0:val_acc': 0.6666666666666666,
        'pin-transfer/transfer/omp-0.5/vp-ilm-full-seed0:density': 0.5,
        'pin-transfer/transfer/omp-0.5/vp-ilm-full-seed0:acc': 0.65,
        'pin-transfer/transfer/omp-0.5/vp-ilm-full-seed0:ece': 0.1941653111492286,
        'pin-transfer/transfer/ptq-w8/ft-3shot-seed0:val_acc': 0.3333333333333333,
        'pin-transfer/transfer/ptq-w8/ft-3shot-seed0:density': 0.9937888198757764,
        'pin-transfer/transfer/ptq-w8/ft-3shot-seed0:acc': 0.3333333333333333,
        'pin-transfer/transfer/ptq-w8/ft-3shot-seed0:ece': 0.24292418002097302,
        'pin-transfer/transfer/ptq-w8/ft-full-seed0:val_acc': 0.5555555555555556,
        'pin-transfer/transfer/ptq-w8/ft-full-seed0:density': 0.9937888198757764,
        'pin-transfer/transfer/ptq-w8/ft-full-seed0:acc': 0.6,
        'pin-transfer/transfer/ptq-w8/ft-full-seed0:ece': 0.12142168238004611,
        'pin-transfer/transfer/ptq-w8/lp-3shot-seed0:val_acc': 0.8888888888888888,
        'pin-transfer/transfer/ptq-w8/lp-3shot-seed0:density': 0.9937888198757764,
        'pin-transfer/transfer/ptq-w8/lp-3shot-seed0:acc': 0.6,
        'pin-transfer/transfer/ptq-w8/lp-3shot-seed0:ece': 0.10071842013227125,
        'pin-transfer/transfer/ptq-w8/lp-full-seed0:val_acc': 0.8888888888888888,
        'pin-transfer/transfer/ptq-w8/lp-full-seed0:density': 0.9937888198757764,
        'pin-transfer/transfer/ptq-w8/lp-full-seed0:acc': 0.6,
        'pin-transfer/transfer/ptq-w8/lp-full-seed0:ece': 0.07643414143838857,
        'pin-transfer/transfer/ptq-w8/vp-ilm-3shot-seed0:val_acc': 0.6666666666666666,
        'pin-transfer/transfer/ptq-w8/vp-ilm-3shot-seed0:density': 0.9937888198757764,
        'pin-transfer/transfer/ptq-w8/vp-ilm-3shot-seed0:acc': 0.5833333333333334,
        'pin-transfer/transfer/ptq-w8/vp-ilm-3shot-seed0:ece': 0.15126049075229583,
        'pin-transfer/transfer/ptq-w8/vp-ilm-full-seed0:val_acc': 0.6666666666666666,
        'pin-transfer/transfer/ptq-w8/vp-ilm-full-seed0:density': 0.9937888198757764,
        'pin-transfer/transfer/ptq-w8/vp-ilm-full-seed0:acc': 0.6333333333333333,
        'pin-transfer/transfer/ptq-w8/vp-ilm-full-seed0:ece': 0.14138469428961703,
        'pin-transfer/transfer/qat-w4a4/ft-3shot-seed0:val_acc': 0.3333333333333333,
        'pin-transfer/transfer/qat-w4a4/ft-3shot-seed0:density': 0.7880434782608695,
        'pin-transfer/transfer/qat-w4a4/ft-3shot-seed0:acc': 0.3333333333333333,
        'pin-transfer/transfer/qat-w4a4/ft-3shot-seed0:ece': 0.22183485364123004,
        'pin-transfer/transfer/qat-w4a4/ft-full-seed0:val_acc': 0.4444444444444444,
        'pin-transfer/transfer/qat-w4a4/ft-full-seed0:density': 0.7880434782608695,
        'pin-transfer/transfer/qat-w4a4/ft-full-seed0:acc': 0.5166666666666667,
        'pin-transfer/transfer/qat-w4a4/ft-full-seed0:ece': 0.0730127389782337,
        'pin-transfer/transfer/qat-w4a4/lp-3shot-seed0:val_acc': 0.8888888888888888,
        'pin-transfer/transfer/qat-w4a4/lp-3shot-seed0:density': 0.7880434782608695,
        'pin-transfer/transfer/qat-w4a4/lp-3shot-seed0:acc': 0.6833333333333333,
        'pin-transfer/transfer/qat-w4a4/lp-3shot-seed0:ece': 0.17501270352730422,
        'pin-transfer/transfer/qat-w4a4/lp-full-seed0:val_acc': 0.7777777777777778,
        'pin-transfer/transfer/qat-w4a4/lp-full-seed0:density': 0.7880434782608695,
        'pin-transfer/transfer/qat-w4a4/lp-full-seed0:acc': 0.5833333333333334,
        'pin-transfer/transfer/qat-w4a4/lp-full-seed0:ece': 0.21744403221666986,
        'pin-transfer/transfer/qat-w4a4/vp-ilm-3shot-seed0:val_acc': 0.4444444444444444,
        'pin-transfer/transfer/qat-w4a4/vp-ilm-3shot-seed0:density': 0.7880434782608695,
        'pin-transfer/transfer/qat-w4a4/vp-ilm-3shot-seed0:acc': 0.6,
        'pin-transfer/transfer/qat-w4a4/vp-ilm-3shot-seed0:ece': 0.17901770389185306,
        'pin-transfer/transfer/qat-w4a4/vp-ilm-full-seed0:val_acc': 0.4444444444444444,
        'pin-transfer/transfer/qat-w4a4/vp-ilm-full-seed0:density': 0.7880434782608695,
        'pin-transfer/transfer/qat-w4a4/vp-ilm-full-seed0:acc': 0.6,
        'pin-transfer/transfer/qat-w4a4/vp-ilm-full-seed0:ece': 0.24031990505028636,
        'pin-transfer/variants/dense:density': 1.0,
        'pin-transfer/variants/dense:source_test_acc': 0.703125,
        'pin-transfer/variants/dense:source_test_ece': 0.12234614691920126,
        'pin-transfer/variants/omp-0.5:density': 0.5,
        'pin-transfer/variants/omp-0.5:source_test_acc': 0.765625,
        'pin-transfer/variants/omp-0.5:source_test_ece': 0.18227969678605088,
        'pin-transfer/variants/ptq-w8:density': 0.9937888198757764,
        'pin-transfer/variants/ptq-w8:source_test_acc': 0.703125,
        'pin-transfer/variants/ptq-w8:source_test_ece': 0.12207199427175217,
        'pin-transfer/variants/qat-w4a4:density': 0.7880434782608695,
        'pin-transfer/variants/qat-w4a4:source_test_acc': 0.6875,
        'pin-transfer/variants/qat-w4a4:source_test_ece': 0.11719466123075097,
    },
    'd2sparse': {
        'pin-d2/d2sparse_b1-2_d0.2_s0:test_acc': 0.46875,
        'pin-d2/d2sparse_b1-2_d0.2_s0:test_loss': 1.3362597227096558,
        'pin-d2/d2sparse_b1-2_d0.2_s0:train_acc': 0.5125,
        'pin-d2/d2sparse_b1-2_d0.2_s0:density': 0.19990808823529413,
        'pin-d2/d2sparse_b1-2_d0.2_s0:train_flops': 3601920.0,
        'pin-d2/dense_b1-2_s0:test_acc': 0.6484375,
        'pin-d2/dense_b1-2_s0:test_loss': 1.0960897207260132,
        'pin-d2/dense_b1-2_s0:train_acc': 0.8125,
        'pin-d2/dense_b1-2_s0:density': 1.0,
        'pin-d2/dense_b1-2_s0:train_flops': 8486400.0,
        'pin-d2/imp_b1-2_d0.2_s0/level-00:test_acc': 0.6484375,
        'pin-d2/imp_b1-2_d0.2_s0/level-00:test_loss': 1.0960897207260132,
        'pin-d2/imp_b1-2_d0.2_s0/level-00:density': 1.0,
        'pin-d2/imp_b1-2_d0.2_s0/level-00:train_flops': 8486400.0,
        'pin-d2/imp_b1-2_d0.2_s0/level-01:test_acc': 0.65625,
        'pin-d2/imp_b1-2_d0.2_s0/level-01:test_loss': 1.0413293838500977,
        'pin-d2/imp_b1-2_d0.2_s0/level-01:density': 0.44715073529411764,
        'pin-d2/imp_b1-2_d0.2_s0/level-01:train_flops': 3866880.0,
        'pin-d2/imp_b1-2_d0.2_s0/level-02:test_acc': 0.6328125,
        'pin-d2/imp_b1-2_d0.2_s0/level-02:test_loss': 1.086079478263855,
        'pin-d2/imp_b1-2_d0.2_s0/level-02:density': 0.19990808823529413,
        'pin-d2/imp_b1-2_d0.2_s0/level-02:train_flops': 1800960.0,
        'pin-d2/imp_b1-2_d0.2_s0:final_test_acc': 0.6328125,
        'pin-d2/imp_b1-2_d0.2_s0:train_flops': 14154240.0,
        'pin-d2/imp_b1-2_d0.2_s0:level0:test_acc': 0.6484375,
        'pin-d2/imp_b1-2_d0.2_s0:level0:density': 1.0,
        'pin-d2/imp_b1-2_d0.2_s0:level1:test_acc': 0.65625,
        'pin-d2/imp_b1-2_d0.2_s0:level1:density': 0.44715073529411764,
        'pin-d2/imp_b1-2_d0.2_s0:level2:test_acc': 0.6328125,
        'pin-d2/imp_b1-2_d0.2_s0:level2:density': 0.19990808823529413,
        'pin-d2/rigl_b1-2_d0.2_s0:test_acc': 0.4921875,
        'pin-d2/rigl_b1-2_d0.2_s0:test_loss': 1.320130467414856,
        'pin-d2/rigl_b1-2_d0.2_s0:train_acc': 0.65,
        'pin-d2/rigl_b1-2_d0.2_s0:density': 0.19990808823529413,
        'pin-d2/rigl_b1-2_d0.2_s0:train_flops': 1800960.0,
    },
}

EXACT = ("acc", "density", "cer_count", "flops")


@pytest.mark.parametrize("case", list(CASES))
def test_pinned_numbers_are_reproduced(case, tmp_path):
    got = run_case(case, tmp_path)
    want = PINS[case]
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        exact = any(word in key.rsplit(":", 1)[-1] for word in EXACT)
        tolerance = pytest.approx(value, rel=1e-12, abs=1e-12) if exact else \
            pytest.approx(value, rel=1e-5, abs=1e-7)
        assert got[key] == tolerance, key


def test_a_transfer_source_is_the_model_the_train_method_trains(tmp_path):
    """The transfer line trains its source exactly as a plain training of the same config."""
    import json
    from pathlib import Path

    import torch
    from safetensors.torch import load_file

    from underbudget.config import load_config
    from underbudget.experiment.launch import run_experiment

    transfer = json.loads(json.dumps(CASES["transfer"]))
    plain = {k: v for k, v in transfer.items() if k != "method"}
    plain["method"] = {"name": "train"}
    transfer["method"].update(sparsities=[], quant=[], methods=["lp"], budgets=["3shot"])
    a = Path(run_experiment(load_config(plain), tmp_path / "a", quiet=True))
    b = Path(run_experiment(load_config(transfer), tmp_path / "b", quiet=True))
    trained = load_file(str(a / "artifacts" / "model.safetensors"))
    source = load_file(str(b / "source" / "artifacts" / "model.safetensors"))
    assert trained.keys() == source.keys()
    assert all(torch.equal(trained[k], source[k]) for k in trained)
