"""`cxrgen app` over HTTP, without a browser: what it serves and refuses, the dataset filters, the run states,
the prompt preview and the generation queue. tests/test_app_browser.py drives the page itself in Chromium."""

from __future__ import annotations

import base64
import http.client
import io
import json
import shutil
import zipfile
from urllib.parse import urlsplit

import numpy as np
import pytest
from helpers import serving_app, training_stops_after
from PIL import Image

from cxrgen.app.folders import inside
from cxrgen.cli import main
from cxrgen.errors import UserError
from cxrgen.train.running import run_state, running


def request(url: str, path: str, method: str = "GET", body: object = None, headers: dict | None = None):
    """(status, headers, bytes): the path is sent exactly as written (no client-side normalisation of `..`)."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    sent = {"Content-Type": "application/json"} if body is not None else {}
    connection.request(method, path, body=data, headers={**sent, **(headers or {})})
    response = connection.getresponse()
    return response.status, dict(response.getheaders()), response.read()


def get_json(url: str, path: str) -> dict:
    status, _, data = request(url, path)
    assert status == 200, (path, data)
    return json.loads(data)


def post_json(url: str, path: str, body: dict) -> tuple[int, dict]:
    status, _, data = request(url, path, "POST", body)
    return status, json.loads(data)


@pytest.fixture(scope="module")
def app(demo_output, tmp_path_factory):
    out = tmp_path_factory.mktemp("app-output")
    folders = ["--data", str(demo_output / "prepared"), "--runs", str(demo_output), "--evals", str(demo_output)]
    with serving_app(*folders, "--out", str(out)) as served:
        yield served.url, get_json(served.url, "/api/overview"), out, served


def test_app_finds_the_demo_folders_given_directly_or_as_parents(app):
    _, overview, _, _ = app
    # --runs and --evals were given the demo's top folder: the run and the evaluation inside it are found
    assert [d["name"].split("/")[-1] for d in overview["data"]] == ["prepared"]
    assert [r["name"].split("/")[-1] for r in overview["runs"]] == ["run"]
    assert overview["runs"][0]["state"] == "finished"
    assert [e["name"].split("/")[-1] for e in overview["evals"]] == ["evaluation"]


def test_only_files_inside_the_given_folders_are_served(app, demo_output):
    url, overview, _, _ = app
    data = overview["data"][0]["id"]
    first = json.loads((demo_output / "prepared" / "train" / "metadata.jsonl").read_text().splitlines()[0])
    status, headers, body = request(url, f"/files/data/{data}/train/{first['file_name']}")
    assert status == 200 and headers["Content-Type"] == "image/png" and body[:4] == b"\x89PNG"
    refused = [
        f"/files/data/{data}/../../../../etc/passwd",
        f"/files/data/{data}/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        f"/files/data/{data}/..%2f..%2f..%2fetc%2fpasswd",
        f"/files/data/{data}//etc/passwd",
        f"/files/data/{data}/train/..",
        f"/files/data/{data}/.patient_key_salt",  # local only
        f"/files/data/{data}/source_index.csv",  # local only: the way back to source paths
        f"/files/data/{data}/..\\..\\etc\\passwd",
        f"/files/data/{'0' * 12}/prepare.json",  # not a folder it was given
        f"/files/runs/{data}/prepare.json",  # a dataset's id under another kind
        "/files/nothing/x/y",
        "/static/../server.py",
        "/static/folders.py",
        "/api/../static/app.js/../../command.py",
    ]
    for path in refused:
        status, _, _ = request(url, path)
        assert status == 404, path
    assert request(url, f"/files/data/{data}/prepare.json")[0] == 200


def test_a_link_leading_out_of_a_folder_is_not_followed(tmp_path):
    root = tmp_path / "data"
    (root / "train").mkdir(parents=True)
    (root / "train" / "a.png").write_bytes(b"png")
    (tmp_path / "secret.txt").write_text("private")
    (root / "train" / "leak.txt").symlink_to(tmp_path / "secret.txt")
    (root / "train" / "ok.png").symlink_to(root / "train" / "a.png")  # a link that stays inside is fine
    assert inside(root, "train/a.png") == (root / "train" / "a.png").resolve()
    assert inside(root, "train/ok.png") is not None
    (root / ".patient_key_salt").write_text("salt")
    (root / "train" / "salt").symlink_to(root / ".patient_key_salt")  # a plain name for a dot file
    (root / "SOURCE_INDEX.CSV").write_text("id,source_path")  # the local-only index, as another case spells it
    bad = ["train/leak.txt", "train", "", "/etc/passwd", "train/../../secret.txt", "train/%2e%2e/a.png"]
    for path in [*bad, "train/salt", ".patient_key_salt", "SOURCE_INDEX.CSV", "train/a.png%00.txt"]:
        assert inside(root, path) is None, path


def test_pages_refuse_other_host_names_and_posts_that_are_not_json(app):
    url, _, _, _ = app
    # a site whose name resolves to 127.0.0.1 (DNS rebinding) reaches the socket, not the app
    for host in ("evil.example:80", "127.attacker.example", "127.0.0.1.nip.io:80", "localhost.evil.example"):
        assert request(url, "/api/overview", headers={"Host": host})[0] == 403, host
    assert request(url, "/api/overview", headers={"Host": "localhost"})[0] == 200
    # a form of another site can post text/plain without asking; JSON needs a preflight the app never answers
    status, _, _ = request(url, "/api/generate", "POST", b"{}", headers={"Content-Type": "text/plain"})
    assert status == 415


def test_a_non_local_host_needs_auth_and_says_so(demo_output, capsys, monkeypatch):
    monkeypatch.delenv("CXRGEN_APP_AUTH", raising=False)
    assert main(["app", "--runs", str(demo_output), "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "--host 0.0.0.0 serves the app to other machines: give --auth USER:PASSWORD or --auth TOKEN" in err


def test_a_missing_folder_a_folder_of_other_things_and_a_busy_port_are_named(app, demo_output, capsys):
    assert main(["app", "--data", str(demo_output / "nope")]) == 2
    assert f"--data {demo_output / 'nope'}: no such folder" in capsys.readouterr().err
    assert main(["app", "--data", str(demo_output / "release")]) == 2
    assert f"--data {demo_output / 'release'}: no prepared dataset" in capsys.readouterr().err
    assert main(["app", "--evals", str(demo_output / "run")]) == 2
    assert "no evaluation (a folder with metrics.json" in capsys.readouterr().err
    port = urlsplit(app[0]).port
    assert main(["app", "--data", str(demo_output), "--port", str(port)]) == 2
    assert f"--port {port} is in use: give another --port" in capsys.readouterr().err


def test_basic_auth(demo_output):
    with serving_app("--runs", str(demo_output), "--auth", "alice:s3cret") as served:
        url = served.url
        status, headers, _ = request(url, "/api/overview")
        assert status == 401 and headers["WWW-Authenticate"].startswith("Basic")
        assert request(url, "/")[0] == 401
        wrong = base64.b64encode(b"alice:guess").decode()
        assert request(url, "/api/overview", headers={"Authorization": f"Basic {wrong}"})[0] == 401
        right = base64.b64encode(b"alice:s3cret").decode()
        assert request(url, "/api/overview", headers={"Authorization": f"Basic {right}"})[0] == 200


def test_token_auth_once_in_the_url_then_as_a_cookie(demo_output, monkeypatch, caplog):
    monkeypatch.setenv("CXRGEN_APP_AUTH", "t0ken-t0ken")  # kept out of the shell history and `ps`
    caplog.set_level("DEBUG", logger="cxrgen.app")
    with serving_app("--runs", str(demo_output)) as served:
        url = served.url
        assert request(url, "/api/overview")[0] == 401
        assert request(url, "/api/overview?token=wrong")[0] == 401
        status, headers, _ = request(url, "/?token=t0ken-t0ken")
        assert status == 200 and "HttpOnly" in headers["Set-Cookie"]
        cookie = headers["Set-Cookie"].split(";")[0]
        assert request(url, "/api/overview", headers={"Cookie": cookie})[0] == 200
        assert request(url, "/api/overview", headers={"Authorization": "Bearer t0ken-t0ken"})[0] == 200
        # only the page takes it in the URL: elsewhere it would end up in logs and the browser's history
        assert request(url, "/api/overview?token=t0ken-t0ken")[0] == 401
    assert "GET / " in caplog.text and "t0ken" not in caplog.text  # requests are logged, the token never


def test_malformed_requests_are_refused_not_failed(app):
    url, overview, _, _ = app
    model = {"run": overview["runs"][0]["id"]}
    shapes = [
        {"model": "x"},
        {"model": model, "findings": "effusion"},
        {"model": model, "findings": [1, 2]},
        {"model": model, "findings": [{"label": "effusion", "locations": 3}]},
        {"model": model, "sex": {"a": 1}},
        {"model": model, "sex": "Q"},
        {"model": model, "age": -3},
        {"model": model, "age": 7.5},
        {"model": model, "guidance": "NaN"},
        {"model": model, "seed": 10**30},
        {"model": model, "n": 65},
        {"model": model, "steps": True},
        {"model": {"base": "nope", "loras": [{"run": model["run"], "weight": "x"}]}},
    ]
    for body in shapes:
        status, answer = post_json(url, "/api/prompt", body)
        assert status == 400 and answer["error"], body
    assert request(url, "/api/prompt", "POST", b'{"model": {}, "guidance": 1e999}')[0] == 400  # infinity
    for length in ("-1", "abc", "1e3"):
        assert request(url, "/api/prompt", "POST", b"{}", headers={"Content-Length": length})[0] == 411, length
    data = overview["data"][0]["id"]
    for query in ("offset=%C2%B2", "offset=" + "9" * 5000, "limit=-1", "age_min=-%C2%B2", "age_max=1e3"):
        assert request(url, f"/api/data/{data}/images?{query}")[0] == 200, query
    # locations as text are names separated by commas, not letters
    body = {"model": model, "findings": [{"label": "pleural effusion", "locations": "left, right"}]}
    assert post_json(url, "/api/prompt", body)[1]["findings"] == ["pleural effusion@left,right"]


def test_dataset_counts_and_filters(app, demo_output):
    url, overview, _, _ = app
    data = overview["data"][0]["id"]
    summary = get_json(url, f"/api/data/{data}")
    rows = [
        json.loads(line)
        for split in ("train", "val", "test")
        for line in (demo_output / "prepared" / split / "metadata.jsonl").read_text().splitlines()
    ]
    assert summary["images"] == len(rows) == sum(summary["splits"].values())
    assert sum(n for _, n in summary["counts"]["sex"]) == len(rows)
    assert sum(n for _, n in summary["counts"]["age"]) == len(rows)
    label, count = summary["counts"]["label"][1]
    page = get_json(url, f"/api/data/{data}/images?label={label.replace(' ', '%20')}&limit=200")
    assert page["total"] == count and all(label in [f["label"] for f in r["findings"]] for r in page["rows"])
    page = get_json(url, f"/api/data/{data}/images?sex=F&age_min=40&age_max=59&split=train&limit=200")
    expected = [r for r in rows if r["sex"] == "F" and r["age"] is not None and 40 <= r["age"] <= 59]
    assert 0 < page["total"] <= len(expected)
    assert all(r["sex"] == "F" and 40 <= r["age"] <= 59 and r["split"] == "train" for r in page["rows"])
    projection = summary["projections"][0]
    page = get_json(url, f"/api/data/{data}/images?projection={projection}&qc=clean&limit=200")
    assert page["total"] == sum(1 for r in rows if r["projection"] == projection and not r.get("qc_flags"))
    assert get_json(url, f"/api/data/{data}/images?qc=flagged")["total"] == summary["qc_flagged"]


def test_rejected_images_show_with_their_reasons(quirk_release, tmp_path):
    root, csv_path = quirk_release
    out = tmp_path / "prepared"
    args = ["prepare", "--source", "padchest", "--csv", str(csv_path), "--images", str(root), "--out", str(out)]
    assert main([*args, "--image.resolution", "64", "--workers", "1", "--qc.min-side", "64"]) == 0
    with serving_app("--data", str(out)) as served:
        url = served.url
        data = get_json(url, "/api/overview")["data"][0]["id"]
        rejected = get_json(url, f"/api/data/{data}/rejected")
        with_image = [r for r in rejected["rows"] if r["url"]]
        assert with_image and all(r["reason"].startswith("qc:") for r in with_image)
        assert request(url, with_image[0]["url"])[0] == 200
        assert any(r["reason"].startswith("filter:") and r["url"] is None for r in rejected["rows"])
        assert sum(n for _, n in rejected["by_reason"]) == rejected["total"]
        summary = get_json(url, f"/api/data/{data}")
        assert "contact_sheets/rejected.png" in summary["contact_sheets"]


def test_run_curves_samples_and_settings(app, demo_output):
    url, overview, _, _ = app
    run = get_json(url, f"/api/runs/{overview['runs'][0]['id']}")
    logged = [json.loads(line) for line in (demo_output / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [[r["step"], r["loss/train"]] for r in logged if "loss/train" in r]
    assert run["curves"]["loss/train"] == train and run["curves"]["lr"]
    assert run["curves"]["loss/val"] and "loss/instance" not in run["curves"]  # no prior: the same as loss/train
    grids = sorted(p.name for p in (demo_output / "run" / "samples").glob("step-*.png"))
    assert [f"step-{s['step']:07d}.png" for s in run["samples"]] == grids and len(grids) >= 2
    assert all(request(url, s["url"])[0] == 200 for s in run["samples"])
    assert run["settings"]["method"] == "lora" and run["state"] == "finished" and run["resume"] is None


def test_run_states_and_the_resume_command_that_works(tiny_dataset, tiny_model, tmp_path, monkeypatch):
    out = tmp_path / "run"
    args = ["train", "--preset", "cpu-smoke", "--data", str(tiny_dataset), "--model.base", str(tiny_model)]
    args += ["--out", str(out), "--checkpoint-every", "2"]
    with training_stops_after(2):
        assert main(args) == 130  # as by Ctrl-C
    assert not (out / ".running").exists()  # removed on the way out
    state = run_state(out)
    assert state.state == "interrupted"
    assert state.resume == f"cd {out} && cxrgen train --config config.yaml --resume latest"
    with running(out):
        assert run_state(out).state == "running"  # while a process holds the marker
        # a second training into the folder is refused, naming the first (flock: per open file, even in-process)
        with pytest.raises(UserError, match="is being trained by another process"), running(out):
            pass
        assert run_state(out).state == "running"
    (out / ".running").write_text('{"pid": 1}')  # left by a process that was killed: nobody holds it
    assert run_state(out).state == "interrupted"
    command = state.resume.split(" && ")[1].split()[1:]
    monkeypatch.chdir(out)
    assert main(command) == 0
    assert run_state(out).state == "finished"


def test_unknown_finding_is_refused_with_the_closest_known(app):
    url, overview, _, _ = app
    model = {"run": overview["runs"][0]["id"]}
    status, body = post_json(url, "/api/prompt", {"model": model, "findings": [{"label": "pleural efusion"}]})
    assert status == 400 and "closest known: pleural effusion" in body["error"]
    status, body = post_json(url, "/api/generate", {"model": model, "findings": [{"label": "pleural efusion"}]})
    assert status == 400 and "closest known" in body["error"]
    status, body = post_json(url, "/api/prompt", {"model": model, "findings": [{"label": "effusion"}], "age": 70})
    assert status == 200 and "pleural effusion" in body["prompt"] and "age 70" in body["prompt"]
    assert body["findings"] == ["pleural effusion"] and body["tokens"] < body["limit"] == 77
    words = post_json(url, "/api/vocabulary", {"model": model})[1]
    assert "pleural effusion" in [name for name, _ in words["labels"]]
    for bad in ({"model": {"run": "nope"}}, {"model": model, "n": 0}, {"model": model, "steps": "x"}):
        assert post_json(url, "/api/prompt", bad)[0] == 400


def test_generation_is_queued_loads_the_model_once_and_downloads_as_a_set(app, demo_output):
    url, overview, out, served = app
    model = {"run": overview["runs"][0]["id"]}
    request_body = {"model": model, "age": 60, "sex": "M", "n": 2, "steps": 3, "seed": 5}
    jobs = [post_json(url, "/api/generate", {**request_body, "seed": seed})[1] for seed in (5, 6)]
    assert [j["state"] for j in jobs][0] in ("queued", "loading", "sampling")
    done = [wait(url, j["id"]) for j in jobs]
    assert [d["state"] for d in done] == ["done", "done"], done
    assert len(done[0]["images"]) == 2 and done[0]["provenance"]["sampler"]["steps"] == 3
    first = [np.asarray(Image.open(io.BytesIO(request(url, im["url"])[2]))) for im in done[0]["images"]]
    second = [np.asarray(Image.open(io.BytesIO(request(url, im["url"])[2]))) for im in done[1]["images"]]
    assert not np.array_equal(first[0], second[0])  # another seed
    assert served.jobs().keeper.loads == 1  # two requests, one model, loaded once
    made = out / done[0]["id"]
    (made / ".notes").write_text("not the set")  # a dot file, and a link leading out of the set: neither is sent
    (made / "train" / "elsewhere.txt").symlink_to(out.parent / "outside.txt")
    (out.parent / "outside.txt").write_text("private")
    (out / "notes.txt").write_text("not a set")  # --out may hold other things: only sets are served
    assert request(url, "/files/out/out/notes.txt")[0] == 404
    status, headers, body = request(url, done[0]["download"])
    assert status == 200 and headers["Content-Type"] == "application/zip"
    names = zipfile.ZipFile(io.BytesIO(body)).namelist()
    set_name = done[0]["id"]
    assert f"{set_name}/train/metadata.jsonl" in names and f"{set_name}/generate.json" in names
    assert sum(n.endswith(".png") for n in names) == 2 and not any(".journal" in n for n in names)
    assert not any(n.endswith((".notes", "elsewhere.txt")) for n in names)
    assert (out / set_name / "README.md").is_file()


def wait(url: str, job: str, seconds: float = 300) -> dict:
    import time

    end = time.time() + seconds
    while time.time() < end:
        view = get_json(url, f"/api/jobs/{job}")
        if view["state"] in ("done", "failed"):
            return view
        time.sleep(0.2)
    raise AssertionError(f"job {job} did not finish")


def test_the_page_and_its_files_are_served_from_the_package(app):
    url, _, _, _ = app
    status, headers, body = request(url, "/")
    assert status == 200 and b"/static/app.js" in body and "default-src 'self'" in headers["Content-Security-Policy"]
    assert not [s for s in (b"http://", b"https://") if s in body]  # nothing fetched from the internet
    for name in ("app.js", "app.css"):
        status, _, body = request(url, f"/static/{name}")
        assert status == 200 and b"https://" not in body and b"http://" not in body.replace(b"http://www.w3.org", b"")


def test_app_help_lists_its_settings(capsys):
    with pytest.raises(SystemExit):
        main(["app", "--help"])
    text = capsys.readouterr().out
    for flag in ("--data", "--runs", "--evals", "--models", "--host", "--port", "--auth", "--out"):
        assert flag in text


def test_runs_are_looked_up_on_each_request(tmp_path, demo_output):
    runs = tmp_path / "runs"
    shutil.copytree(demo_output / "run", runs / "a")
    with serving_app("--runs", str(runs)) as served:
        url = served.url
        assert len(get_json(url, "/api/overview")["runs"]) == 1
        shutil.copytree(demo_output / "run", runs / "b")  # a run started after the app is found
        assert len(get_json(url, "/api/overview")["runs"]) == 2
        shutil.rmtree(runs / "a")
        assert [r["name"] for r in get_json(url, "/api/overview")["runs"]] == [f"{runs.parent.name}/runs/b"]


def test_a_base_model_with_a_lora_run_at_a_weight_matches_the_command(app, demo_output, tmp_path):
    url, _, _, served = app
    models = get_json(url, "/api/models")
    base = next(b for b in models["bases"] if b["name"].endswith("tiny-model"))
    lora = models["loras"][0]
    model = {"base": base["id"], "loras": [{"run": lora["id"], "weight": 0.5}]}
    body = {"model": model, "age": 50, "findings": [{"label": "pleural efusion"}], "n": 1, "steps": 3, "seed": 1}
    status, refused = post_json(url, "/api/prompt", body)  # names checked against the LoRA run's training data
    assert status == 400 and "closest known: pleural effusion" in refused["error"]
    body["findings"] = [{"label": "pleural effusion", "locations": ["left"]}]
    loads = served.jobs().keeper.loads
    job = wait(url, post_json(url, "/api/generate", body)[1]["id"])
    assert job["state"] == "done" and job["provenance"]["adapters"][0]["weight"] == 0.5
    assert served.jobs().keeper.loads == loads + 1  # another model: loaded once, in place of the kept one
    assert base["name"] == f"{demo_output.name}/tiny-model"  # not the whole path
    args = ["generate", "--model.base", str(demo_output / "tiny-model"), "--loras", f"{demo_output / 'run'}:0.5"]
    args += ["--age", "50", "--finding", "pleural effusion@left", "--n", "1", "--steps", "3", "--seed", "1"]
    assert main([*args, "--out", str(tmp_path / "cli")]) == 0
    made = np.asarray(Image.open(io.BytesIO(request(url, job["images"][0]["url"])[2])))
    expected = np.asarray(Image.open(next((tmp_path / "cli" / "train").glob("*/*.png"))))
    assert np.array_equal(made, expected)
