"""Every metrics sink works offline (console, metrics.jsonl, wandb, tensorboard), and the plot
renders every panel for one run and for several overlaid."""

import json
import os

import pytest

from rlreason.tracking import RunLog

PHASES = ["sample", "generate", "score", "logprobs", "advantages", "update", "sync", "log", "eval", "checkpoint"]


def fake_rows(steps, scale=1.0):
    rows = []
    for s in range(1, steps + 1):
        row = {"step": s, "reward/mean": scale * s / steps, "correct/mean": 0.5 * s / steps,
               "response_length/mean": 40 - s, "kl": 0.001 * s, "entropy": 1.0 - 0.01 * s,
               "rollout/tokens_per_s": 500 + 10 * s}
        row.update({f"time/{p}": 0.1 * (i + 1) for i, p in enumerate(PHASES)})
        row["time/step"] = sum(row[f"time/{p}"] for p in PHASES)
        if s % 5 == 0:
            row["eval/pass@1"] = 0.4 * s / steps
        rows.append(row)
    return rows


def test_all_sinks_write_offline(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    log = RunLog(str(tmp_path), "trainer:\n  seed: 0\n", ["console", "jsonl", "wandb", "tensorboard"], 3,
                 progress=False)
    for row in fake_rows(3):
        log.log_step(row.pop("step"), row)
    log.close()
    # jsonl
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[2]["reward/mean"] == 1.0
    # console
    assert "step 3: reward/mean=1" in capsys.readouterr().out
    # tensorboard: the scalars can be read back
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [e.value for e in acc.Scalars("reward/mean")] == pytest.approx([1 / 3, 2 / 3, 1.0])
    # wandb: an offline run with its history on disk
    runs = [d for d in os.listdir(tmp_path / "wandb") if d.startswith("offline-run-")]
    assert runs, os.listdir(tmp_path / "wandb")
    files = os.listdir(tmp_path / "wandb" / runs[0])
    wandb_file = [f for f in files if f.endswith(".wandb")]
    assert wandb_file and os.path.getsize(tmp_path / "wandb" / runs[0] / wandb_file[0]) > 0


def test_console_progress_bar(tmp_path, capsys):
    log = RunLog(str(tmp_path), "", ["console"], 2, progress=True)
    assert "rl:" not in capsys.readouterr().err  # no RL bar during set-up and warm-up
    for k in (1, 2, 3):
        log.warmup_progress(k, 3, loss=1.0 / k)
    err = capsys.readouterr().err
    assert "warm-up:" in err and "3/3" in err and "loss=0.3333" in err and "rl:" not in err
    log.start_rl(1)
    for row in fake_rows(2):
        log.log_step(row.pop("step"), row)
    log.close()
    err = capsys.readouterr().err
    assert "rl:" in err and "2/2" in err and "reward=" in err and "warm-up" not in err
    assert not (tmp_path / "metrics.jsonl").exists()  # jsonl not selected


def test_a_resumed_run_bar_starts_at_the_checkpoint(tmp_path, capsys):
    log = RunLog(str(tmp_path), "", ["console"], 5, progress=True)
    log.start_rl(4)  # resumed from step 3
    log.log_step(4, {"reward/mean": 1.0})
    log.close()
    assert "4/5" in capsys.readouterr().err


def write_run(path, rows):
    os.makedirs(path)
    with open(os.path.join(path, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return str(path)


@pytest.mark.parametrize("runs", [1, 2])
def test_plot_renders_every_panel(tmp_path, runs):
    import matplotlib.image as mpimg

    from rlreason.plot import plot_runs

    dirs = [write_run(tmp_path / f"run{i}", fake_rows(40, scale=1 + i)) for i in range(runs)]
    for i, d in enumerate(dirs):
        with open(os.path.join(d, "warmup.jsonl"), "w") as f:
            f.writelines(json.dumps({"sft_step": k, "loss": (3.0 + i) / k}) + "\n" for k in range(1, 50))
    out = plot_runs(dirs, str(tmp_path / "out.png"))
    img = mpimg.imread(out)
    assert img.shape[0] > 1200 and img.shape[1] > 1800
    # every one of the 9 cells has ink: split the image into the 3x3 grid, none is plain white
    h, w = img.shape[0] // 3, img.shape[1] // 3
    for r in range(3):
        for c in range(3):
            cell = img[r * h:(r + 1) * h, c * w:(c + 1) * w, :3]
            assert cell.std() > 0.05, (r, c)


def test_plot_names_a_missing_metric(tmp_path):
    from rlreason.plot import plot_runs, read_run

    d = write_run(tmp_path / "bare", [{"step": 1, "reward/mean": 0.1, "time/step": 1.0, "time/generate": 1.0}])
    assert read_run(d)[0]["step"] == 1
    out = plot_runs([d], str(tmp_path / "bare.png"))  # panels without data say so instead of failing
    assert os.path.getsize(out) > 10_000
    import matplotlib.pyplot as plt

    from rlreason.plot import _panel

    fig, ax = plt.subplots()
    _panel(ax, {"bare": read_run(d)}, {"bare": "k"}, "KL to reference", "kl", "KL")
    assert [t.get_text() for t in ax.texts] == ["'kl' not logged"]
    plt.close(fig)
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        plot_runs([str(tmp_path)], str(tmp_path / "x.png"))


def test_phase_colours_are_distinct_and_the_summary_time_is_the_mean(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rlreason.plot import PHASES, _legend_panel, phase_colors

    colours = phase_colors(len(PHASES))
    assert len(set(colours)) == len(PHASES)
    fig, ax = plt.subplots()
    rows = [{"step": 1, "time/step": 1.0}, {"step": 2, "time/step": 2.0}, {"step": 3, "time/step": 9.0}]
    _legend_panel(ax, {"run": rows}, {"run": "k"}, ax)
    texts = " ".join(t.get_text() for t in ax.texts)
    assert "s/step (mean): 4" in texts and "9" not in texts.split("s/step")[1]
    plt.close(fig)
