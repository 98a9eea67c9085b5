# sslkit: two commands on a fresh machine.
#   make demo   build the offline demo scenes and run the longest working chain on them
#   make test   run the test suite
# Both create .venv and install sslkit (torch from this machine's disk) when needed.

PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip
SSLKIT  := $(VENV)/bin/sslkit
STAMP   := $(VENV)/.sslkit-installed
TORCH   ?= torch==2.14.1 torchvision==0.29.1

DEMO    ?= demo
RUNS    ?= runs/demo
PYTEST_ARGS ?=

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e '.[dev]'
	$(PY) -c "from sslkit._env import opencv_conflict as c; import sys; m=c(); print('opencv:', m or 'ok'); sys.exit(1 if m else 0)" \
	  || ($(PIP) uninstall -q -y opencv-python opencv-python-headless opencv-contrib-python opencv-contrib-python-headless \
	      && $(PIP) install -q opencv-contrib-python-headless)
	$(PY) -c "import cv2; cv2.ximgproc.segmentation; print('cv2', cv2.__version__, 'with ximgproc')"
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check sslkit tests benchmarks

# The longest chain that works today, on the demo scenes (about 200 real-photo composites):
# regions -> pretraining (BYOL and DetCon-B, small CPU settings) -> export -> linear probe.
DEMO_TRAIN := --arch resnet18 --image-size 96 --batch-size 32 --epochs 3 --warmup-epochs 0 --log-every 1 -q
demo: setup
	$(SSLKIT) demo-data $(DEMO)
	@mkdir -p $(RUNS)
	$(SSLKIT) propose $(DEMO)/train.json --algo selective-search -o $(RUNS)/props_ss.h5 -q --overwrite
	$(SSLKIT) propose $(DEMO)/train.json --algo felzenszwalb -o $(RUNS)/masks_fh.h5 -q --overwrite
	$(SSLKIT) info $(RUNS)/props_ss.h5
	$(SSLKIT) show $(RUNS)/props_ss.h5 --grid 9 -o $(RUNS)/props_ss.png
	$(SSLKIT) show $(RUNS)/masks_fh.h5 --grid 9 -o $(RUNS)/masks_fh.png
	$(SSLKIT) show $(RUNS)/masks_fh.h5 --views detcon-b -o $(RUNS)/detcon_views.png
	$(SSLKIT) pretrain $(DEMO)/train.json -m byol -o $(RUNS)/byol $(DEMO_TRAIN)
	$(SSLKIT) pretrain $(DEMO)/train.json -m detcon-b --masks $(RUNS)/masks_fh.h5 -o $(RUNS)/detcon_b $(DEMO_TRAIN)
	$(SSLKIT) plot $(RUNS)/byol $(RUNS)/detcon_b -o $(RUNS)/curves.png
	$(SSLKIT) export $(RUNS)/detcon_b/last.pth -o $(RUNS)/detcon_b.pth --overwrite
	$(SSLKIT) export $(RUNS)/detcon_b.pth -o $(RUNS)/detcon_b.pkl --overwrite
	$(SSLKIT) linprobe $(RUNS)/detcon_b.pth --train $(DEMO)/train.json --val $(DEMO)/val.json --task objects \
	  --protocol knn --image-size 96 -o $(RUNS)/linprobe_detcon_b.json
	$(SSLKIT) linprobe random --arch resnet18 --train $(DEMO)/train.json --val $(DEMO)/val.json --task objects \
	  --protocol knn --image-size 96 -o $(RUNS)/linprobe_random.json
	@echo "demo done: pictures in $(RUNS)/*.png, metrics in $(RUNS)/*.json"

clean:
	rm -rf $(RUNS) $(DEMO)
