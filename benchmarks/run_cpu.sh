#!/usr/bin/env bash
# Every CPU benchmark whose figures are in docs/benchmarks.md, in one go, on a quiet machine.
#   bash benchmarks/run_cpu.sh [OUT]        (default OUT: bench-runs; needs `make setup` and lightly)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
SS="$PY -m sslkit"
OUT=${1:-bench-runs}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
[ -f bench-data/train.json ] || $SS demo-data bench-data --preset bench --quiet

echo "== propose (issue 3)"
[ -f "$OUT/propose.md" ] || $PY benchmarks/propose.py bench-data/annotations.json --out "$OUT/propose.json" \
  | tee "$OUT/propose.md"

echo "== BYOL step throughput vs lightly (issue 4)"
[ -f "$OUT/throughput.md" ] || $PY benchmarks/pretrain_throughput.py --json "$OUT/throughput.json" \
  | tee "$OUT/throughput.md"

echo "== data path per CPU core: decode + two BYOL views, sslkit vs lightly (issue 21)"
$PY benchmarks/data_throughput.py --n 64 --repeats 3 --json "$OUT/data_throughput.json" | tee "$OUT/data_throughput.md"
$PY benchmarks/data_throughput.py --n 64 --repeats 3 --image-size 96 --json "$OUT/data_throughput_96.json" \
  | tee "$OUT/data_throughput_96.md"

echo "== artefacts for the object-level methods (small crops: only their existence matters here)"
T=bench-data/train.json
[ -f "$OUT/fh.h5" ] || $SS propose $T --algo felzenszwalb -o "$OUT/fh.h5" -q
[ -f "$OUT/props.h5" ] || $SS propose $T -o "$OUT/props.h5" -q
[ -f "$OUT/stage1_tiny/last.pth" ] || $SS pretrain $T -m byol -o "$OUT/stage1_tiny" --arch resnet18 --image-size 64 \
  --batch-size 32 --epochs 1 --warmup-epochs 0 -q --no-tensorboard
[ -f "$OUT/pairs_tiny.h5" ] || $SS sample-views $T -m orl --proposals "$OUT/props.h5" --ckpt "$OUT/stage1_tiny/last.pth" \
  -o "$OUT/pairs_tiny.h5" --image-size 96 --roi-size 96 -q
[ -f "$OUT/cands.h5" ] || $SS sample-views $T -m univip --proposals "$OUT/props.h5" -o "$OUT/cands.h5" -q

echo "== step cost vs BYOL (issues 5, 6, 7)"
$PY benchmarks/step_cost.py --images $T --masks "$OUT/fh.h5" --orl-views "$OUT/pairs_tiny.h5" \
  --univip-views "$OUT/cands.h5" --arch resnet18 --image-size 96 --batch-size 32 --json "$OUT/step_cost.json" \
  | tee "$OUT/step_cost.md"

echo "== ORL stage 2 scaling (issue 6)"
$PY benchmarks/orl_stage2.py $T --proposals "$OUT/props.h5" --ckpt "$OUT/stage1_tiny/last.pth" --device cpu \
  --knn-sizes 1000,5000,20000 --roi-images 48 --out "$OUT/orl_stage2.json" | tee "$OUT/orl_stage2.md"

echo "== transfer quality at CPU scale (issues 4-7): 1,500 smaller scenes, 30 epochs (540 steps)"
Q=bench-quality
[ -f $Q/train.json ] || $SS demo-data $Q --n 1500 --min-side 160 --max-side 224 --seed 1 --quiet
$PY benchmarks/quality.py --data $Q --out "$OUT/q30" --methods byol,detcon-b,orl,univip --heldout 0.3 \
  --epochs ${QUALITY_EPOCHS:-30} --arch resnet18 --image-size 64 --batch-size 64 | tee "$OUT/q30.md"

echo "== ORL / UniVIP ablations at small scale (issues 6, 7): 5 epochs, ORL pairs of the 30-epoch stage 1"
mkdir -p "$OUT/qabl"
for f in props.h5 fh.h5 grid.h5 orl_pairs.h5 univip_cands.h5; do cp -n "$OUT/q30/$f" "$OUT/qabl/"; done
$PY benchmarks/quality.py --data $Q --out "$OUT/qabl" --epochs 5 --arch resnet18 --image-size 64 --batch-size 64 \
  --methods byol,orl,orl-intra,orl-inter,univip,univip-k2,univip-k0,univip-no-ot,univip-no-si \
  --probes objects/linear,objects/knn | tee "$OUT/qabl.md"

echo "== BYOL's blur at 64 px (issue 4): the papers' pixels vs blur_reference_size=224, 15 and 30 epochs"
mkdir -p "$OUT/qblur" "$OUT/qblur30"
for f in props.h5 fh.h5 grid.h5; do cp -n "$OUT/q30/$f" "$OUT/qblur/"; cp -n "$OUT/q30/$f" "$OUT/qblur30/"; done
BG=objects/linear,objects/knn,multilabel/linear,background/knn,background/linear
$PY benchmarks/quality.py --data $Q --out "$OUT/qblur" --epochs 15 --arch resnet18 --image-size 64 --batch-size 64 \
  --methods byol,byol-blur224,byol-blur224-lr4x --probes $BG | tee "$OUT/qblur.md"
$PY benchmarks/quality.py --data $Q --out "$OUT/qblur30" --epochs 30 --arch resnet18 --image-size 64 --batch-size 64 \
  --methods byol-blur224,byol-blur224-lr4x --heldout 0.3 --probes $BG | tee "$OUT/qblur30.md"

echo "== BYOL with a narrow ResNet (issue 4): 30 and 150 epochs, resnet_tiny (widths 16-128)"
TINY=objects/linear,objects/knn,multilabel/linear,background/knn
$PY benchmarks/quality.py --data $Q --out "$OUT/qtiny" --epochs 30 --arch resnet_tiny --image-size 64 --batch-size 64 \
  --methods byol --heldout 0.3 --probes $TINY | tee "$OUT/qtiny.md"
$PY benchmarks/quality.py --data $Q --out "$OUT/qtiny150" --epochs 150 --arch resnet_tiny --image-size 64 --batch-size 64 \
  --methods byol --probe-epochs 50,100 --heldout 0.3 --probes $TINY | tee "$OUT/qtiny150.md"

echo "== the same on scenes with more and larger objects (3-8 objects, 20-75% of the shorter side)"
QB=bench-quality-big
[ -f $QB/train.json ] || $SS demo-data $QB --n 1500 --min-side 160 --max-side 224 --seed 1 --min-objects 3 \
  --max-objects 8 --min-object-size 0.2 --max-object-size 0.75 --quiet
$PY benchmarks/quality.py --data $QB --out "$OUT/qbig" --epochs 150 --arch resnet_tiny --image-size 64 --batch-size 64 \
  --methods byol --probe-epochs 30 --heldout 0.3 --probes $TINY | tee "$OUT/qbig.md"
$PY benchmarks/quality.py --data $QB --out "$OUT/qbig18" --epochs 30 --arch resnet18 --image-size 64 --batch-size 64 \
  --methods byol --heldout 0.3 --probes $TINY | tee "$OUT/qbig18.md"

echo "== four seeds on the larger-object scenes; EMA momentum and contrastive rows; object-centric scenes (issue 4)"
Q3=objects/linear,objects/knn,multilabel/linear
TQ="--arch resnet_tiny --image-size 64 --batch-size 64"
for s in 0 1 2 3; do
  $PY benchmarks/quality.py --data $QB --out "$OUT/qbig-s$s" --epochs 30 $TQ --methods byol,simclr --heldout 0.3 \
    --seed $s --probes $Q3 | tee "$OUT/qbig-s$s.md"
done
$PY benchmarks/seeds.py "$OUT"/qbig-s{0,1,2,3} | tee "$OUT/qbig-seeds.md"
SIMAUG="view_aug=interpolation=bicubic brightness=0.8 contrast=0.8 saturation=0.8 hue=0.2 blur_p=0.5 solarize_p=0"
for s in 0 1 2 3; do
  $PY benchmarks/quality.py --data $QB --out "$OUT/qbig-simaug-s$s" --epochs 30 $TQ --methods byol --heldout 0.3 \
    --seed $s --probes $Q3 --set "$SIMAUG" | tee "$OUT/qbig-simaug-s$s.md"
done
$PY benchmarks/seeds.py "$OUT"/qbig-simaug-s{0,1,2,3} | tee "$OUT/qbig-simaug-seeds.md"
$PY benchmarks/quality.py --data $Q --out "$OUT/qtau96" --epochs 30 $TQ --methods byol --probes $Q3 \
  --set ema_momentum=0.96 | tee "$OUT/qtau96.md"
$PY benchmarks/quality.py --data $Q --out "$OUT/qtau90" --epochs 30 $TQ --methods byol --probes $Q3 \
  --set ema_momentum=0.9 | tee "$OUT/qtau90.md"
$PY benchmarks/quality.py --data $Q --out "$OUT/qlr1" --epochs 30 $TQ --methods byol --probes $Q3 --lr 1.0 \
  | tee "$OUT/qlr1.md"
$PY benchmarks/quality.py --data $Q --out "$OUT/qcontrast" --epochs 30 $TQ --methods simclr,mocov2 --probes $Q3 \
  | tee "$OUT/qcontrast.md"
QO=bench-quality-oc
[ -f $QO/train.json ] || $SS demo-data $QO --n 1500 --min-side 160 --max-side 224 --seed 1 --min-objects 1 \
  --max-objects 2 --min-object-size 0.5 --max-object-size 0.9 --quiet
$PY benchmarks/quality.py --data $QO --out "$OUT/qoc" --epochs 30 $TQ --methods byol,simclr,mocov2 --probes $Q3 \
  | tee "$OUT/qoc.md"
$PY benchmarks/quality.py --data $QO --out "$OUT/qoc150" --epochs 150 $TQ --methods byol --probe-epochs 30,90 \
  --heldout 0.3 --probes $Q3 | tee "$OUT/qoc150.md"
$PY benchmarks/quality.py --data $QO --out "$OUT/qoc150-tau96" --epochs 150 $TQ --methods byol --probe-epochs 30,90 \
  --heldout 0.3 --probes $Q3 --set ema_momentum=0.96 | tee "$OUT/qoc150-tau96.md"
# four seeds of the 150-epoch BYOL run (seed 0 is qoc150), then every linear probe again with the weight decay
# cross-validated on the probe's training split (--probe-wd auto; the held-out-cutout probe's folds hold out cutouts)
for s in 1 2 3; do
  $PY benchmarks/quality.py --data $QO --out "$OUT/qoc150-s$s" --epochs 150 $TQ --methods byol --heldout 0.3 \
    --seed $s --probes $Q3 | tee "$OUT/qoc150-s$s.md"
done
$PY benchmarks/seeds.py "$OUT"/qoc150 "$OUT"/qoc150-s{1,2,3} | tee "$OUT/qoc150-seeds.md"
$PY benchmarks/quality.py --data $QO --out "$OUT/qoc150-tau96-s1" --epochs 150 $TQ --methods byol --heldout 0.3 \
  --seed 1 --probes $Q3 --set ema_momentum=0.96 | tee "$OUT/qoc150-tau96-s1.md"
# diagnostic: the held-out-cutout linear probe at fixed weight decays (scored on the validation objects)
for s in 0 1 2 3; do
  d="$OUT/qoc150-s$s"; [ $s = 0 ] && d="$OUT/qoc150"
  for w in random "$d/byol/last.pth"; do
    for wd in 1e-4 1e-3 3e-3 1e-2 3e-2 1e-1; do
      echo "seed $s $w wd $wd: $($SS linprobe $w --arch resnet_tiny --solver lbfgs --wd $wd --task objects \
        --image-root $QO/images --train "$d/probe_train_seen.json" --val "$d/probe_val_unseen.json" \
        --image-size 64 --seed $s --json -q | $PY -c 'import json,sys; print(json.load(sys.stdin)["best"]["top1"])')"
    done
  done
done | tee "$OUT/qoc150-wd-sweep.txt"
for s in 0 1 2 3; do
  d="$OUT/qoc150-s$s"; [ $s = 0 ] && d="$OUT/qoc150"
  $PY benchmarks/quality.py --data $QO --out "$d" --epochs 150 $TQ --methods byol --heldout 0.3 --seed $s \
    --probes $Q3 --probe-wd auto | tee "$d-wdauto.md"
  $PY benchmarks/quality.py --data $QB --out "$OUT/qbig-s$s" --epochs 30 $TQ --methods byol,simclr --heldout 0.3 \
    --seed $s --probes $Q3 --probe-wd auto | tee "$OUT/qbig-s$s-wdauto.md"
done
$PY benchmarks/seeds.py "$OUT"/qoc150/quality-wdauto.json "$OUT"/qoc150-s{1,2,3}/quality-wdauto.json \
  | tee "$OUT/qoc150-wdauto-seeds.md"
$PY benchmarks/seeds.py "$OUT"/qbig-s{0,1,2,3}/quality-wdauto.json | tee "$OUT/qbig-wdauto-seeds.md"
for s in 0 1 2 3; do  # 2,700 steps on the multi-object scenes, fixed and cross-validated probes
  for wd in 1e-4 auto; do
    $PY benchmarks/quality.py --data $QB --out "$OUT/qbig150-s$s" --epochs 150 $TQ --methods byol --heldout 0.3 \
      --seed $s --probes $Q3 --probe-wd $wd | tee "$OUT/qbig150-s$s-wd$wd.md"
  done
done
$PY benchmarks/seeds.py "$OUT"/qbig150-s{0,1,2,3}/quality-wdauto.json | tee "$OUT/qbig150-wdauto-seeds.md"

echo "== detection transfer (issue 8): Mask R-CNN R18-FPN(64), 200 iterations, from each 30-epoch checkpoint"
python3 - "$Q" <<'PY'
import json, sys
d = json.load(open(f"{sys.argv[1]}/val.json"))
keep = set(sorted(i["id"] for i in d["images"])[:150])
d["images"] = [i for i in d["images"] if i["id"] in keep]
d["annotations"] = [a for a in d["annotations"] if a["image_id"] in keep]
json.dump(d, open(f"{sys.argv[1]}/val150.json", "w"))
PY
$PY benchmarks/detect.py --data $Q --val $Q/val150.json --out "$OUT/qdet" --arch resnet18 --size 128 --iters 200 \
  --batch-size 4 --fpn-channels 64 --precise-bn-iters 20 --workers 1 \
  $(for m in byol detcon-b orl univip; do echo --weights $m="$OUT/q30/$m/last.pth"; done) | tee "$OUT/qdet.md"

echo "== MCL step cost vs BYOL (issue 18): 224 px, ResNet-18, batch 32; where the time goes; FLOPs"
$PY benchmarks/step_cost.py --images $T --arch resnet18 --image-size 224 --batch-size 32 --steps 3 --warmup 1 \
  --repeats 2 --mcl --json "$OUT/mcl_step_cost.json" | tee "$OUT/mcl_step_cost.md"
$PY benchmarks/mcl_cost.py --images $T --arch resnet18 --image-size 224 --batch-size 32 --steps 3 --warmup 1 \
  --repeats 2 --json "$OUT/mcl_cost.json" | tee "$OUT/mcl_cost.md"
$PY benchmarks/mcl_cost.py --flops --arch resnet18 --image-size 224 --batch-size 32 | tee "$OUT/mcl_flops_r18.md"
$PY benchmarks/mcl_cost.py --flops --arch resnet50 --image-size 224 --batch-size 128 | tee "$OUT/mcl_flops_r50.md"

echo "== MCL ablations at CPU scale (issue 18): levels 3 vs 4 and loss modes a-d, four seeds, paired to mcl"
for s in 0 1 2 3; do
  $PY benchmarks/quality.py --data $Q --out "$OUT/qmcl-s$s" --seed $s --epochs ${MCL_EPOCHS:-15} --arch resnet18 \
    --image-size 64 --batch-size 64 --methods byol,mcl,mcl-l3,mcl-mode-b,mcl-mode-c,mcl-mode-d \
    --probes objects/linear,objects/knn,multilabel/linear --heldout 0.3 | tee "$OUT/qmcl-s$s.md"
done
$PY benchmarks/seeds.py "$OUT"/qmcl-s{0,1,2,3} --base mcl | tee "$OUT/qmcl-seeds.md"

echo "== the object-level claim on Fashion-MNIST scenes (issue 20): 3 seeds, every row 936 steps"
FM=bench-fmnist
[ -f $FM/scenes.json ] || $SS demo-data $FM --preset fmnist-scenes --quiet
for s in 0 1 2; do
  $PY benchmarks/mechanism.py --data $FM --out "$OUT/mech-s$s" --seed $s | tee "$OUT/mech-s$s.md"
done
$PY benchmarks/mechanism.py --summary "$OUT"/mech-s{0,1,2} | tee "$OUT/mech-seeds.md"
