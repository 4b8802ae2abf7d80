"""MLflow tracking: a real local SQLite store, and a dead server that must not stop training."""
import time

from mlflow import MlflowClient

from pipeline.tracking.mlflow_run import Tracker, flatten, tracking_uri


def test_default_store_is_sqlite_at_repo_root(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert tracking_uri(tmp_path) == "http://tracking.example:5000"


def test_run_lands_in_the_table_experiment(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # artifacts go to ./mlruns
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    t = Tracker("table2-imagenet", "hiri_vit_s@448", {"dvc_stage": "train_hiri_s_448", "git_commit": "abc"}, uri=uri)
    assert t.start() is not None
    t.log_params(flatten({"recipe": {"lr": 0.001, "mix": {"prob": 0.5}}}))
    t.log_metrics({"train_loss": 2.0, "val_top1": 10.0}, step=5)
    t.log_metrics({"train_loss": 1.5, "val_top1": 30.0}, step=10)
    art = tmp_path / "curves.json"
    art.write_text("[]")
    t.log_artifact(art)
    t.finish()
    c = MlflowClient(tracking_uri=uri)
    exp = c.get_experiment_by_name("table2-imagenet")
    (run,) = c.search_runs([exp.experiment_id])
    assert run.info.run_name == "hiri_vit_s@448" and run.info.status == "FINISHED"
    assert run.data.params["recipe.mix.prob"] == "0.5"
    assert run.data.tags["dvc_stage"] == "train_hiri_s_448"
    assert [(m.step, m.value) for m in c.get_metric_history(run.info.run_id, "val_top1")] == [(5, 10.0), (10, 30.0)]
    assert [a.path for a in c.list_artifacts(run.info.run_id)] == ["curves.json"]


def test_dead_server_warns_once_and_gives_up_fast(monkeypatch):
    warnings = []
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    t = Tracker("table2-imagenet", "x@1", {}, uri="http://127.0.0.1:9", warn=warnings.append)
    t0 = time.monotonic()
    assert t.start() is None
    t.log_params({"a": "1"})
    t.log_metrics({"loss": 1.0}, step=1)
    t.finish()
    assert time.monotonic() - t0 < 30
    # one warning when it failed, one at the end naming what was never sent
    assert len(warnings) == 2, warnings
    assert "MLflow tracking at http://127.0.0.1:9 failed" in warnings[0] and "training continues" in warnings[0]
    assert "still did not answer when the run ended: 3 tracking call(s) not logged" in warnings[1]


def test_an_outage_is_bridged_the_calls_it_missed_arrive_in_order(tmp_path, monkeypatch):
    """The store fails at opening the run and again mid-run, then answers: the run opens late (and
    says so through on_open), every metric arrives with its own step, the run finishes; the
    reconnection waits out its back-off instead of trying at every call."""
    import mlflow

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    down = {"on": True}
    tries = []
    real_create, real_batch = MlflowClient.create_run, MlflowClient.log_batch

    def outage(real):
        def call(self, *args, **kwargs):
            tries.append(real.__name__)
            if down["on"]:
                raise mlflow.exceptions.MlflowException("API request failed: Connection refused")
            return real(self, *args, **kwargs)
        return call

    monkeypatch.setattr(MlflowClient, "create_run", outage(real_create))
    monkeypatch.setattr(MlflowClient, "log_batch", outage(real_batch))
    now = {"t": 0.0}
    warnings, notes, opened = [], [], []
    t = Tracker("table2-imagenet", "x@1", {"dvc_stage": "train_x"}, uri=uri, warn=warnings.append, note=notes.append,
                on_open=opened.append, clock=lambda: now["t"])
    assert t.start() is None and len(warnings) == 1 and opened == []
    t.log_params({"recipe.lr": "0.001"})
    for step in (1, 2, 3):
        t.log_metrics({"val_top1": 10.0 * step}, step=step)
    assert tries.count("create_run") == 1  # within the back-off: kept, not retried
    down["on"] = False
    now["t"] = 31.0  # past the first back-off
    t.log_metrics({"val_top1": 40.0}, step=4)
    assert len(opened) == 1 and t.online and "answers again: 5 kept call(s) sent" in notes[-1]
    down["on"] = True  # a second outage, mid-run
    t.log_metrics({"val_top1": 50.0}, step=5)
    assert len(warnings) == 2 and not t.online
    down["on"] = False
    t.finish()  # the last chance is taken whatever the back-off
    c = MlflowClient(tracking_uri=uri)
    run = c.get_run(opened[0])
    assert run.info.status == "FINISHED" and run.data.params["recipe.lr"] == "0.001"
    assert [(m.step, m.value) for m in c.get_metric_history(run.info.run_id, "val_top1")] == \
        [(1, 10.0), (2, 20.0), (3, 30.0), (4, 40.0), (5, 50.0)]
    assert len(warnings) == 2  # nothing lost: no final warning


def test_stage_run_lands_beside_its_paper_row_in_a_model_training_experiment(tmp_path, monkeypatch):
    """What a training stage does when it opens its run (pipeline.train.run._open_tracker): the
    experiment is marked for MLflow's model-training view, and the paper's row for the stage is
    logged beside our run, once, however often the stage reruns; other paper runs are kept."""
    from pipeline.tracking.mlflow_run import EXPERIMENT_KIND_TAG, MODEL_TRAINING
    from pipeline.tracking.paper_tables import all_rows
    from pipeline.tracking.reference import sync_paper_runs, sync_stage_rows

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    other = [r for r in all_rows() if r.row_id == "table2/swin-t@224"]
    sync_paper_runs(other, uri=uri)  # an earlier `dvc repro paper_reference`, in part
    for _ in range(2):  # the stage run twice (a rerun, or a resume)
        t = Tracker("table2-imagenet", "hiri_vit_s@448", {"dvc_stage": "train_hiri_s_448"}, uri=uri,
                    note=lambda _: None)
        assert t.start() is not None
        result = sync_stage_rows("train_hiri_s_448", "table2-imagenet", uri)
        assert result.logged and result.experiments == {"table2-imagenet": 1}
        t.finish()
    c = MlflowClient(tracking_uri=uri)
    exp = c.get_experiment_by_name("table2-imagenet")
    assert exp.tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING
    runs = c.search_runs([exp.experiment_id])
    paper = sorted(r.data.tags["paper_row_id"] for r in runs if r.data.tags.get("source") == "paper")
    assert paper == ["table2/hiri-vit-s@448", "table2/swin-t@224"]
    (row,) = [r for r in runs if r.data.tags.get("paper_row_id") == "table2/hiri-vit-s@448"]
    assert row.data.metrics["top1"] == 84.3 and row.data.params["run.img_size"] == "448"
    assert sorted(r.info.run_name for r in runs if "source" not in r.data.tags) == ["hiri_vit_s@448"] * 2
    assert t.where_to_look == (f"`mlflow ui` in {tmp_path}, then open http://127.0.0.1:5000/#/experiments/"
                               f"{exp.experiment_id}/runs?workflowType=machine_learning")


def test_tracking_server_command_proxies_artifacts_and_opens_beyond_loopback_only_when_asked(tmp_path):
    import socket

    from pipeline.tracking.server import server_command, url_host

    local = server_command("127.0.0.1", 5000, tmp_path, None, 1)
    assert local[local.index("--backend-store-uri") + 1] == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert "--serve-artifacts" in local and local[local.index("--artifacts-destination") + 1] == str(tmp_path / "artifacts")
    assert local[local.index("--host") + 1] == "127.0.0.1" and "--allowed-hosts" not in local  # MLflow's default
    cluster = server_command("0.0.0.0", 5001, tmp_path, "postgresql://mlflow@db/mlflow", 4)
    assert cluster[cluster.index("--backend-store-uri") + 1] == "postgresql://mlflow@db/mlflow"
    allowed = cluster[cluster.index("--allowed-hosts") + 1].split(",")
    assert f"{socket.getfqdn()}:*" in allowed and "localhost" in allowed  # this host's name, MLflow's defaults kept
    assert url_host("0.0.0.0") == socket.getfqdn() and url_host("127.0.0.1") == "127.0.0.1"
