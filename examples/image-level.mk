# The image-level examples (byol, mocov2, simclr, simsiam, densecl): one pretraining run on the demo
# scenes, its backbone exported as torchvision weights, a kNN probe of it on the demo objects, and
# the paper-scale command lines (COCO_CMD, IMAGENET_CMD, set by the method's Makefile).
include $(dir $(lastword $(MAKEFILE_LIST)))common.mk

.PHONY: all probe coco imagenet
all: $(OUT)/$(METHOD)_backbone.pth

$(OUT)/run/last.pth: $(IMAGES)
	$(SSLKIT) pretrain $(IMAGES) --method $(METHOD) --out $(OUT)/run $(COMMON)

# the default encoder as torchvision weights, for linprobe / detect
$(OUT)/$(METHOD)_backbone.pth: $(OUT)/run/last.pth
	$(SSLKIT) export $< -o $@ -q --overwrite

probe: $(OUT)/$(METHOD)_backbone.pth
	$(SSLKIT) linprobe $< --train $(IMAGES) --val $(DEMO)/val.json --task objects --protocol knn \
	    --image-size $(IMG) -o $(OUT)/knn.json

coco:
	$(COCO_CMD)

imagenet:
	$(IMAGENET_CMD)
