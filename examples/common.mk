# What every examples/<method>/Makefile shares: the tiny CPU settings, the offline demo scenes and
# `make clean`. A method's Makefile sets METHOD (and HEADS, its per-method settings, …) and then
#     include $(dir $(lastword $(MAKEFILE_LIST)))../common.mk
# Every variable can be set on the command line, e.g. `make N=200 ARCH=resnet18 IMG=96 EPOCHS=30`.

.DEFAULT_GOAL := all
SSLKIT   ?= sslkit
OUT      ?= runs/$(METHOD)
# demo scenes (80% train); DEMO_ARGS e.g. --sources pip (skip the Debian photo packages)
N        ?= 24
DEMO_ARGS ?=
ARCH     ?= resnet_tiny
IMG      ?= 64
EPOCHS   ?= 2
BATCH    ?= 8
HEADS    ?=
COMMON   ?= --arch $(ARCH) --image-size $(IMG) --batch-size $(BATCH) --epochs $(EPOCHS) --warmup-epochs 0 \
            --workers 0 --no-tensorboard -q $(HEADS)
# paper scale
COCO     ?= coco
IMAGENET ?= imagenet
GPUS     ?= 8
COCO_IMAGES := $(COCO)/annotations/instances_train2017.json --image-root $(COCO)/train2017

DEMO     := $(OUT)/demo
IMAGES   := $(DEMO)/train.json

$(IMAGES):
	$(SSLKIT) demo-data $(DEMO) --n $(N) -q $(DEMO_ARGS)

.PHONY: clean
clean:
	rm -rf $(OUT)
