"""`cxrgen app`: start-up time and time to first image on the tiny model, against `cxrgen generate`.

Each round starts a fresh `cxrgen app` process on a demo's outputs and measures:
- start-up: from launching the process until the page's API answers;
- first image: from launching until the first generated image is written (one image, 25 steps; the app imports
  the generation stack in the background after start-up and loads the model on the first request);
- another image: a second request with other conditions on the model the app kept loaded;
and, for comparison, `cxrgen generate` making the same image in a fresh process (what the command line costs).
With --dataset DIR (a prepared dataset; `prepare --metadata-only` on a PadChest-size table is enough), also the
dataset browser's answers on it: the first summary (reading every split's metadata), a summary again, and the
images filtered by a finding, by sex and age range, and by projection.
Figures are medians over --rounds, with the range over rounds (min to max) as the interval.
Run: .venv/bin/python benchmarks/app_speed.py --demo demo-output [--rounds 5] [--dataset data/padchest-meta]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REQUEST = {"age": 60, "sex": "F", "findings": [{"label": "pleural effusion", "locations": ["left"]}], "n": 1}


def call(url: str, path: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as response:
        return json.loads(response.read())


def wait_done(url: str, job: str) -> dict:
    while (view := call(url, f"/api/jobs/{job}"))["state"] not in ("done", "failed"):
        time.sleep(0.05)
    if view["state"] == "failed":
        raise SystemExit(f"generation failed: {view['error']}")
    return view


def app_round(demo: Path, out: Path) -> dict[str, float]:
    args = ["--data", str(demo / "prepared"), "--runs", str(demo / "run"), "--evals", str(demo / "evaluation")]
    began = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "cxrgen", "app", *args, "--port", "0", "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # "cxrgen app: http://127.0.0.1:PORT/ (...)"
        url = line.split()[2].rstrip("/")
        while True:
            try:
                overview = call(url, "/api/overview")
                break
            except OSError:
                time.sleep(0.01)
        started = time.perf_counter() - began
        model = {"run": overview["runs"][0]["id"]}
        first = wait_done(url, call(url, "/api/generate", {**REQUEST, "model": model})["id"])
        first_image = time.perf_counter() - began
        again = time.perf_counter()
        wait_done(url, call(url, "/api/generate", {**REQUEST, "age": 40, "model": model})["id"])
        another = time.perf_counter() - again
        assert len(first["images"]) == 1
        return {"start-up": started, "first image": first_image, "another image": another}
    finally:
        process.terminate()
        process.wait(30)


def browse_round(dataset: Path, out: Path) -> dict[str, float]:
    process = subprocess.Popen(
        [sys.executable, "-m", "cxrgen", "app", "--data", str(dataset), "--port", "0", "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().split()[2].rstrip("/")
        data = call(url, "/api/overview")["data"][0]["id"]
        timed: dict[str, float] = {}

        def timing(name: str, path: str) -> dict:
            began = time.perf_counter()
            answer = call(url, path)
            timed[name] = time.perf_counter() - began
            return answer

        summary = timing("first summary", f"/api/data/{data}")  # asked at once: the app is still reading it
        timing("summary again", f"/api/data/{data}")
        label = summary["counts"]["label"][1][0].replace(" ", "%20")
        timing("filter: a finding", f"/api/data/{data}/images?label={label}")
        timing("filter: sex and age", f"/api/data/{data}/images?sex=F&age_min=40&age_max=59")
        timing("filter: projection", f"/api/data/{data}/images?projection=AP")
        return timed
    finally:
        process.terminate()
        process.wait(30)


def cli_round(demo: Path, out: Path) -> float:
    began = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "cxrgen", "generate", "--run", str(demo / "run"), "--age", "60", "--sex", "F"]
        + ["--finding", "pleural effusion@left", "--out", str(out)],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", default="demo-output", help="a `cxrgen demo` output folder (make demo)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dataset", help="also time the dataset browser on this prepared dataset")
    args = parser.parse_args()
    demo = Path(args.demo)
    if not (demo / "run" / "run.json").is_file():
        raise SystemExit(f"{demo} is not a finished demo: run `make demo` (or cxrgen demo --out {demo}) first")
    figures: dict[str, list[float]] = {"start-up": [], "first image": [], "another image": [], "cxrgen generate": []}
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.rounds):
            for name, seconds in app_round(demo, Path(tmp) / f"app-{k}").items():
                figures[name].append(seconds)
            figures["cxrgen generate"].append(cli_round(demo, Path(tmp) / f"cli-{k}"))
            if args.dataset:
                for name, seconds in browse_round(Path(args.dataset), Path(tmp) / f"browse-{k}").items():
                    figures.setdefault(name, []).append(seconds)
            print(f"round {k + 1}: " + ", ".join(f"{n} {v[-1]:.2f} s" for n, v in figures.items()), flush=True)
        shutil.rmtree(tmp, ignore_errors=True)
    if args.dataset:
        rows = sum(1 for f in Path(args.dataset).glob("*/metadata.jsonl") for _ in open(f, encoding="utf-8"))
        print(f"\nthe dataset browser on {args.dataset}: {rows:,} images")
    print(f"\n{'':28s}median   range over {args.rounds} rounds")
    for name, values in figures.items():
        print(f"{name:28s}{statistics.median(values):6.2f} s  [{min(values):.2f}, {max(values):.2f}]")
    cli, warm = figures["cxrgen generate"], figures["another image"]
    print(
        f"\nan image from the app's kept model against a cxrgen generate process: "
        f"{statistics.median(cli) / statistics.median(warm):.1f}x faster "
        f"(slowest app request {max(warm):.2f} s vs fastest process {min(cli):.2f} s)"
    )


if __name__ == "__main__":
    main()
