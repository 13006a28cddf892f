#!/usr/bin/env bash
# The default model: `.ci/demo`'s server and client (loopback, HE offline phase), with
# one `prepare --count 2` and then two demo runs on two fresh server processes (a new
# port each, like `.ci/demo`), an inline run for comparison, and prepare throughput at
# 32 tokens. Isolated COMET_HOME (the built models are linked in).
set -uo pipefail
# shellcheck source=benchmarks/lib.sh
. "$(dirname "$0")/lib.sh"
bench_home "${T:-/tmp/prep_demo}"
D=("I love this sunny day" "this is the worst service ever")
start 1
t comet-client prepare --quiet --server "$A" --batch 2 --length 16 --count 2
du -b "$T"/home/server/prepared/ready/* "$T"/home/prepared/ready/* >&2
stop
for run in 1 2; do
  start "run$run"
  t comet-client --quiet --json --server "$A" "${D[@]}" > "$T/prep$run.json"
  stop
done
start 3
t comet-client --quiet --json --server "$A" "${D[@]}" > "$T/inline.json"
t comet-client prepare --quiet --server "$A" --batch 2 --length 32 --count 1
stop
python - "$T" <<'PY' >&2
import json, sys
import numpy as np
T = sys.argv[1]
for n in ("prep1", "prep2", "inline"):
    d = json.load(open(f"{T}/{n}.json")); c = d["cost"]
    print(n, d["label"], "offline s", c["offline"]["seconds"], "online s", c["online"]["seconds"],
          "online bytes", c["online"]["bytes_sent"], c["online"]["bytes_received"],
          [(b["batch"], b["seq_len"], bool(b["prepared"])) for b in d["batches"]])
a, b = (np.array(json.load(open(f"{T}/{n}.json"))["output"]) for n in ("prep1", "inline"))
print("max |logit diff| prepared vs inline", float(np.abs(a - b).max()))
PY
