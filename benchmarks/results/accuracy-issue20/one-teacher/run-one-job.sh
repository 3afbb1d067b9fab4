#!/bin/bash
# one suite job: seed, settings name, [methods]; code at main 846c0e1 (clone code2)
cd /work/acc/code2
. /work/main/.venv/bin/activate
export PYTHONPATH=/work/acc/code2 OMP_NUM_THREADS=1
python benchmarks/accuracy.py --seeds $1 --work /work/acc/work --cache-dir /work/acc/cache --settings /work/acc/set/$2.json --out /work/acc/out/$2$4-s$1 ${3:+--methods $3} > /work/acc/out/log-$2$4-s$1.txt 2>&1
echo "$(date +%T) done $2$4 seed $1 rc=$?" >> /work/acc/jobs.log
