"""The Hydra entry points end to end (real subprocesses): outputs, sweeps, kill-and-resume, faults, sharding."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(entry: str, *overrides, cwd=None, env=None, check=True):
    command = [sys.executable, str(ROOT / "experiments" / f"{entry}.py"), *overrides]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=cwd or ROOT,
                            env={**os.environ, **(env or {})})
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="session")
def ci_run(tmp_path_factory):
    """One ``metajax-train preset=ci`` run (a real subprocess), for the tests of what reads a run directory."""
    train_dir = tmp_path_factory.mktemp("ci_run") / "train"
    return train_dir, run("train", "preset=ci", f"hydra.run.dir={train_dir}")


def test_train_evaluate_adapt_end_to_end(ci_run, tmp_path):
    """The three console scripts of a run directory, each a real subprocess: train writes it, evaluate
    reproduces its table, adapt fits a task weight on it."""
    train_dir, result = ci_run
    for name in ("model.eqx", "metrics.json", "results.md", "results.csv", "reconstructions.png", "omega.json",
                 "train_log.jsonl", "run_info.json", "config.yaml", "curves.png"):
        assert (train_dir / name).is_file(), name
    assert len(list((train_dir / "checkpoints").glob("step_*.eqx"))) == 2  # 3 written, the newest 2 kept
    rows = json.loads((train_dir / "metrics.json").read_text())["rows"]
    assert [r["ratio"] for r in rows] == [0.2, 0.4] and all(r["psnr"] > 10 for r in rows)
    assert "loa (penalty)" in result.stdout
    assert "step 0: validation PSNR" in result.stdout

    run("evaluate", "preset=ci", f"model_dir={train_dir}", "eval.figure=false", f"hydra.run.dir={tmp_path / 'e'}")
    again = json.loads((tmp_path / "e" / "metrics.json").read_text())["rows"]
    assert [r["psnr"] for r in again] == pytest.approx([r["psnr"] for r in rows], rel=1e-6)

    run("adapt", "preset=ci", f"adapt.model_dir={train_dir}", "adapt.mode=omega", "tasks.ratios=[0.3]",
        "adapt.images=2", "adapt.steps=3", "eval.figure=false", f"hydra.run.dir={tmp_path / 'a'}")
    methods = [r["method"] for r in json.loads((tmp_path / "a" / "metrics.json").read_text())["rows"]]
    assert methods == ["before adaptation", "adapted (omega, supervised)"]


@pytest.mark.slow
def test_adapt_self_and_finetune_from_a_run(ci_run, tmp_path):
    train_dir, _ = ci_run
    selfsup = tmp_path / "self"
    run("adapt", "preset=ci", f"adapt.model_dir={train_dir}", "tasks.ratios=[0.3]", "adapt.steps=4",
        "adapt.eval_every=2", "adapt.progress=false", f"hydra.run.dir={selfsup}")
    methods = [r["method"] for r in json.loads((selfsup / "metrics.json").read_text())["rows"]]
    assert methods == ["before adaptation", "adapted (self, splitting)"]
    report = json.loads((selfsup / "adaptation.json").read_text())["tasks"][0]
    assert [r["step"] for r in report["curve"] if "heldout" in r] == [0, 2, 4] and report["slices"] == 2
    assert report["best_heldout"] in [r["heldout"] for r in report["curve"] if "heldout" in r]
    finetuned = tmp_path / "finetune"
    run("adapt", "preset=ci", f"adapt.model_dir={train_dir}", "adapt.mode=finetune", "adapt.loss=measurement",
        "adapt.images=2", "adapt.steps=2", "eval.figure=false", f"hydra.run.dir={finetuned}")
    methods = [r["method"] for r in json.loads((finetuned / "metrics.json").read_text())["rows"]]
    assert methods == ["before adaptation"] * 2 + ["adapted (finetune, measurement)"] * 2


def test_baselines_end_to_end(tmp_path):
    run("baselines", "preset=ci", "eval.figure=false", f"hydra.run.dir={tmp_path}")
    result = json.loads((tmp_path / "metrics.json").read_text())
    assert {r["method"] for r in result["rows"]} == {"zero-filled", "TV", "conventional"}
    assert len(result["tv_tuning"]) == 2 and "TV λ per task" in (tmp_path / "results.md").read_text()


def test_config_errors_exit_naming_the_key_before_any_work(tmp_path):
    """DESIGN §3: an unknown key or a wrong type exits non-zero naming the key, before any training (in process:
    tests/console.py; the scripts' own subprocess runs are the end-to-end tests above)."""
    from console import console

    for override, message in (("trainer.steps=abc", "trainer.steps"), ("trainer.stepz=3", "trainer.stepz"),
                              ("data.source=fastmri", "data.path"),
                              ("data.path=/nonexistent.h5", "data.path")):
        extra = ["data.source=fastmri"] if override.startswith("data.path") else []
        result = console("train", "preset=ci", override, *extra, f"hydra.run.dir={tmp_path}")
        assert result.returncode != 0
        assert message in result.stdout + result.stderr, result.stdout + result.stderr
        assert not (tmp_path / "train_log.jsonl").exists()  # failed before any training


@pytest.mark.slow
def test_train_evaluates_an_unseen_mask_family_with_self_adaptation(tmp_path):
    """eval.shift (the README job's): meta-learned and conventional side by side on an unseen family, zero-shot
    and self-adapted."""
    run("train", "preset=ci", "eval.baselines=true", "eval.shift=cartesian", "eval.shift_ratio=0.3",
        "eval.shift_steps=2", "eval.figure=false", f"hydra.run.dir={tmp_path}")
    result = json.loads((tmp_path / "metrics.json").read_text())
    methods = [r["method"] for r in result["shift_rows"]]
    assert methods == ["loa (penalty), zero-shot", "loa (penalty), self-adapted (2 steps)",
                       "conventional, zero-shot", "conventional, self-adapted (2 steps)"]
    assert all(r["label"] == "cartesian 0.3" and np.isfinite(r["psnr"]) for r in result["shift_rows"])
    assert "Unseen mask family (cartesian 0.3; trained on radial)" in (tmp_path / "results.md").read_text()
    bad = run("train", "preset=ci", "eval.shift=spiral", f"hydra.run.dir={tmp_path / 'bad'}", check=False)
    assert bad.returncode != 0 and "eval.shift" in bad.stderr


@pytest.mark.slow
def test_conventional_per_task_trains_one_network_per_task(tmp_path):
    run("train", "preset=ci", "solver=conventional", "solver.per_task=true", "eval.figure=false",
        f"hydra.run.dir={tmp_path}")
    rows = json.loads((tmp_path / "metrics.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["loa (conventional)"] * 2


@pytest.mark.slow
def test_sweep_over_every_solver_writes_one_table(tmp_path):
    solvers = ["penalty", "implicit", "maml", "fomaml", "task_weights", "conventional"]
    run("train", "-m", "preset=ci", f"solver={','.join(solvers)}", "trainer.steps=2", "tasks.ratios=[0.3,0.4]",
        "eval.figure=false", f"hydra.sweep.dir={tmp_path}")
    table = (tmp_path / "sweep_results.md").read_text()
    for solver in solvers:
        assert f"solver={solver}" in table and f"loa ({solver})" in table, table
    assert len(table.splitlines()) == 2 + 2 * len(solvers)  # header + one row per run and task
    assert (tmp_path / "4" / "task_weights.json").is_file()


@pytest.mark.slow
def test_injected_nan_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    result = run("train", "preset=ci", "trainer.inject_nan_at=3", f"hydra.run.dir={tmp_path}", check=False)
    assert result.returncode != 0
    assert "step 3" in result.stderr and "non-finite" in result.stderr, result.stderr
    checkpoints = sorted((tmp_path / "checkpoints").glob("step_*.eqx"))
    assert [p.name for p in checkpoints] == ["step_00000002.eqx"]
    assert not (tmp_path / "model.eqx").exists()
    import equinox as eqx
    import jax
    from omegaconf import OmegaConf

    from metajax.engine.experiment import Experiment

    exp = Experiment(OmegaConf.load(tmp_path / "config.yaml"), ROOT)
    params, state = eqx.tree_deserialise_leaves(checkpoints[0], (exp.params, exp.init_state()))
    assert int(state.step) == 2 and all(bool(jax.numpy.all(jax.numpy.isfinite(a))) for a in jax.tree.leaves(params))


@pytest.mark.slow
def test_sigkill_and_resume_gives_a_byte_identical_model(tmp_path):
    overrides = ["preset=ci", "trainer.steps=300", "trainer.checkpoint_every=5", "eval.figure=false"]
    run("train", *overrides, f"hydra.run.dir={tmp_path / 'straight'}")
    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, str(ROOT / "experiments" / "train.py"), *overrides,
                                f"hydra.run.dir={killed}"], cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not list((killed / "checkpoints").glob("step_*.eqx.sha256")) and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "model.eqx").exists(), "the run finished before it could be killed"
    result = run("train", *overrides, f"hydra.run.dir={killed}")
    assert "resumed from checkpoint" in result.stdout
    step = int(result.stdout.split(" at step ")[1].split()[0])
    assert 0 < step < 300
    assert (killed / "model.eqx").read_bytes() == (tmp_path / "straight" / "model.eqx").read_bytes()


@pytest.mark.slow
def test_two_devices_give_the_same_parameters_as_one(tmp_path):
    """XLA_FLAGS forces two CPU devices in the subprocess; tasks are sharded over them."""
    import equinox as eqx
    import jax
    import numpy as np
    from omegaconf import OmegaConf

    from metajax.engine.experiment import Experiment

    flags = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    for devices in (1, 2):
        run("train", "preset=ci", f"trainer.devices={devices}", "eval.figure=false",
            f"hydra.run.dir={tmp_path / str(devices)}", env=flags)
    exp = Experiment(OmegaConf.load(tmp_path / "1" / "config.yaml"), ROOT)
    like = exp.model(exp.params)
    one, two = (eqx.tree_deserialise_leaves(tmp_path / str(d) / "model.eqx", like) for d in (1, 2))
    for a, b in zip(jax.tree.leaves(eqx.filter(one, eqx.is_inexact_array)),
                    jax.tree.leaves(eqx.filter(two, eqx.is_inexact_array))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=1e-6)
    info = json.loads((tmp_path / "2" / "run_info.json").read_text())
    assert len(info["machine"]["devices"]) == 2


def test_presets_compose_with_the_chosen_groups():
    """A preset never overrides the data a user selects; the default data is the embedded chest set."""
    from hydra import compose, initialize

    from metajax.engine.config import register

    register()
    with initialize(version_base=None):
        quick = compose("run")
        assert (quick.data.source, quick.data.size, list(quick.data.test)) == ("chest", 256, [85, 100])
        assert (quick.tasks.mask, quick.tasks.crop, quick.model.name, quick.solver.name) == (
            "pseudo_radial", 0, "dcnet", "penalty")
        assert quick.eval.baselines and quick.eval.pretrained == "chest_dcnet" and quick.trainer.val_every > 0
        paper = compose("run", overrides=["preset=paper"])
        assert (paper.data.source, paper.tasks.mask, paper.model.name, paper.model.phases) == (
            "chest", "pseudo_radial", "loa_paper", 11)
        assert paper.trainer.stair and paper.trainer.lr == 1e-3 and paper.solver.outer_split == "val"
        assert compose("run", overrides=["preset=paper", "data=template"]).data.source == "template"
        ci = compose("run", overrides=["preset=ci"])
        assert ci.trainer.steps == 6 and ci.data.size == 32 and ci.data.source == "template"
        assert compose("run", overrides=["preset=ci", "data=default", "tasks=pseudo_radial"]).data.source == "chest"
        long = compose("run", overrides=["preset=long"])
        assert (long.solver.name, long.data.source, long.trainer.lr_schedule) == ("joint", "chest", "cosine")


@pytest.mark.slow
def test_validation_is_logged_the_best_model_kept_and_the_baseline_table_reproducible(tmp_path):
    tables = []
    for name in ("a", "b"):
        run("train", "preset=ci", "eval.baselines=true", "eval.figure=false", f"hydra.run.dir={tmp_path / name}")
        result = json.loads((tmp_path / name / "metrics.json").read_text())
        tables.append([(r["method"], r["ratio"], r["psnr"], r["ssim"]) for r in result["rows"]])
    assert tables[0] == tables[1]  # the same command prints the same table (no timing in "same compute")
    assert {m for m, *_ in tables[0]} == {"zero-filled", "TV", "conventional", "loa (penalty)"}
    assert (result["conventional_steps"], result["conventional_batch"]) == (6, 2)
    records = [json.loads(line) for line in (tmp_path / "a" / "train_log.jsonl").read_text().splitlines()]
    validated = [r for r in records if "val_psnr" in r]
    assert [r["step"] for r in validated] == [0, 3, 6] and all(len(r["val_psnr"]) == 2 for r in validated)
    best = json.loads((tmp_path / "a" / "best.json").read_text())
    mean = {r["step"]: sum(r["val_psnr"]) / 2 for r in validated}
    assert best["step"] == max(mean, key=mean.get) and best["psnr"] == pytest.approx(max(mean.values()))


def test_dcnet_validation_psnr_at_step_zero_is_the_zero_filled_psnr():
    import jax.numpy as jnp
    import numpy as np
    from hydra import compose, initialize

    from metajax import metrics
    from metajax.engine.config import register
    from metajax.engine.evaluation import measurements

    register()
    with initialize(version_base=None):
        cfg = compose("run", overrides=["preset=ci", "model=dcnet", "model.features=4", "model.layers=3"])
    exp = Experiment(cfg, ROOT)
    got = np.asarray(exp.validation_fn()(exp.params))
    zero_filled = [float(jnp.mean(metrics.psnr(jnp.abs(op.adjoint(y)), jnp.abs(x))))
                   for op, x, y in measurements(exp.tasks, "val", cfg.trainer.seed)]
    np.testing.assert_allclose(got, zero_filled, atol=1e-3)


from metajax.engine.experiment import Experiment  # noqa: E402


def _pretrained_name():
    from metajax import pretrained

    names = pretrained.available()
    if not names:
        pytest.skip("no pretrained model shipped")
    return names[0]


@pytest.mark.slow
def test_evaluate_and_adapt_a_pretrained_model_on_other_data(tmp_path):
    name = _pretrained_name()
    overrides = ["preset=ci", "data=template", "data.size=64", "tasks=radial", "tasks.ratios=[0.15,0.35]",
                 "eval.figure=false"]
    run("evaluate", *overrides, f"model_dir=pretrained:{name}", f"hydra.run.dir={tmp_path / 'e'}")
    rows = json.loads((tmp_path / "e" / "metrics.json").read_text())["rows"]
    assert [(r["method"], r["ratio"], r["images"]) for r in rows] == [(f"pretrained:{name}", 0.15, 2),
                                                                      (f"pretrained:{name}", 0.35, 2)]
    result = run("adapt", *overrides, f"adapt.model_dir=pretrained:{name}", "adapt.mode=omega", "adapt.images=2",
                 "adapt.steps=2", f"hydra.run.dir={tmp_path / 'a'}")
    assert "adapt task 2/2" in result.stdout and "(step " in result.stdout
    methods = [r["method"] for r in json.loads((tmp_path / "a" / "metrics.json").read_text())["rows"]]
    assert methods == ["before adaptation"] * 2 + ["adapted (omega, supervised)"] * 2
    bad = run("evaluate", "preset=ci", "model_dir=pretrained:nope", f"hydra.run.dir={tmp_path / 'x'}", check=False)
    assert bad.returncode != 0 and "no pretrained model 'nope'" in bad.stderr


def test_reconstruct_a_users_kspace_end_to_end(tmp_path):
    import h5py
    import numpy as np

    from metajax import metrics

    name = _pretrained_name()
    scan, images = _users_scan(tmp_path)
    out = tmp_path / "out"
    result = run_script("metajax.engine.reconstruct", f"input={scan}", f"model=pretrained:{name}",
                        f"hydra.run.dir={out}")
    assert "undersampled retrospectively" in result.stdout and "slices 1–2 of 2" in result.stdout
    assert "self-check: the model predicts held-out k-space within 1.3× of zero-filled and TV" in result.stdout
    with h5py.File(out / "reconstruction.h5", "r") as f:
        recon, zero_filled = f["reconstruction"][()], f["zero_filled"][()]
        assert list(f["method"][()]) == [b"model"] * 2 and not f["self_check/flag"][()].any()
        assert (f["self_check/score"][()] < 1).all()
    assert recon.shape == zero_filled.shape == (2, 256, 256) and (out / "slice_001.png").is_file()
    truth = 3.0 * images
    gain = np.asarray(metrics.psnr(recon, truth)) - np.asarray(metrics.psnr(zero_filled, truth))
    assert np.all(gain > 2.0), gain


def _users_scan(tmp_path):
    """Two fully sampled chest slices at 3× the training scale, with a pseudo-radial mask in the file."""
    import h5py
    import numpy as np

    from metajax import data
    from metajax.operators import fft2c

    images = data.chest_images()[85:87]
    mask = data.pseudo_radial_mask(0.2)
    scan = tmp_path / "scan.h5"
    with h5py.File(scan, "w") as f:  # fully sampled, 3× the training scale: undersampled and rescaled for the model
        f["kspace"] = np.asarray(fft2c(3.0 * images.astype(np.complex64)))
        f["mask"] = mask.astype(np.uint8)
    return scan, images


@pytest.mark.slow
def test_reconstruct_self_adaptation_on_the_files_own_measurements(tmp_path):
    import h5py
    import numpy as np

    from metajax import metrics

    name = _pretrained_name()
    scan, images = _users_scan(tmp_path)
    truth = 3.0 * images
    out = tmp_path / "out"
    run_script("metajax.engine.reconstruct", f"input={scan}", f"model=pretrained:{name}", "png=false", "check=false",
               f"hydra.run.dir={out}")
    with h5py.File(out / "reconstruction.h5", "r") as f:
        recon = f["reconstruction"][()]
    adapted = tmp_path / "adapted"
    result = run_script("metajax.engine.reconstruct", f"input={scan}", f"model=pretrained:{name}", "adapt=self",
                        "adapt_steps=2", "png=false", "check=false", f"hydra.run.dir={adapted}")
    report = json.loads((adapted / "adaptation.json").read_text())
    assert report["slices"] == 2 and report["loss"] == "splitting" and len(report["curve"]) == 3
    assert "adapting to the file's own measurements" in result.stdout
    with h5py.File(adapted / "reconstruction.h5", "r") as f:
        assert f.attrs["model"].endswith("adapted to this file (self)")
        again = np.asarray(metrics.psnr(f["reconstruction"][()], truth))
    if report["best_step"] == 0:  # nothing better on the held-out k-space: the model as it was
        np.testing.assert_allclose(again, np.asarray(metrics.psnr(recon, truth)), atol=1e-3)


def test_reconstruct_rejects_mismatches_before_work(tmp_path):
    import h5py
    import numpy as np

    from console import console

    scan, _ = _users_scan(tmp_path)
    with h5py.File(tmp_path / "multicoil.h5", "w") as f:
        f["kspace"] = np.zeros((1, 4, 8, 8), np.complex64)
    with h5py.File(tmp_path / "masks.h5", "w") as f:
        f["m"] = np.ones((16, 16), np.uint8)
    for args, message in (([f"input={tmp_path / 'multicoil.h5'}"], "auto-calibration"),
                          ([f"input={scan}", f"mask_file={tmp_path / 'masks.h5'}"], "does not match"),
                          ([f"input={tmp_path / 'none.h5'}"], "does not exist"),
                          ([f"input={scan}", "model=pretrained:nope"], "no pretrained model"),
                          ([f"input={scan}", "adapt=yes"], "`adapt` must be none or self")):
        bad = console("reconstruct", *args, f"hydra.run.dir={tmp_path / 'bad'}")
        assert bad.returncode != 0 and message in bad.stderr, bad.stderr[-2000:]
        assert not (tmp_path / "bad" / "reconstruction.h5").exists()


@pytest.mark.slow
def test_reconstruct_flags_an_out_of_domain_model_and_falls_back_to_tv(tmp_path):
    """The previous, radial-only chest_dcnet (tests/data) on a fastMRI 1-D mask: the self-check names the slices,
    fallback=tv replaces them by TV (above zero-filled), fallback=none keeps the model's output (below it)."""
    import h5py
    import numpy as np

    from metajax import data, masks, metrics
    from metajax.operators import fft2c

    images = data.chest_images()[85:87]
    mask = np.asarray(masks.fastmri_random(jax.random.key(0), (256, 256), 4, 0.08))
    scan = tmp_path / "scan.h5"
    with h5py.File(scan, "w") as f:
        f["kspace"] = np.asarray(fft2c(images.astype(np.complex64))) * mask
        f["mask"] = mask[0].astype(np.uint8)  # fastMRI's (W,) column mask
    fixture = Path(__file__).parent / "data" / "radial_only_dcnet"
    psnr = {}
    for fallback in ("tv", "none"):
        out = tmp_path / fallback
        result = run_script("metajax.engine.reconstruct", f"input={scan}", f"model={fixture}", f"fallback={fallback}",
                            "png=false", f"hydra.run.dir={out}")
        assert "warning: out of the model's domain on slice(s) 0, 1" in result.stdout, result.stdout
        with h5py.File(out / "reconstruction.h5", "r") as f:
            assert f["self_check/flag"][()].all() and (f["self_check/score"][()] > 1).all()
            assert list(f["method"][()]) == ([b"tv"] * 2 if fallback == "tv" else [b"model"] * 2)
            psnr[fallback] = np.asarray(metrics.psnr(f["reconstruction"][()], images))
            zero_filled = np.asarray(metrics.psnr(f["zero_filled"][()], images))
    assert np.all(psnr["tv"] > zero_filled + 1) and np.all(psnr["none"] < zero_filled), (psnr, zero_filled)


def run_script(module: str, *overrides, check=True):
    code = f"import sys; from {module} import reconstruct_main; sys.argv = ['metajax-reconstruct', *sys.argv[1:]]; " \
           "reconstruct_main()"
    result = subprocess.run([sys.executable, "-c", code, *overrides], capture_output=True, text=True, timeout=900,
                            cwd=ROOT)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_mixture_tasks_draw_a_fresh_mask_each_step_and_warm_start(tmp_path):
    """tasks.mask=mixture: one task per (family, ratio), labelled in the tables; tasks.bank resamples masks per
    step; trainer.init starts θ and ω from a trained run (mask-aware DCNet: the same reconstructions at step 0)."""
    mixture = ["model=dcnet", "model.phases=2", "model.features=4", "model.layers=3", "solver=joint",
               "tasks.mask=mixture", "tasks.families=[radial,fastmri_random,poisson_disc]",
               "tasks.ratios=[0.25,0.25,0.25]", "tasks.bank=2", "trainer.val_every=3"]
    first = tmp_path / "first"
    run("train", "preset=ci", *mixture, f"hydra.run.dir={first}")
    rows = json.loads((first / "metrics.json").read_text())["rows"]
    assert [r["label"] for r in rows] == ["radial 0.25", "fastmri_random 0.25", "poisson_disc 0.25"]
    assert all(len(r["psnr_images"]) == r["images"] for r in rows)
    second = tmp_path / "second"
    run("train", "preset=ci", *mixture, "model.mask_aware=true", f"trainer.init={first}", "trainer.steps=1",
              f"hydra.run.dir={second}")
    last = [json.loads(line) for line in (first / "train_log.jsonl").read_text().splitlines() if "val_psnr" in line]
    start = [json.loads(line) for line in (second / "train_log.jsonl").read_text().splitlines() if "val_psnr" in line]
    best = json.loads((first / "best.json").read_text())
    assert start[0]["step"] == 0 and "val_psnr" in last[-1]
    np.testing.assert_allclose(start[0]["val_psnr"], best["per_task"], atol=1e-3)
    bad = run("train", "preset=ci", *mixture[:5], "tasks.mask=mixture", "tasks.families=[radial]",
              "tasks.ratios=[0.2,0.3]", f"hydra.run.dir={tmp_path / 'bad'}", check=False)
    assert bad.returncode != 0 and "tasks.families" in bad.stderr


def _multicoil_scan(path, slices=(85, 86), coils=8, header=True):
    """A fastMRI-style multi-coil file of simulated acquisitions (fully sampled) and its RSS references."""
    import h5py

    from metajax import data
    from metajax.data import simulate_multicoil

    sims = [simulate_multicoil(jax.random.key(s), data.chest_images()[s], coils, 30.0) for s in slices]
    with h5py.File(path, "w") as f:
        f["kspace"] = np.stack([np.asarray(s.kspace) for s in sims]).astype(np.complex64) * 1e4  # raw units
        if header:
            f["ismrmrd_header"] = ("<ismrmrdHeader xmlns=\"http://www.ismrm.org/ISMRMRD\"><encoding><reconSpace>"
                                   "<matrixSize><x>200</x><y>180</y><z>1</z></matrixSize></reconSpace></encoding>"
                                   "</ismrmrdHeader>")
    return np.stack([np.asarray(s.target) for s in sims]) * 1e4


@pytest.mark.slow
def test_reconstruct_multicoil_scans_end_to_end(tmp_path):
    """A simulated fastMRI multi-coil file undersampled retrospectively (mask_family=…): ESPIRiT maps, the shipped
    multi-coil model, RSS-scale output above zero-filled RSS on every slice by more than 3 dB (the card's worst
    test slice on fastMRI's masks: +3.3 dB), the self-check, the recon-size crop."""
    import h5py

    from metajax import metrics, pretrained

    if "chest_mc_dcnet" not in pretrained.available():
        pytest.skip("no multi-coil model shipped")
    scan = tmp_path / "mc.h5"
    truth = _multicoil_scan(scan)
    out = tmp_path / "out"
    result = run_script("metajax.engine.reconstruct", f"input={scan}", "mask_family=fastmri_equispaced",
                        "acceleration=4", f"hydra.run.dir={out}")
    assert "espirit maps of slice 2 of 2" in result.stdout and "reconstructed slice 2 of 2" in result.stdout
    assert "undersampled retrospectively" in result.stdout and "pretrained:chest_mc_dcnet" in result.stdout
    with h5py.File(out / "reconstruction.h5", "r") as f:
        recon, zero_filled = f["reconstruction"][()], f["zero_filled"][()]
        assert f["maps"].shape == (2, 8, 256, 256) and f["reconstruction_cropped"].shape == (2, 200, 180)
        assert list(f["method"][()]) == [b"model"] * 2 and not f["self_check/flag"][()].any()
    assert recon.shape == (2, 256, 256) and recon.dtype == np.float32
    gain = np.asarray(metrics.psnr(recon, truth)) - np.asarray(metrics.psnr(zero_filled, truth))
    assert np.all(gain > 3.0), gain


def test_reconstruct_multicoil_rejects_what_does_not_fit_before_work(tmp_path):
    import h5py

    from console import console

    scan = tmp_path / "mc.h5"
    _multicoil_scan(scan, slices=(85,), coils=4, header=False)
    with h5py.File(tmp_path / "no_acs.h5", "w") as f:
        k = np.ones((1, 4, 32, 32), np.complex64)
        k[..., 14:18] = 0
        f["kspace"] = k
    with h5py.File(tmp_path / "masks.h5", "w") as f:
        f["wrong_size"] = np.ones((16, 16), np.uint8)
    with h5py.File(tmp_path / "sparse.h5", "w") as f:
        k = np.zeros((1, 4, 32, 32), np.complex64)
        k[..., 12:20] = 1
        f["kspace"] = k
        f["mask"] = np.ones(32, np.uint8)
    for args, message in (([f"input={tmp_path / 'no_acs.h5'}"], "auto-calibration"),
                          ([f"input={scan}", f"mask_file={tmp_path / 'masks.h5'}"], "does not match"),
                          ([f"input={tmp_path / 'sparse.h5'}"], "not the mask these data were acquired with"),
                          ([f"input={scan}", "mask_family=fastmri_random", "model=pretrained:chest_dcnet"],
                           "trained on single-coil"),
                          ([f"input={scan}", "maps=bart"], "`maps`"),
                          ([f"input={scan}", "mask_family=spiral"], "`mask_family`"),
                          ([f"input={tmp_path}"], "is a directory")):
        bad = console("reconstruct", *args, f"hydra.run.dir={tmp_path / 'bad'}")
        assert bad.returncode != 0 and message in bad.stderr, (args, bad.stderr[-2000:])
        assert "Traceback" not in bad.stderr and not (tmp_path / "bad" / "reconstruction.h5").exists()


@pytest.mark.slow
def test_reconstruct_the_real_multicoil_bart_slice(tmp_path, shared_file):
    """The real 8-coil brain slice (raw units, 2-D Poisson-disc undersampling, no reference): it runs, the output
    keeps the input's size and the RSS scale, and agrees with the measured k-space."""
    import h5py

    from metajax import pretrained
    from metajax.data import kspace_from_cfl, read_cfl
    from metajax.operators import fft2c

    if "chest_mc_dcnet" not in pretrained.available():
        pytest.skip("no multi-coil model shipped")
    path = shared_file("real_multicoil/brain8_poisson_ksp.cfl")
    out = tmp_path / "out"
    result = run_script("metajax.engine.reconstruct", f"input={path}", f"hydra.run.dir={out}")
    assert "the file's non-zero samples" in result.stdout
    kspace = kspace_from_cfl(read_cfl(path))
    with h5py.File(out / "reconstruction.h5", "r") as f:
        recon, maps, mask = f["reconstruction_complex"][0], f["maps"][0], f["mask"][()].astype(bool)
        assert f["reconstruction"].shape == (1, 180, 230) and np.all(np.isfinite(f["reconstruction"][()]))
    predicted = np.asarray(fft2c(maps * recon))
    residual = np.linalg.norm((predicted - kspace)[:, mask]) / np.linalg.norm(kspace[:, mask])
    assert residual < 0.3, residual
    assert (out / "slice_000.png").is_file()
