"""Transfer to dense tasks (Sections 5.2 and 5.3): COCO detection and instance segmentation
(RetinaNet, Mask R-CNN) and ADE20K semantic segmentation (UPerNet) on the HIRI-ViT backbone."""
