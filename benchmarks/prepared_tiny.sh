#!/usr/bin/env bash
# Measure prepared vs inline with the tiny 2-layer classifier (HE provider, loopback).
set -uo pipefail
cd "$(dirname "$0")/.." && . .venv/bin/activate
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
T=${T:-/tmp/prep_bench}; rm -rf $T; mkdir -p $T; export COMET_HOME=$T/home
python -c "from tests.models import tiny_classifier; from pathlib import Path; tiny_classifier(Path('$T/tiny'))" 2>/dev/null
python -m comet_server --port 0 --model $T/tiny --max-batch 8 --prepared-dir $T/srv > $T/log 2>&1 &
echo $! > $T/pid
until A=$(grep -o 'listening on [^ ]*' $T/log | cut -d' ' -f3); [ -n "$A" ]; do sleep 0.5; done
t() { local s=$(date +%s.%N); "$@"; local e=$(date +%s.%N); echo "WALL $(echo "$e - $s" | bc) :: $*" >&2; }
PART=${PART:-all}  # demo | many | all
D=("I love this sunny day" "this is the worst service ever")
if [ "$PART" != many ]; then
t python -m comet_client --quiet --json --server $A "${D[@]}" > $T/inline2.json
t python -m comet_client prepare --quiet --server $A --batch 2 --length 16 --count 1
du -b $T/srv/ready/* $T/home/prepared/ready/* >&2
t python -m comet_client --quiet --json --server $A "${D[@]}" > $T/prep2.json
fi
mapfile -t TX < <(python -c "
import random; random.seed(1); w='good bad day night service food rain sun love hate ok meh the a very'.split()
for i in range(40): print(' '.join(random.choice(w) for _ in range(random.randint(2,9))))")
[ "$PART" = many ] || t python -m comet_client --quiet --json --server $A "${TX[@]}" > $T/inline40.json
if [ "$PART" != demo ]; then
t python -m comet_client prepare --quiet --server $A --batch 8 --length 16 --count 5
t python -m comet_client --quiet --json --server $A "${TX[@]}" > $T/prep40.json
fi
python - <<PY >&2
import json
import os
for n in ("inline2","prep2","inline40","prep40"):
    if not os.path.exists("$T/%s.json"%n): continue
    d=json.load(open("$T/%s.json"%n)); c=d["cost"]
    print(n, "offline s", c["offline"]["seconds"], "online s", c["online"]["seconds"], "batches", [(b["batch"],b["seq_len"],bool(b["prepared"])) for b in d["batches"]])
import numpy as np
if os.path.exists("$T/inline40.json") and os.path.exists("$T/prep40.json"):
  a=json.load(open("$T/inline40.json")); b=json.load(open("$T/prep40.json")); print("labels equal", a["label"]==b["label"], "max |dlogit|", float(np.abs(np.array(a["output"])-np.array(b["output"])).max()))
PY
kill $(cat $T/pid); wait
